"""The ``hfray`` command line: validate, train, sweep, predict, serve, show-default.

User mistakes (``HfrayError``) print one clear message and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from hfray import timeline
from hfray.errors import HfrayError

DEFAULT_JOB = "bbc_news_minilm.yaml"
LM_TASKS = ("masked-lm", "causal-lm")  # hfray.lm_config.LM_TASKS, not imported: it loads pydantic
TRL_TASKS = ("sft", "dpo")  # hfray.trl_config.TRL_TASKS


def default_job_path() -> Path:
    return Path(str(resources.files("hfray") / "jobs" / DEFAULT_JOB))


def _split_job_and_overrides(job: str | None, overrides: list[str]) -> tuple[Path, list[str]]:
    """``hfray train key=value`` means the default job with an override, not a job file named so."""
    if job is not None and "=" in job and not os.path.exists(job):
        return default_job_path(), [job, *overrides]
    return (Path(job) if job else default_job_path()), overrides


def _load(args: argparse.Namespace):
    from hfray.config import load_job

    path, overrides = _split_job_and_overrides(args.job, args.overrides)
    return path, load_job(path, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    path, job = _load(args)
    if args.print:
        print(yaml.safe_dump(job.to_dict(), sort_keys=False), end="")
    if job.sweep is not None:
        from hfray.sweep_space import check_space_driver, sweep_metric

        check_space_driver(job)
        metric, mode = sweep_metric(job)
        print(f"sweep: {len(job.sweep.parameters)} parameters, {job.sweep.search} search, metric {metric} ({mode})")
    if not args.schema_only and job.task in TRL_TASKS:
        from hfray.trl_train import preflight_trl_driver

        _, info = preflight_trl_driver(job)
        print("data, tokenizer and model config checked: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    elif not args.schema_only and job.task in LM_TASKS:
        from hfray.pretrain import preflight_lm_driver

        _, info = preflight_lm_driver(job, train_tokenizer=False)
        print("data, tokenizer and model config checked: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    elif not args.schema_only:
        from hfray.train import preflight_driver

        _, prepared = preflight_driver(job)
        print(f"data: {prepared.sizes} rows, labels {prepared.labels}; model and tokenizer found")
    print(f"OK: {path} is a valid {job.task} job; run name {job.run_name}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    timeline.mark_process_start("driver")
    path, job = _load(args)  # first: a mistake in the job file is reported in a second, before heavy imports
    timeline.mark("job_validated", "driver")
    print(f"[hfray] job {path}", flush=True)
    from hfray.train import run_training_driver

    if job.task in LM_TASKS:  # pre-training (masked-lm, causal-lm) has its own driver
        from hfray.pretrain import run_pretraining_driver as run_training_driver
    elif job.task in TRL_TASKS:  # TRL's SFT and DPO trainers, on the same Ray Train spine
        from hfray.trl_train import run_trl_driver as run_training_driver
    timeline.mark("driver_imports", "driver")
    summary = run_training_driver(job, fresh=args.fresh)
    status = "was already complete (use --fresh to train again)" if summary.reused else "finished"
    print(f"\n[hfray] run {summary.run_name} {status} in {summary.wall_seconds:.1f} s on {summary.cluster}")
    print(f"  run dir:     {summary.run_dir}")
    print(f"  checkpoints: {len(summary.checkpoints)} kept" + "".join(f"\n    {c}" for c in summary.checkpoints))
    print(f"  metrics log: {summary.run_dir}/hfray_metrics.jsonl")
    print(f"  artifact:    {summary.artifact}")
    best = summary.manifest.get("best", {})
    print(f"  best:        {best.get('metric')} = {best.get('value')} at step {best.get('step')}")
    print(
        "  final:       "
        + "  ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(summary.metrics.items())
            if k.startswith(("eval_", "test_")) and "runtime" not in k and "per_second" not in k
        )
    )
    print(f'  try it:      hfray predict {summary.artifact} "some text"')
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    path, job = _load(args)
    print(f"[hfray] sweep of job {path}", flush=True)
    from hfray.tune import run_sweep_driver

    summary = run_sweep_driver(job, resume=args.resume, fresh=args.fresh)
    status = "was already complete (use --fresh to sweep again)" if summary.reused else "finished"
    print(f"\n[hfray] sweep {summary.sweep_name} {status} in {summary.wall_seconds:.1f} s on {summary.cluster}")
    print(f"  sweep dir:   {summary.sweep_dir}  (tensorboard --logdir {summary.sweep_dir})")
    print(f"  report:      {summary.sweep_dir}/sweep_report.md  (.csv, learning_curves.png)")
    for trial in summary.trials:
        value = trial["best_value"]
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items())
        print(f"    {trial['trial_id']}  {shown}  {params}  [{trial['stop_reason']}]")
    if summary.best is None or summary.artifact is None:
        print("  no trial left a checkpoint to export")
        return 1
    best = summary.best
    print(f"  best trial:  {best['trial_id']}: {best['best_value']:.4f} at step {best['best_step']}")
    print(f"  artifact:    {summary.artifact}")
    print(f'  try it:      hfray predict {summary.artifact} "some text"   or   hfray serve {summary.artifact}')
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hfray.checkpoints import load_artifact_pipeline
    from hfray.tasks.predict import TASK_PIPELINES, predict_per_text

    pipe = load_artifact_pipeline(args.artifact)
    if pipe.task in TASK_PIPELINES:  # token-classification, question-answering, seq2seq
        outputs = predict_per_text(pipe, args.texts, args.context)
    elif pipe.task in ("fill-mask", "text-generation"):  # pre-trained LMs; these unwrap a one-text batch: call per text
        kwargs = {"top_k": args.top_k} if pipe.task == "fill-mask" else {"max_new_tokens": 32}
        outputs = [pipe(text, **kwargs) for text in args.texts]
    else:
        outputs = pipe(args.texts, top_k=args.top_k)
    for text, out in zip(args.texts, outputs, strict=True):
        print(json.dumps({"text": text, "predictions": out}))
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from hfray.tokenizer_training import train_tokenizer_driver

    path, job = _load(args)
    summary = train_tokenizer_driver(job, force=args.force)
    done = "already trained with these settings (--force retrains)" if summary.reused else "trained"
    print(
        f"[hfray] tokenizer {done}: {job.tokenizer.algorithm}, {summary.vocab_size} tokens, "  # type: ignore[union-attr]
        f"{summary.texts} texts, {summary.seconds:.1f} s\n  saved to:    {summary.path}\n"
        f"  load it:     AutoTokenizer.from_pretrained({summary.path!r})"
    )
    return 0


def cmd_show_default(args: argparse.Namespace) -> int:
    print(default_job_path().read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job", nargs="?", help=f"job YAML (default: the embedded {DEFAULT_JOB})")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=20")
        return p

    p = job_command("validate", "check a job file; all problems at once")
    p.add_argument("--print", action="store_true", help="print the resolved job")
    p.add_argument("--schema-only", action="store_true", help="skip loading data, tokenizer and model config")
    p.set_defaults(func=cmd_validate)

    p = job_command("train", "train a job on Ray Train (starts a local Ray cluster unless one is given)")
    p.add_argument("--fresh", action="store_true", help="start a new run even if this job ran before")
    p.set_defaults(func=cmd_train)

    p = job_command("sweep", "tune a job's hyperparameters on Ray Tune (its sweep: section); exports the best")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--fresh", action="store_true", help="start a new sweep even if this one ran before")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("predict", help="predict with an exported artifact (classify, tag, answer, generate)")
    p.add_argument("artifact", help="artifact dir or URI (printed at the end of hfray train)")
    p.add_argument("texts", nargs="+")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--context", help="question-answering artifacts: the text the questions are answered from")
    p.set_defaults(func=cmd_predict)

    from hfray.serving import add_serve_arguments, serve_cli  # import-light

    p = sub.add_parser("serve", help="serve artifacts over HTTP on Ray Serve (batched, multiplexed)")
    add_serve_arguments(p)
    p.set_defaults(func=serve_cli)

    p = job_command("tokenizer", "train the job's tokenizer section into model.tokenizer (WordPiece, BPE, Unigram)")
    p.add_argument("--force", action="store_true", help="retrain even if a tokenizer is already there")
    p.set_defaults(func=cmd_tokenizer)

    from hfray.local_cluster import add_cluster_parser
    from hfray.runs import add_runs_parser

    add_runs_parser(sub)
    add_cluster_parser(sub)

    p = sub.add_parser("show-default", help="print the embedded default job file")
    p.set_defaults(func=cmd_show_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HfrayError as exc:
        print(f"hfray: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "hfray: interrupted; checkpoints written so far are kept and the next run resumes",
            file=sys.stderr,
        )
        return 130
