"""Packed rows against one flattened row (TRL's padding-free packing) under transformers' attention kernels: ms per
training step (forward + backward) of a small Llama built from a config, same tokens, same documents.

Why: hfray's packed LoRA SFT step ran at 2.4-2.8% MFU on an H100 (issue 18). TRL's BFD packing flattens each batch
into ONE row with position ids restarting at each document; transformers detects the documents from the position ids
and, under sdpa or eager, builds a dense block-diagonal mask over the whole row, so attention grows with the square of
the batch's tokens, not of each row's. Rows and the flattened row are the same computation (each document attends
to itself only, as TRL's trainers run it: no attention mask, ``use_cache=False``; the first loss printed agrees);
only the layout differs.

    python bench/packed_attention_cpu.py 8 512 128 sdpa,eager    # rows, tokens per row, tokens per document, kernels
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def step(model: Any, ids: torch.Tensor, positions: torch.Tensor) -> float:
    # use_cache=False as TRL's trainers pass it: with a cache transformers skips the search for packed documents
    out = model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False)
    out.loss.backward()
    return out.loss.item()


def main() -> None:
    rows, seq, doc = (int(a) for a in sys.argv[1:4])
    kernels = sys.argv[4].split(",") if len(sys.argv) > 4 else ["sdpa", "eager"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq * rows,
    )
    ids = torch.randint(0, 1000, (rows, seq))
    positions = (torch.arange(seq) % doc).repeat(rows, 1)
    layouts = {"rows": (ids, positions), "flat": (ids.reshape(1, -1), positions.reshape(1, -1))}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {rows} x {seq} tokens, documents of {doc}")
    for kernel in kernels:
        model = LlamaForCausalLM(config).train()
        model.config._attn_implementation = kernel
        for name, (i, p) in layouts.items():
            first = [step(model, i, p) for _ in range(2)][0]  # warm-up; the same weights' loss for each layout
            start, n = time.perf_counter(), 3
            for _ in range(n):
                step(model, i, p)
            ms = (time.perf_counter() - start) / n * 1000
            print(f"{kernel:8s} {name:5s} {tuple(i.shape)!s:12s} {ms:8.1f} ms/step  first loss {first:.5f}", flush=True)


if __name__ == "__main__":
    main()
