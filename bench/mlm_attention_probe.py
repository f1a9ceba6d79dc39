"""Which attention kernel BERT-base MLM should train with (issue 18): the step's milliseconds, eager and compiled, with
and without an all-ones ``attention_mask``, under each of PyTorch's sdpa backends. No Trainer, no Ray, no data.

Why: on one H100 (``bench/results/sft_cudagraphs_h100_dec06.md``) the bare compiled step (all-ones mask passed)
ran cuDNN's fused attention while hfray's compiled encoder (packed blocks: no mask) ran it unfused (bmm, softmax,
dropout, an fp32 GEMM): 7.6 ms more device time a step; and hfray's eager step spent 1.7 ms of host a cuDNN
attention call. This names the fastest (mask, backend) pair, compiled and eager, and the kernels each ran.

    # device call, carry [".devbundle", ".devmin"], timeout 400:
    source .devbundle/activate.sh; export PYTHONPATH=$PWD/lib:$PYTHONPATH
    python3 bench/mlm_attention_probe.py --out $OUT/mlm_attention.json          # ~4 min on one H100
    python3 bench/mlm_attention_probe.py --smoke --out /tmp/probe.json         # CPU: a tiny BERT, a few steps

Each case: BERT-base (the bench's ``mlm`` architecture) from its config, the masked-only head hfray trains with
(``hfray.model.language_model.mlm_loss_on_masked_only``), bf16 autocast, fused AdamW, batch 256 x 128, 15% of each
block masked (a fixed count, as ``lm.masking: exact``); ``--steps`` steps, the last ``steps - warmup`` timed
between CUDA events; then one profiled step lists the attention kernels. A backend that cannot run the case is
reported as its error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))
import throughput_bare  # noqa: E402  (sibling modules, not a package)
from throughput_bench import BASE, TINY  # noqa: E402

BACKENDS = ("default", "cudnn", "flash", "efficient", "math")
ATTENTION_WORDS = ("attention", "flash", "fmha", "sdpa", "softmax", "bmm", "xmma_gemm_f32")


def _backend(name: str) -> Any:
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    named = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return nullcontext() if name == "default" else sdpa_kernel([named[name]])


def _attention_kernels(step: Any, batch: dict[str, Any]) -> list[tuple[str, int]]:
    """The attention-looking kernels (and host ops) of one profiled step, with their call counts."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if _device() == "cuda" else [])
    with profile(activities=activities) as prof:
        step(batch)
    names = [(e.key, e.count) for e in prof.key_averages()]
    return [(k[:90], n) for k, n in names if any(w in k.lower() for w in ATTENTION_WORDS)][:12]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_case(spec: dict[str, Any], compiled: bool, mask: bool, backend: str) -> dict[str, Any]:
    import torch
    import torch._dynamo as dynamo
    from bench_common import adamw_step

    device = _device()
    torch.manual_seed(0)
    dynamo.reset()
    model, _ = throughput_bare.build_model(spec)
    model.to(device).train()
    batches = throughput_bare.make_batches(spec, model.config.vocab_size, device)
    if not mask:
        batches = [{k: v for k, v in b.items() if k != "attention_mask"} for b in batches]
    if compiled:
        model.base_model.compile()  # the encoder, as hfray's masked-LM recipe compiles it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    step = adamw_step(model, opt, device, autocast=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with _backend(backend):
        started = time.time()
        for i in range(spec["warmup"]):
            step(batches[i % len(batches)])
        sync()
        first_s = time.time() - started
        t0 = time.perf_counter()
        for i in range(spec["steps"] - spec["warmup"]):
            loss = step(batches[i % len(batches)])
        sync()
        ms = (time.perf_counter() - t0) * 1000 / (spec["steps"] - spec["warmup"])
        kernels = _attention_kernels(step, batches[0])
    return {
        "ms_per_step": round(ms, 2),
        "samples_per_s": round(spec["batch"] * 1000 / ms, 1),
        "warmup_s": round(first_s, 1),
        "loss": round(float(loss), 4),
        "kernels": kernels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="CPU: a tiny BERT, 4 steps, two cases")
    cli = parser.parse_args()
    arch = dict((TINY if cli.smoke else BASE)["mlm"])
    arch.setdefault("vocab_size", 1000)
    spec = {
        "workload": "mlm",
        "architecture": arch,
        "batch": 8 if cli.smoke else cli.batch,
        "seq": 32 if cli.smoke else cli.seq,
        "steps": 4 if cli.smoke else cli.steps,
    }
    spec["warmup"] = min(5, spec["steps"] // 2)
    cases = [(False, m, b) for m in (False, True) for b in BACKENDS]  # eager: every pair (seconds each)
    cases += [(True, False, b) for b in BACKENDS[:4]] + [(True, True, "default")]  # compiled: ~40 s each, cold
    if cli.smoke:
        cases = [(False, False, "default"), (True, True, "default")]
    results = []
    for compiled, mask, backend in cases:
        row = {"compiled": compiled, "mask": mask, "backend": backend}
        try:
            row |= run_case(spec, compiled, mask, backend)
        except Exception as err:  # a backend that cannot run this case: say so and go on
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        results.append(row)
        print(json.dumps(row), flush=True)
        Path(cli.out).write_text(json.dumps({"spec": spec, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
