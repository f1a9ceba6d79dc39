"""Python's full garbage collections while the HF Trainer trains, with and without hfray's ``frozen_setup`` (the
setup's objects frozen out of the collector's reach while training: ``hfray.train.process``).

Each case in a fresh process that imports what a Ray Train worker holds (torch, transformers, datasets, accelerate,
Ray, hfray's worker modules: ~520k tracked objects), then trains a tiny BERT classifier (hidden 32, 2 layers) on
random rows for 400 steps of 8 on CPU, one thread. ``gc.callbacks`` time every collection. Prints per case: the
training's wall seconds, the median step, and each full (generation 2) collection's milliseconds.

    python bench/gc_pause_cpu.py          # ~30 s on 2 cores

2 CPUs (this repo's CI machine kind), 2026-12-06, two runs: ~518-521k tracked objects; unfrozen: one full collection
of 302 / 306 ms in the 400 steps (train 4.7 / 4.1 s); frozen: 0 ms (train 3.8 / 3.6 s). On one H100's host,
the bench's eager classification steps had pauses of 0.10-0.12 s at steps 65, 241 and 385 of 400
(``bench/results/gpu_dec06_s8_h100.md``): not yet measured with the setup frozen.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

from bench_common import in_fresh_process  # a sibling module: the script's folder is on sys.path


def case(frozen: bool, steps: int) -> dict[str, Any]:
    import contextlib

    import accelerate  # noqa: F401  (a worker's heap)
    import datasets
    import ray.train  # noqa: F401
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    import hfray.train.callbacks.report  # noqa: F401
    from hfray.train.process import frozen_setup

    torch.set_num_threads(1)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    model = BertForSequenceClassification(BertConfig(vocab_size=1000, **tiny))
    rows = [{"input_ids": torch.randint(5, 1000, (32,)).tolist(), "labels": i % 2} for i in range(4096)]
    step_s: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_s.append(time.perf_counter() - self.t)

    args = TrainingArguments(
        "/tmp/gc_pause_cpu", per_device_train_batch_size=8, max_steps=steps, report_to=[], save_strategy="no",
        logging_steps=50, use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), callbacks=[Clock()])
    tracked = len(gc.get_objects())
    pauses: list[tuple[int, float]] = []
    began: list[float] = []

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        else:
            pauses.append((info["generation"], time.perf_counter() - began.pop()))

    with frozen_setup() if frozen else contextlib.nullcontext():
        gc.callbacks.append(timed)
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        gc.callbacks.remove(timed)
    full = [round(s * 1000, 1) for g, s in pauses if g == 2]
    median = sorted(step_s)[len(step_s) // 2]
    return {
        "frozen": frozen,
        "tracked": tracked,
        "train_s": round(wall, 2),
        "median_step_ms": round(median * 1000, 2),
        "full_collections_ms": full,
        "collections": len(pauses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--case", choices=["frozen", "unfrozen"], help="one case, in this process")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.case == "frozen", args.steps)), flush=True)
        return
    for name in ("unfrozen", "frozen"):
        print(in_fresh_process(__file__, "--case", name, "--steps", str(args.steps)), flush=True)


if __name__ == "__main__":
    main()
