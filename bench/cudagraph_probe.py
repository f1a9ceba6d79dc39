"""Can CUDA graphs take the host's launch work off hfray's compiled LoRA SFT step? A probe on one GPU, no Trainer.

Why: on an H100 hfray's compiled packed LoRA SFT step of the SmolLM2-135M shape (``HFRAY_TORCH_PROFILE``) keeps the
device busy 69 ms of its 155 ms: the host launching ~4,200 kernels a step through 30 compiled layer regions is the
limit (the bare whole-model compiled step: 76 of 93 ms). ``mode="reduce-overhead"`` replays each region's kernels as
one CUDA graph. This runs the same model, LoRA adapter, varlen attention and fixed flat row (16 x 1,024 tokens,
documents of random lengths, the document count padded to a multiple of 64 with empty documents: static shapes) with
accelerate's regional compile in Inductor's default mode and in ``reduce-overhead``, and prints ms per step and the
losses of both (same seed, same batches).

    python bench/cudagraph_probe.py [--steps 40] [--modes default,reduce-overhead] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))
from bench_common import SMOLLM2_135M_SHAPE  # noqa: E402

ROWS, LENGTH, VOCAB, BUCKET = 16, 1024, 49152, 64


def flat_batch(seed: int, device: str) -> dict[str, Any]:
    """One packed flat row: documents of 32-1024 tokens filling ROWS x LENGTH, cu_seq_lens padded to BUCKET."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    total, lengths = ROWS * LENGTH, []
    while sum(lengths) < total:
        lengths.append(min(int(torch.randint(32, LENGTH + 1, (1,), generator=gen)), total - sum(lengths)))
    cu = torch.tensor([0, *lengths]).cumsum(0)
    pad = -len(cu) % BUCKET
    cu = torch.cat([cu, cu[-1:].repeat(pad)]).to(torch.int32)  # empty documents: the count a multiple of BUCKET
    ids = torch.randint(5, VOCAB, (1, total), generator=gen)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[positions == 0] = -100
    batch = {"input_ids": ids, "position_ids": positions, "labels": labels, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
    out = {k: v.to(device) for k, v in batch.items()}
    out["max_length_q"] = out["max_length_k"] = LENGTH
    return out


def run(mode: str, steps: int, batches: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    from accelerate.utils import compile_regions
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfray.model import varlen

    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    arch = dict(SMOLLM2_135M_SHAPE)
    config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=VOCAB, **arch)
    config._attn_implementation = varlen.register()
    model = AutoModelForCausalLM.from_config(config).cuda()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"))
    model = compile_regions(model, **({} if mode == "default" else {"mode": mode}))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    losses, marks = [], {}
    for i in range(steps):
        if i == steps // 4:  # the timed steps start on an idle GPU
            torch.cuda.synchronize()
            marks["t0"] = time.perf_counter()
        if mode != "default":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batches[i % len(batches)], use_cache=False).loss  # a cache: a recompile per layer
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i < 8:
            losses.append(loss.detach().clone())
    torch.cuda.synchronize()
    timed = steps - steps // 4
    ms = 1000 * (time.perf_counter() - marks["t0"]) / timed
    from torch._dynamo.utils import counters

    return {
        "mode": mode,
        "ms_per_step": round(ms, 2),
        "tokens_per_second": round(ROWS * LENGTH / ms * 1000),
        "first_losses": [round(float(x), 5) for x in losses],
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def empty_documents_keep_the_loss(device: str) -> float:
    """Eager: the loss with the padded cu_seq_lens minus the loss without the empty documents."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfray.model import varlen

    torch.manual_seed(0)
    arch = dict(SMOLLM2_135M_SHAPE, num_hidden_layers=2)
    config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=VOCAB, **arch)
    config._attn_implementation = varlen.register()
    model = AutoModelForCausalLM.from_config(config).to(device)
    batch = flat_batch(99, device)
    cu = batch["cu_seq_lens_q"]
    trimmed = dict(batch, cu_seq_lens_q=torch.unique_consecutive(cu), cu_seq_lens_k=torch.unique_consecutive(cu))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return float(model(**batch, use_cache=False).loss - model(**trimmed, use_cache=False).loss)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--modes", default="default,reduce-overhead")
    parser.add_argument("--out", default=None)
    cli = parser.parse_args()
    torch._logging.set_logs(perf_hints=True)  # Inductor says why it skips CUDA graphs for a region
    print("empty documents change the loss by", empty_documents_keep_the_loss("cuda"), flush=True)
    batches = [flat_batch(seed, "cuda") for seed in range(4)]
    print("documents per batch (padded):", [int(b["cu_seq_lens_q"].numel() - 1) for b in batches], flush=True)
    results = []
    for mode in cli.modes.split(","):
        started = time.time()
        try:
            row = run(mode, cli.steps, batches)
        except Exception as exc:  # a probe: report and go on to the next mode
            row = {"mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:2000]}"}
        row["wall_s"] = round(time.time() - started, 1)
        print(json.dumps(row), flush=True)
        results.append(row)
        torch.cuda.empty_cache()
    if cli.out:
        Path(cli.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
