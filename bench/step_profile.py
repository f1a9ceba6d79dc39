"""Where a BERT-base MLM training step's time goes on the GPU, without Ray or the HF Trainer (issue 7).

The throughput bench compares whole runners; this asks what the model step itself can reach on the device,
and what limits it: the same model hfray trains (BERT-base from a config, 30,522 vocabulary, sequence 128,
MLM head on masked positions only, bf16 autocast, fused AdamW), timed with CUDA events over ``--steps``
steps after a warm-up, for each case (batch size x eager / ``torch.compile``). MFU uses
``hfray.train.callbacks.throughput.flops_per_token`` (the formula the runs' manifests use). One eager case is also
profiled with ``torch.profiler``: GPU busy time over wall time (below 1 = the GPU waits for the Python side)
and the share of GPU time per kernel class (matmul, attention, elementwise/norm, optimizer, other).

    python bench/step_profile.py --out $OUT/step_profile.json                 # GPU machine, ~3 min
    python bench/step_profile.py --smoke --out /tmp/step_profile.json         # CPU, tiny model, seconds

Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hfray.model.language_model import mlm_loss_on_masked_only
from hfray.train.callbacks.throughput import flops_per_token, peak_tflops

sys.path.append(str(Path(__file__).resolve().parent))
from bench_common import adamw_step  # noqa: E402  (a sibling module, not a package)

BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
VOCAB, SEQ, MASK_P = 30_522, 128, 0.15


def build(arch: dict[str, int], device: str, masked_only: bool, dropout: float = 0.1) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForMaskedLM

    drop = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    config = AutoConfig.for_model("bert", vocab_size=VOCAB, max_position_embeddings=512, **arch, **drop)
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").to(device).train()
    if masked_only:
        assert mlm_loss_on_masked_only(model)
    return model


def batch(rows: int, device: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tokens, exactly 15% of positions labelled (a fixed count: static shapes for the compiled head)."""
    ids = torch.randint(5, VOCAB, (rows, SEQ), generator=gen)
    labels = torch.full_like(ids, -100)
    flat = torch.randperm(rows * SEQ, generator=gen)[: int(rows * SEQ * MASK_P)]
    labels.view(-1)[flat] = ids.view(-1)[flat]
    mask = torch.ones_like(ids)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


def make_step(model: torch.nn.Module, compiled: bool, device: str, mode: str | None = None) -> Any:
    """``mode``: a ``torch.compile`` mode. A model already in bf16 runs without autocast (no per-step casts)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    forward = torch.compile(model, mode=mode) if compiled else model
    autocast = device == "cuda" and next(model.parameters()).dtype == torch.float32
    return adamw_step(forward, opt, device, autocast)


def time_case(
    arch: dict[str, int], rows: int, compiled: bool, steps: int, device: str, **variant: Any
) -> dict[str, Any]:
    """``variant`` (the ``--ceiling`` cases): ``dropout`` (default 0.1), ``weights: "bf16"`` (the model cast to
    bf16, AdamW on bf16 weights: an upper bound, with no fp32 master copy), ``mode`` (a compile mode)."""
    torch.manual_seed(0)
    model = build(arch, device, masked_only=True, dropout=variant.get("dropout", 0.1))
    if variant.get("weights") == "bf16":
        model = model.to(torch.bfloat16)
    step = make_step(model, compiled, device, variant.get("mode"))
    gen = torch.Generator().manual_seed(0)
    batches = [batch(rows, device, gen) for _ in range(4)]
    t0 = time.perf_counter()
    for i in range(5):  # warm-up: compile, cuBLAS handles, the allocator's pools
        step(batches[i % 4])
    warm_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 4])
    sync()
    step_s = (time.perf_counter() - t0) / steps
    tokens = rows * SEQ / step_s
    fpt = flops_per_token(model, SEQ, head_fraction=MASK_P)
    peak = peak_tflops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    return {
        "runner": "raw-loop",
        "batch": rows,
        "compiled": compiled,
        "variant": variant,
        "step_ms": round(step_s * 1000, 2),
        "samples_per_s": round(rows / step_s, 1),
        "tokens_per_s": round(tokens),
        "mfu": round(tokens * fpt / (peak * 1e12), 4) if peak else None,
        "warmup_s": round(warm_s, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "last_loss": round(float(loss.detach()), 3),
    }


class ExactMaskDataset(torch.utils.data.Dataset):
    """Random blocks, each with exactly round(15% x SEQ) labelled positions (BERT's original recipe)."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, VOCAB, (rows, SEQ), generator=gen)
        self.labels = torch.full_like(self.ids, -100)
        per_row = round(SEQ * MASK_P)
        for r in range(rows):
            pos = torch.randperm(SEQ, generator=gen)[:per_row]
            self.labels[r, pos] = self.ids[r, pos]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.labels[i]}


def trainer_case(arch: dict[str, int], rows: int, steps: int, device: str, **overrides: Any) -> dict[str, Any]:
    """The same step under the HF Trainer with hfray's defaults (bf16, fused AdamW, 2 loader workers)."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    from hfray.train.callbacks.throughput import ThroughputCallback

    torch.manual_seed(0)
    model = build(arch, device, masked_only=True)
    model.accepts_loss_kwargs = False  # as hfray does (see docs/guide.md, "Known behaviour")
    warm = 10 if overrides.get("torch_compile") else 5
    callback = ThroughputCallback(SEQ, flops_per_token(model, SEQ, head_fraction=MASK_P), warmup_steps=warm)
    settings: dict[str, Any] = {
        "per_device_train_batch_size": rows,
        "max_steps": steps + warm,
        "learning_rate": 1e-4,
        "bf16": device == "cuda",
        "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "dataloader_num_workers": 2,
        "logging_steps": 50,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "use_cpu": device == "cpu",
    } | overrides
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, **settings)
        trainer = Trainer(model=model, args=args, train_dataset=ExactMaskDataset(rows * 8), callbacks=[callback])
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    summary = callback.summary
    return {
        "runner": "hf-trainer",
        "batch": rows,
        "overrides": overrides,
        "step_ms": round(summary["steady_step_seconds"] * 1000, 2),
        "samples_per_s": round(summary["samples_per_second"], 1),
        "tokens_per_s": round(summary["tokens_per_second"]),
        "mfu": round(summary["mfu"], 4) if summary.get("mfu") else None,
        "train_wall_s": round(wall, 1),
    }


KERNEL_CLASSES = (
    ("attention", ("flash", "fmha", "attention", "efficient_attention", "sdpa")),
    ("matmul", ("gemm", "sm90", "cutlass", "cublas", "xmma", "nvjet", "matmul")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("elementwise/norm/dropout", ("elementwise", "layer_norm", "norm", "dropout", "gelu", "softmax", "reduce")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")


def profile_case(arch: dict[str, int], rows: int, device: str, steps: int = 5) -> dict[str, Any]:
    """GPU busy / wall over ``steps`` eager steps, GPU time by kernel class, and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build(arch, device, masked_only=True)
    step = make_step(model, False, device)
    inputs = batch(rows, device, torch.Generator().manual_seed(0))
    for _ in range(3):
        step(inputs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(inputs)
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels)
    by_class: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in kernels:
        by_class[kernel_class(e.name)] = by_class.get(kernel_class(e.name), 0.0) + e.device_time
        by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:12]
    return {
        "batch": rows,
        "steps": steps,
        "gpu_busy_over_wall": round(busy / wall_us, 3),
        "kernels_per_step": len(kernels) // steps,
        "gpu_ms_per_step": round(busy / steps / 1000, 2),
        "wall_ms_per_step": round(wall_us / steps / 1000, 2),
        "gpu_time_share": {k: round(v / busy, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_step": [[name[:90], round(t / steps / 1000, 3)] for name, t in top],
    }


def ceiling_cases(sizes: list[int], smoke: bool) -> list[tuple[int, dict[str, Any]]]:
    """What the HF BERT model reaches without the costs 45% MFU cannot carry: dropout, autocast's casts."""
    nodrop_bf16 = {"dropout": 0.0, "weights": "bf16"}
    per_size = [{}, {"dropout": 0.0}, {"weights": "bf16"}, nodrop_bf16]
    cases = [(rows, v) for rows in sizes for v in per_size]
    if not smoke:
        cases.append((sizes[-1] * 2, nodrop_bf16))
        cases.append((sizes[-1], nodrop_bf16 | {"mode": "max-autotune-no-cudagraphs"}))
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, two cases")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--trainer", action="store_true", help="also the HF Trainer cases (attribution of its cost)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--ceiling", action="store_true", help="only compiled variants: no dropout, bf16 weights, modes")
    p.add_argument("--out", default="bench/results/step_profile.json")
    args = p.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    arch = TINY if args.smoke else BASE
    sizes = [4] if args.smoke else [int(b) for b in args.batches.split(",")]
    report: dict[str, Any] = {
        "command": "python bench/step_profile.py " + " ".join(argv or __import__("sys").argv[1:]),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "model": {"arch": arch, "vocab": VOCAB, "seq": SEQ, "mask_p": MASK_P, "masked_only_head": True},
        "cases": [],
    }
    if device == "cuda":
        report["machine"] |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.ceiling:
        for rows, variant in ceiling_cases(sizes, args.smoke):
            case = time_case(arch, rows, not args.smoke, 3 if args.smoke else args.steps, device, **variant)
            print(json.dumps(case), flush=True)
            report["cases"].append(case)
            out.write_text(json.dumps(report, indent=2))
        return 0
    for rows in sizes:
        for compiled in [False] if args.no_compile else [False, True]:
            case = time_case(arch, rows, compiled, 3 if args.smoke else args.steps, device)
            print(json.dumps(case), flush=True)
            report["cases"].append(case)
            out.write_text(json.dumps(report, indent=2))
    if args.trainer:
        variants: list[dict[str, Any]] = [{}, {"max_grad_norm": 0.0}, {"dataloader_num_workers": 0}]
        variants += [] if args.no_compile else [{"torch_compile": True}]
        for rows in sizes:
            for overrides in variants:
                case = trainer_case(arch, rows, 3 if args.smoke else args.steps, device, **overrides)
                print(json.dumps(case), flush=True)
                report["cases"].append(case)
                out.write_text(json.dumps(report, indent=2))
    if device == "cuda" and not args.no_profile:
        report["profile"] = [profile_case(arch, rows, device) for rows in sizes]
        print(json.dumps(report["profile"], indent=1), flush=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
