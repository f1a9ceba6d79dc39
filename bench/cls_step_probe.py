"""Where does an eager BERT-base classification step go between a bare loop and the HF Trainer? One process, one GPU.

    python3 bench/cls_step_probe.py            # BERT-base, batch 64 x 128, bf16 autocast; prints ms per step per case
    python3 bench/cls_step_probe.py --tiny     # a CPU smoke of every case (numbers meaningless)
    python3 bench/cls_step_probe.py --cprofile # then cProfile the plain Trainer's and hfray's steady steps (host time)
    python3 bench/cls_step_probe.py --compiled # compiled cases only (then cProfile hfray's compiled step): see below

Dec 6 (one H100, ``gpu_dec06_night_h100.md``): the bench's ``cls`` rows ran 47-62 ms a step for the plain Trainer
and for hfray alike, a bare eager loop of the same model and batch 24-26 ms (``bench/sdpa_backend_probe.py``), the
GPU busy ~20 ms of each step. Cases (each times its steady steps, the device synchronised at both ends):
``loop``: the bare step on batches already on the device, no mask; ``loop-mask``: the same with the all-ones
attention mask and token types a tokenizer gives; ``loader``: those batches from a DataLoader (pinned, copied
non-blocking); ``trainer``: the HF Trainer on the same rows (bf16, no eval, no saves), then one change at a time:
``-workers2`` (2 DataLoader workers), ``-noclip`` (max_grad_norm 0), ``-nocudnn`` (sdpa off cuDNN's attention);
``trainer-hfray-args``: the TrainingArguments hfray builds for a GPU classification job, then without cuDNN's
attention (hfray's default since Dec 6), without DataLoader workers, without pinned memory.

``--compiled``: why hfray's ``torch_compile: true`` step (no graphs) ran 1,017 samples/s, slower than eager (1,153),
while the bare compiled step of the bench ran 2,133 (``gpu_dec06_night_h100.md``): ``loop-compiled`` (the whole
model ``.compile()``d, no mask), ``loop-mask-compiled`` (with the mask and token types), ``loop-mask-regions`` (each
encoder layer compiled alone, as accelerate's regional compilation, hfray's ``compile_regions`` default);
``trainer-hfray-compiled`` (hfray's arguments and process settings for a compiled job, regional), ``-whole``
(``compile_regions: false``), ``-graphs`` (``cuda_graphs: true``: reduce-overhead, hfray's step-begin mark),
``-whole-graphs`` (both). One H100, Dec 6: 27.9, 31.2, 35.2, 58.7, 45.7, 30.6 ms (whole + graphs not run;
``bench/results/gpu_dec06_s6_h100.md``); another lease: 20.83, 18.52, 32.90, 32.52, 27.48, 18.75, 17.48
(``gpu_dec06_s7_h100.md``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

TINY = "--tiny" in sys.argv
DEVICE = "cpu" if TINY else "cuda"
BATCH, SEQ, WARM, STEPS = (4, 16, 2, 6) if TINY else (64, 128, 20, 100)
REGIONAL = {"torch_compile": True, "cuda_graphs": False}  # the compiled Trainer cases' training keys
GRAPHS = {"torch_compile": True, "cuda_graphs": True}


PROFILE: list[Any] = []  # a cProfile.Profile while ``--cprofile`` profiles one case's steady steps


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _steady(start: bool) -> float:
    """Synchronise, then start or stop the clock (and the host profile, when one runs)."""
    _sync()
    if PROFILE:
        PROFILE[0].enable() if start else PROFILE[0].disable()
    return time.perf_counter()


def _model() -> Any:
    torch.manual_seed(0)
    size = (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64} if TINY else {}
    )
    return BertForSequenceClassification(BertConfig(num_labels=2, **size)).to(DEVICE)


def _rows(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (n, SEQ), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    ones, zeros = torch.ones(SEQ, dtype=torch.long), torch.zeros(SEQ, dtype=torch.long)
    return [
        {"input_ids": ids[i], "attention_mask": ones, "token_type_ids": zeros, "labels": labels[i]} for i in range(n)
    ]


def _loop(batches: Any, mask: bool, compiled: str = "") -> float:
    """``compiled``: "" eager, "whole" (``model.compile()``), "regions" (each encoder layer compiled alone)."""
    torch._dynamo.reset()
    model = _model()
    if compiled == "whole":
        model.compile()
    for layer in model.bert.encoder.layer if compiled == "regions" else []:
        layer.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=DEVICE == "cuda")
    for i, batch in enumerate(batches):
        if i == WARM:
            start = _steady(True)
        batch = {k: v.to(DEVICE, non_blocking=True) for k, v in batch.items()}
        if not mask:
            batch = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (_steady(False) - start) * 1e3 / (len(batches) - WARM)


class _Clock(TrainerCallback):
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == WARM:
            self.start = _steady(True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ms = (_steady(False) - self.start) * 1e3 / (state.global_step - WARM)


def _cprofiled(case: Any, title: str) -> None:
    """Host time by function over one case's steady steps: the calls that wait on the device (a sync, a blocking
    copy) show up as time spent in them, so a per-step sync is named, not guessed."""
    import cProfile
    import pstats

    PROFILE[:] = [cProfile.Profile()]
    ms = case()
    print(f"--- cProfile {title} ({ms:.1f} ms a step profiled): by own time, then cumulative", flush=True)
    stats = pstats.Stats(PROFILE.pop()).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(35)


def _hfray_arguments(out: str, compiled: dict[str, Any] | None = None, **changes: Any) -> TrainingArguments:
    """The TrainingArguments hfray builds for a GPU classification job (its GPU defaults: 2 DataLoader workers,
    length-grouped batches, no NaN filter, pinned non-blocking copies), without evaluation or saves. ``compiled``:
    training keys of a compiled job (``torch_compile`` ...), whose process settings are then set as a worker sets
    them (regional compilation's switch, cuDNN attention, Dynamo's graphs reset)."""
    from hfray.config import JobConfig
    from hfray.train.arguments import build_kwargs
    from hfray.train.process import compile_settings

    raw = {"name": "probe", "task": "text-classification", "model": {"name_or_path": "m"}, "data": {"train": "x.csv"}}
    training = {"max_steps": STEPS, "per_device_train_batch_size": BATCH, "learning_rate": 1e-5, **(compiled or {})}
    training.update({"dataloader_num_workers": 2, "group_by_length": True} if not TINY else {})
    job = JobConfig.from_dict({**raw, "training": training})
    compile_settings(job)
    kwargs = build_kwargs(job, out, use_gpu=not TINY)
    kwargs.update(eval_strategy="no", save_strategy="no", load_best_model_at_end=False, metric_for_best_model=None)
    return TrainingArguments(**{**kwargs, **changes})


def _trainer(
    rows: list[dict[str, torch.Tensor]],
    out: str,
    hfray: bool = False,
    compiled: dict[str, Any] | None = None,
    **changes: Any,
) -> float:
    args = _hfray_arguments(out, compiled, **changes) if hfray else TrainingArguments(
        output_dir=out, max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=1e-5, bf16=not TINY,
        use_cpu=TINY, save_strategy="no", eval_strategy="no", logging_steps=50, report_to="none", disable_tqdm=True,
        **changes,
    )  # fmt: skip
    callbacks: list[Any] = [_Clock()]
    if compiled and compiled.get("cuda_graphs"):
        from hfray.train.callbacks.cudagraphs import CudaGraphStepCallback

        callbacks.append(CudaGraphStepCallback())
    Trainer(model=_model(), args=args, train_dataset=rows, callbacks=callbacks).train()
    return callbacks[0].ms


def _compiled_cases(rows: Any, on_device: Any, out: str) -> dict[str, Any]:
    return {  # compiled cases: cuDNN attention allowed, as hfray's compiled jobs
        "loop-compiled": (lambda: _loop(on_device, mask=False, compiled="whole"), True),
        "loop-mask-compiled": (lambda: _loop(on_device, mask=True, compiled="whole"), True),
        "loop-mask-regions": (lambda: _loop(on_device, mask=True, compiled="regions"), True),
        "trainer-hfray-compiled": (lambda: _trainer(rows, out, hfray=True, compiled=REGIONAL), True),
        "trainer-hfray-compiled-whole": (
            lambda: _trainer(rows, out, hfray=True, compiled={**REGIONAL, "compile_regions": False}),
            True,
        ),
        "trainer-hfray-compiled-graphs": (lambda: _trainer(rows, out, hfray=True, compiled=GRAPHS), True),
        # One graph each way instead of 12 regions' replays, wrappers and guards: less host work a step.
        "trainer-hfray-compiled-whole-graphs": (
            lambda: _trainer(rows, out, hfray=True, compiled={**GRAPHS, "compile_regions": False}),
            True,
        ),
    }


def main() -> None:
    rows = _rows(BATCH * STEPS)
    stacked = [
        {k: torch.stack([r[k] for r in rows[i : i + BATCH]]) for k in rows[0]} for i in range(0, len(rows), BATCH)
    ]
    on_device = [{k: v.to(DEVICE) for k, v in b.items()} for b in stacked]
    loader = torch.utils.data.DataLoader(rows, batch_size=BATCH, pin_memory=DEVICE == "cuda")
    out = "/tmp/cls_probe"
    cases: dict[str, Any] = _compiled_cases(rows, on_device, out) if "--compiled" in sys.argv else {
        # name -> (the case, whether sdpa may pick cuDNN's attention)
        "loop": (lambda: _loop(on_device, mask=False), True),
        "loop-mask": (lambda: _loop(on_device, mask=True), True),
        "loader": (lambda: _loop(loader, mask=True), True),
        "trainer": (lambda: _trainer(rows, out), True),
        "trainer-workers2": (lambda: _trainer(rows, out, dataloader_num_workers=2), True),
        "trainer-noclip": (lambda: _trainer(rows, out, max_grad_norm=0.0), True),
        "trainer-nonanfilter": (lambda: _trainer(rows, out, logging_nan_inf_filter=False), True),
        "trainer-nocudnn": (lambda: _trainer(rows, out), False),
        "trainer-hfray-args": (lambda: _trainer(rows, out, hfray=True), True),
        "trainer-hfray-args-nocudnn": (lambda: _trainer(rows, out, hfray=True), False),  # hfray's default now
        "trainer-hfray-args-workers0": (lambda: _trainer(rows, out, hfray=True, dataloader_num_workers=0), False),
        "trainer-hfray-args-nopin": (lambda: _trainer(rows, out, hfray=True, dataloader_pin_memory=False), False),
    }  # fmt: skip
    for name, (case, cudnn) in cases.items():
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        print(json.dumps({"case": name, "cudnn_sdp": cudnn, "ms_per_step": round(case(), 2)}), flush=True)
    if "--compiled" in sys.argv and "--cprofile" in sys.argv:
        _cprofiled(lambda: _loop(on_device, mask=True, compiled="regions"), "loop-mask-regions")
        _cprofiled(lambda: _trainer(rows, out, hfray=True, compiled=REGIONAL), "trainer-hfray-compiled")
    elif "--cprofile" in sys.argv:
        torch.backends.cuda.enable_cudnn_sdp(False)
        _cprofiled(lambda: _loop(on_device, mask=True), "loop-mask")
        _cprofiled(lambda: _trainer(rows, out), "trainer")
        _cprofiled(lambda: _trainer(rows, out, hfray=True), "trainer-hfray-args-nocudnn")
    print(
        json.dumps({"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__})
    )


if __name__ == "__main__":
    main()
