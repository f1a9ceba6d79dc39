"""The commands on job files: ``hfray validate``, ``train``, ``sweep``, ``tokenizer``, ``predict``, ``show-default``.

A job file is read and validated first, in a second; the heavy imports (Ray, transformers) follow only once it
is valid. Every task goes through the task -> recipe table (:mod:`hfray.train.run`): no task switches here.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from hfray import timeline
from hfray.cli import console

DEFAULT_JOB = "bbc_news_minilm.yaml"


def default_job_path() -> Path:
    return Path(str(resources.files("hfray") / "jobs" / DEFAULT_JOB))


def split_job_and_overrides(job: str | None, overrides: list[str]) -> tuple[Path, list[str]]:
    """``hfray train key=value`` means the default job with an override, not a job file named so."""
    if job is not None and "=" in job and not os.path.exists(job):
        return default_job_path(), [job, *overrides]
    return (Path(job) if job else default_job_path()), overrides


def load(args: argparse.Namespace) -> tuple[Path, Any]:
    from hfray.config import load_job

    path, overrides = split_job_and_overrides(args.job, args.overrides)
    return path, load_job(path, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    path, job = load(args)
    if args.print:
        print(yaml.safe_dump(job.to_dict(), sort_keys=False), end="")
    if job.sweep is not None:
        from hfray.tune.plan import sweep_metric
        from hfray.tune.space import check_space

        check_space(job)
        metric, mode = sweep_metric(job)
        print(f"sweep: {len(job.sweep.parameters)} parameters, {job.sweep.search} search, metric {metric} ({mode})")
    if not args.schema_only:
        from hfray.train.run import describe, preflight

        checked, info = preflight(job, full=False)
        print(f"data, tokenizer and model config checked: {describe(checked, info)}")
    print(f"OK: {path} is a valid {job.task} job; run name {job.run_name}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    timeline.mark_process_start("driver")
    path, job = load(args)  # first: a mistake in the job file is reported in a second, before heavy imports
    timeline.mark("job_validated", "driver")
    metric = job.evaluation.best_metric_key
    with console.routed("train", job.name, args.verbose, args.quiet, metric) as shown:
        print(f"[hfray] job {path}", flush=True)
        from hfray.train.run import run_training

        timeline.mark("driver_imports", "driver")
        watch = (lambda uri: console.watching(shown, uri)) if job.tracking.progress_bar else None
        summary = run_training(job, fresh=args.fresh, watch=watch)
        console.end_ray(shown)  # Ray's last forwarded lines land in the log file, not after the summary
        print_summary(summary, shown.out)
    return 0


def print_summary(summary: Any, out: Any) -> None:
    """The run's summary, written to the console itself (past the log routing), last."""
    status = "was already complete (use --fresh to train again)" if summary.reused else "finished"
    best = summary.manifest.get("best", {})
    example = "image.png" if summary.manifest.get("task") == "image-classification" else '"some text"'
    final = [
        f"{k}={v:.4f}"
        for k, v in sorted(summary.metrics.items())
        if k.startswith(("eval_", "test_")) and "runtime" not in k and "per_second" not in k
    ]
    lines = [
        f"\n[hfray] run {summary.run_name} {status} in {summary.wall_seconds:.1f} s on {summary.cluster}",
        f"  run dir:     {summary.run_dir}",
        f"  checkpoints: {len(summary.checkpoints)} kept" + "".join(f"\n    {c}" for c in summary.checkpoints),
        f"  metrics log: {summary.run_dir}/hfray_metrics.jsonl",
        f"  artifact:    {summary.artifact}",
        f"  best:        {best.get('metric')} = {best.get('value')} at step {best.get('step')}",
        "  final:       " + "  ".join(final),
        f"  try it:      hfray predict {summary.artifact} {example}",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def cmd_sweep(args: argparse.Namespace) -> int:
    path, job = load(args)
    # Tune's trial table (printed by this process) stays on the console; trials' forwarded lines go to the log.
    with console.routed("sweep", job.name, args.verbose, args.quiet, "", driver_lines=True) as shown:
        print(f"[hfray] sweep of job {path}", flush=True)
        from hfray.tune.driver import run_sweep

        summary = run_sweep(job, resume=args.resume, fresh=args.fresh)
        console.end_ray(shown)
        return print_sweep_summary(summary, shown.out)


def print_sweep_summary(summary: Any, out: Any) -> int:
    """The sweep's summary on the console, last; 1 when no trial left a checkpoint to export."""
    status = "was already complete (use --fresh to sweep again)" if summary.reused else "finished"
    lines = [
        f"\n[hfray] sweep {summary.sweep_name} {status} in {summary.wall_seconds:.1f} s on {summary.cluster}",
        f"  sweep dir:   {summary.sweep_dir}  (tensorboard --logdir {summary.sweep_dir})",
        f"  report:      {summary.sweep_dir}/sweep_report.md  (.csv, learning_curves.png)",
    ]
    for trial in summary.trials:
        value = trial["best_value"]
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items())
        lines.append(f"    {trial['trial_id']}  {shown}  {params}  [{trial['stop_reason']}]")
    best = summary.best
    if best is None or summary.artifact is None:
        lines.append("  no trial left a checkpoint to export")
    else:
        lines += [
            f"  best trial:  {best['trial_id']}: {best['best_value']:.4f} at step {best['best_step']}",
            f"  artifact:    {summary.artifact}",
            f'  try it:      hfray predict {summary.artifact} "some text"   or   hfray serve {summary.artifact}',
        ]
    out.write("\n".join(lines) + "\n")
    out.flush()
    return 0 if summary.artifact is not None and best is not None else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.artifacts.predict import predict

    pipe = load_artifact_pipeline(args.artifact)
    outputs = predict(pipe, args.texts, top_k=args.top_k, context=args.context)
    key = "image" if pipe.task == "image-classification" else "text"
    for text, out in zip(args.texts, outputs, strict=True):
        print(json.dumps({key: text, "predictions": out}))
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from hfray.data.tokenizer_training import train_tokenizer

    path, job = load(args)
    summary = train_tokenizer(job, force=args.force)
    done = "already trained with these settings (--force retrains)" if summary.reused else "trained"
    print(
        f"[hfray] tokenizer {done}: {job.tokenizer.algorithm}, {summary.vocab_size} tokens, "
        f"{summary.texts} texts, {summary.seconds:.1f} s\n  saved to:    {summary.path}\n"
        f"  load it:     AutoTokenizer.from_pretrained({summary.path!r})"
    )
    return 0


def cmd_show_default(args: argparse.Namespace) -> int:
    print(default_job_path().read_text(), end="")
    return 0
