"""Training throughput as hfray measures it: steady-state samples/s and tokens/s, MFU, peak memory, overhead.

One callback serves hfray runs (its summary goes into the artifact manifest and ``hfray_throughput.json``)
and the benchmark's plain ``Trainer`` / ``torchrun`` baselines (``bench/throughput_bench.py``), so every
number in a comparison is measured the same way.

* Steady state: wall time between consecutive ``on_step_end`` events, leaving out the first
  ``warmup_steps`` steps (CUDA/cuDNN autotuning, ``torch.compile``) and every interval in which HF
  evaluated, saved or logged to Ray: what remains is time spent training, data loading included.
* MFU (model FLOPs utilisation) = FLOPs the model needs per token x tokens/s / the GPUs' dense bf16 peak.
  FLOPs per token = 6 x N_matmul + 12 x layers x hidden x sequence (the attention score and value matmuls,
  forward and backward), where N_matmul counts the weights of the linear layers; the output head's share
  is scaled by the fraction of tokens that need it (an MLM loss needs logits for masked tokens only).
  Embedding lookups, norms and softmax are left out, as in the PaLM / Megatron accounting.
* DPO (:func:`preference_counts`): a sample is a preference pair; its tokens are those of both sequences (prompt +
  chosen, prompt + rejected; no padding), as TRL's ``num_tokens`` counts them. A step is the policy's forward and
  backward on both sequences plus the reference's forward on both, so FLOPs per token = 4/3 x the count above
  (forward = a third of forward + backward), the head counted at completion positions only (TRL's fused head
  computes logits there alone), at the pairs' mean sequence length.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from transformers import TrainerCallback

from hfray import timeline

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
}


def peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its CUDA name (longest matching key wins); None when unknown."""
    if not device_name:
        return None
    matches = [key for key in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def flops_per_token(
    model: Any, seq_len: int, head_fraction: float = 1.0, skip_adapters: frozenset[str] = frozenset()
) -> float:
    """Training FLOPs per token by the formula in the module docstring; the linear layers of the PEFT adapters named
    in ``skip_adapters`` (e.g. TRL's frozen ``ref`` copy of a DPO adapter) are not counted."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_params = head.weight.numel() if head is not None else 0
    matmul = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] not in skip_adapters
    )
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    body = matmul - head_params
    return 6.0 * body + 6.0 * head_params * head_fraction + 12.0 * layers * hidden * seq_len


def preference_counts(
    model: Any,
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    max_length: int | None = None,
    skip_adapters: frozenset[str] = frozenset(),
) -> tuple[float, float]:
    """(tokens per pair, FLOPs per token) of a DPO step over pairs of these token lengths (module docstring); each
    sequence cut at ``max_length`` as TRL's collator cuts it (``keep_start``)."""
    cap = max_length or 2**62
    seqs = [min(p + c, cap) for p, c in zip(prompt, chosen, strict=True)]
    seqs += [min(p + r, cap) for p, r in zip(prompt, rejected, strict=True)]
    tokens = sum(seqs)
    completion = tokens - 2 * sum(min(p, cap) for p in prompt)
    pairs = max(1, len(prompt))
    if not tokens:
        return 0.0, 0.0
    seq = round(tokens / (2 * pairs))
    return tokens / pairs, flops_per_token(model, seq, completion / tokens, skip_adapters) * 4 / 3


def count_dpo_pairs(speed: ThroughputCallback, dataset: Any, model: Any, max_length: int, rows: int = 4096) -> None:
    """Set ``speed``'s tokens per pair and FLOPs per token from the first ``rows`` pairs of a dataset TRL's
    ``DPOTrainer`` tokenized (columns ``prompt_ids``, ``chosen_ids``, ``rejected_ids``). ``model``: the policy; a
    PEFT model's inactive adapters (the ``ref`` copy TRL adds to a model wrapped before it) are not counted."""
    data = dataset.select(range(min(rows, len(dataset)))).select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    lengths = {k: [len(x) for x in data[k]] for k in data.column_names}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inactive = frozenset(getattr(model, "peft_config", {})) - frozenset(getattr(model, "active_adapters", ()))
    speed.tokens_per_sample, speed.flops_per_token = preference_counts(
        base, lengths["prompt_ids"], lengths["chosen_ids"], lengths["rejected_ids"], max_length, inactive
    )


def peak_memory_per_rank() -> list[int]:
    """Peak allocated CUDA memory of every rank (bytes), gathered to all ranks; [] on CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    peak = torch.cuda.max_memory_allocated()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, peak)
        return [int(x) for x in gathered]
    return [int(peak)]


class ThroughputCallback(TrainerCallback):
    """Times every optimizer step on each rank; rank 0 writes the summary to ``out_file`` at the end.

    Only times by default, so the plain-Trainer baselines of ``bench/`` run as HF ships them; hfray's runs
    (``callback_for_model``) also memoize the parameter count (``memoize_parameter_count``).
    """

    def __init__(
        self,
        tokens_per_sample: float,
        flops_per_token: float | None = None,
        out_file: str | None = None,
        warmup_steps: int | None = None,
        memoize_parameters: bool = False,
    ) -> None:
        self.memoize_parameters = memoize_parameters
        self.tokens_per_sample = tokens_per_sample
        self.flops_per_token = flops_per_token
        self.out_file = out_file
        self.warmup_steps = warmup_steps
        self.first_step_at: float | None = None
        self.train_begin_at: float | None = None
        self.last_end: float | None = None
        self.steady: list[tuple[int, float]] = []  # (the step it ended, seconds) of each steady interval
        self.disturbed = False
        self.steps = 0
        self.summary: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kw: Any) -> None:
        self.train_begin_at = time.time()
        if self.memoize_parameters:
            memoize_parameter_count(kw.get("model"))
        timeline.mark("train_begin")
        if self.warmup_steps is None:  # a tenth of the run, at most 30 steps: autotuning and compiling settle
            self.warmup_steps = min(30, max(1, state.max_steps // 10))

    def on_step_begin(self, args, state, control, **kw: Any) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
            self.last_end = time.perf_counter()
            timeline.mark("first_step_begin", at=self.first_step_at)

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        now = time.perf_counter()
        self.steps += 1
        if self.steps == 1:
            timeline.mark("first_step_end")
        if self.steps > self.warmup_steps and not self.disturbed and self.last_end is not None:
            step = getattr(state, "global_step", self.steps)  # bench/'s bare loop: no state
            self.steady.append((step, now - self.last_end))
        self.last_end, self.disturbed = now, False

    def _disturb(self, *a: Any, **kw: Any) -> None:
        self.disturbed = True  # the next interval includes an evaluation, a save or a report: not steady state

    on_evaluate = on_save = _disturb

    @property
    def intervals(self) -> list[float]:
        """The steady intervals' seconds, in order."""
        return [seconds for _, seconds in self.steady]

    def on_train_end(self, args, state, control, **kw: Any) -> None:
        self.summary = self.summarize(args)
        if self.out_file and state.is_world_process_zero:
            os.makedirs(os.path.dirname(self.out_file) or ".", exist_ok=True)
            with open(self.out_file, "w") as f:
                json.dump(self.summary, f, indent=2)

    def summarize(self, args: Any) -> dict[str, Any]:
        import torch

        world = max(1, args.world_size)
        samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
        intervals = self.intervals
        step_s = sum(intervals) / len(intervals) if intervals else None
        out: dict[str, Any] = {
            "world_size": world,
            "samples_per_step": samples_per_step,
            "tokens_per_sample": self.tokens_per_sample,
            "steps": self.steps,
            "steady_steps": len(intervals),
            "steady_step_seconds": step_s,
            # A one-off inside the window (a recompile, a graph recorded late) moves the mean, not the median: the
            # two apart, and the slowest steps, say whether a short run's rate is its steady one.
            "steady_step_seconds_median": statistics.median(intervals) if intervals else None,
            "slowest_steps": [
                [step, round(seconds, 4)] for step, seconds in sorted(self.steady, key=lambda s: s[1], reverse=True)[:3]
            ],
            "train_begin_at": self.train_begin_at,
            "first_step_at": self.first_step_at,
            "train_end_at": time.time(),
            "peak_memory_bytes_per_rank": peak_memory_per_rank(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "flops_per_token": self.flops_per_token,
        }
        if step_s:
            out["samples_per_second"] = samples_per_step / step_s
            out["tokens_per_second"] = out["samples_per_second"] * self.tokens_per_sample
            peak = peak_tflops(out["device"]) if torch.cuda.is_available() else None
            if peak and self.flops_per_token:
                out["mfu"] = out["tokens_per_second"] * self.flops_per_token / (peak * 1e12 * world)
        return out


def memoize_parameter_count(model: Any) -> None:
    """Count the model's parameters once instead of at every step.

    ``Trainer.floating_point_ops`` (its ``total_flos`` log) calls ``model.num_parameters(exclude_embeddings=True)``
    after every forward: a walk over all modules and parameters, ~1 ms of Python per step for BERT-base, while the
    GPU waits for the next launch. At ``on_train_begin`` the model is final (adapters attached, nothing added
    later), so the total counts cannot change; counts of trainable parameters are left uncached (freezing may).
    """
    original = getattr(model, "num_parameters", None)
    if original is None or getattr(original, "hfray_memoized", False):
        return
    cache: dict[bool, int] = {}

    def num_parameters(only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        if only_trainable:
            return original(only_trainable=True, exclude_embeddings=exclude_embeddings)
        if exclude_embeddings not in cache:
            cache[exclude_embeddings] = original(exclude_embeddings=exclude_embeddings)
        return cache[exclude_embeddings]

    num_parameters.hfray_memoized = True  # type: ignore[attr-defined]
    model.num_parameters = num_parameters


def callback_for_model(
    model: Any, tokens_per_sample: float, seq_len: int, head_fraction: float = 1.0
) -> ThroughputCallback:
    """The callback of an hfray run, with the FLOPs of ``model`` counted before any wrapping."""
    fpt = flops_per_token(model, seq_len, head_fraction)
    return ThroughputCallback(tokens_per_sample, fpt, memoize_parameters=True)


def manifest_entry(callback: ThroughputCallback) -> dict[str, Any]:
    """The rounded steady-state numbers that go into an artifact's manifest under ``throughput``."""
    s = callback.summary
    keys = ("samples_per_second", "tokens_per_second", "mfu", "steady_step_seconds")
    out: dict[str, Any] = {k: round(s[k], 4 if k == "mfu" else 2) for k in keys if s.get(k) is not None}
    out.update(
        steady_steps=s.get("steady_steps"),
        steady_step_seconds_median=round(s["steady_step_seconds_median"], 5) if s.get("steady_steps") else None,
        slowest_steps=s.get("slowest_steps"),
        device=s.get("device"),
        peak_memory_bytes_per_rank=s.get("peak_memory_bytes_per_rank"),
        first_step_at=s.get("first_step_at"),
        train_end_at=s.get("train_end_at"),
        flops_per_token=s.get("flops_per_token"),
    )
    return out
