"""bf16 autocast against fp32 on this CPU, per model size: one process, 1 thread, AdamW, models built from configs
(BERT-shaped classifiers at batch 16 x 128 tokens, Llama-shaped causal LMs at 4 x 256). Prints the best step time of
each precision over two alternating rounds. Results: ``bench/results/default_job_e2e_cpu_dec05_bf16.md``.

    flock /tmp/hfray-bench.lock python bench/cpu_bf16_sizes.py

Not a test: pytest does not collect it.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def best_steps(model: Any, inputs: dict[str, torch.Tensor], steps: int = 4) -> tuple[float, float]:
    """The best fp32 and bf16-autocast step seconds, rounds alternating so that a drift of the host hits both."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    best = {False: float("inf"), True: float("inf")}
    for bf16 in (False, True, False, True):
        for step in range(steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**inputs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first step of a round warms its kernels
                best[bf16] = min(best[bf16], time.perf_counter() - start)
    return best[False], best[True]


def main() -> None:
    torch.set_num_threads(1)
    for hidden, layers in [(32, 2), (128, 2), (384, 6), (768, 4)]:
        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(2, hidden // 64),
            intermediate_size=4 * hidden,
            num_labels=5,
        )
        ids = torch.randint(0, 30000, (16, 128))
        fp32, bf16 = best_steps(BertForSequenceClassification(config), {"input_ids": ids, "labels": ids[:, 0] % 5})
        print(f"bert hidden {hidden} x {layers}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, {fp32 / bf16:.2f}x", flush=True)
    for hidden, layers in [(64, 2), (576, 4)]:
        config = LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(2, hidden // 64),
            num_key_value_heads=max(1, hidden // 192),
            intermediate_size=int(2.7 * hidden),
            vocab_size=49152,
        )
        ids = torch.randint(0, 49152, (4, 256))
        fp32, bf16 = best_steps(LlamaForCausalLM(config), {"input_ids": ids, "labels": ids})
        print(f"llama hidden {hidden} x {layers}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, {fp32 / bf16:.2f}x", flush=True)


if __name__ == "__main__":
    main()
