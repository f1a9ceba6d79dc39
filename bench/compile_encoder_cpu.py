"""Cold compile of a masked LM's encoder on CPU: whole (hfray's masked-LM default) against each layer compiled
(``training.compile_regions: true``), through the worker's own ``compile_encoder``.

Each case in a fresh process with an Inductor cache of its own (cold; ``bench_common.in_fresh_process``), one
thread: a ModernBERT of ``--layers`` layers (hidden 128, global attention every 3rd layer as ModernBERT-base, sliding
window 64) built from a config, the MLM head on every 7th position, batch 8 x 128, AdamW, 6 steps. Prints per case:
each step's seconds (the first: the compile), the losses, Dynamo's graph count and graph breaks.

    python bench/compile_encoder_cpu.py              # ~2 min on 2 cores; 22 layers as ModernBERT-base

2 CPUs (this repo's CI machine kind), 2026-12-06, 22 layers, two runs: first step 50.3 / 56.1 s whole (1 graph)
against 18.9 / 33.6 s by layer (3 graphs: the first layer, which has no attention norm, the global and the local
layers); steady steps 0.30-0.32 s whole against 0.32-0.43 s by layer (a tiny model: the per-layer wrappers show on
CPU); the same losses as eager's (``bench/results/gpu_dec06_s8_h100.md``, last section).
"""

from __future__ import annotations

import argparse
import json
import time

from bench_common import in_fresh_process  # a sibling module: the script's folder is on sys.path


def case(mode: str, layers: int) -> dict[str, object]:
    import torch
    from torch._dynamo.utils import counters
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from hfray.train.recipes.language_model.worker import compile_encoder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2}
    config = ModernBertConfig(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=2,
        global_attn_every_n_layers=3, local_attention=64, max_position_embeddings=256, **ids,
    )  # fmt: skip
    model = ModernBertForMaskedLM(config)
    if mode != "eager":
        compile_encoder(model.base_model, regions=mode == "layers", graphs=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    times, losses = [], []
    for _ in range(6):
        batch = torch.randint(5, 1000, (8, 128), generator=g)
        labels = torch.full_like(batch, -100)
        labels[:, ::7] = batch[:, ::7]
        start = time.perf_counter()
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(round(time.perf_counter() - start, 3))
        losses.append(round(loss.item(), 4))
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    return {"mode": mode, "layers": layers, "step_s": times, "losses": losses, "graphs": graphs, "breaks": breaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--case", choices=["eager", "whole", "layers"], help="one case, in this process")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.layers)), flush=True)
        return
    for mode in ("eager", "whole", "layers"):
        print(in_fresh_process(__file__, "--case", mode, "--layers", str(args.layers)), flush=True)


if __name__ == "__main__":
    main()
