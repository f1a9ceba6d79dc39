"""hfray: train, sweep and serve Hugging Face models on Ray (the command line).

It runs on the driver. User mistakes (``HfrayError``) print one clear message and exit with status 2; no
traceback. Each command lives in a small module (:mod:`.jobs`, :mod:`.serve`, :mod:`.runs`, :mod:`.cluster`) that
imports the heavy parts of hfray only when it runs, so ``hfray --help`` and a typo in a job file answer fast.
"""

from __future__ import annotations

import argparse
import sys

from hfray.cli import cluster, jobs, runs, serve
from hfray.cli.export import add_export_parser
from hfray.errors import HfrayError


class IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes flags and positionals in any order: ``hfray train JOB --fresh a=1 -v b=2``.

    Plain argparse ends the positionals (``job``, ``overrides``) at the first flag; a parser with sub-commands of
    its own (``hfray runs ...``) cannot be parsed intermixed and is parsed as before.
    """

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        if self._inner:  # argparse's intermixed parsing calls parse_known_args itself
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        except TypeError:  # sub-commands, REMAINDER: not intermixable
            return super().parse_known_args(args, namespace)
        finally:
            self._inner = False


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="stream worker and library logs to the console")
    loud.add_argument("-q", "--quiet", action="store_true", help="no progress; only the summary and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=IntermixedParser)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job", nargs="?", help=f"job YAML (default: the embedded {jobs.DEFAULT_JOB})")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=20")
        return p

    p = job_command("validate", "check a job file; all problems at once")
    p.add_argument("--print", action="store_true", help="print the resolved job")
    p.add_argument("--schema-only", action="store_true", help="skip loading data, tokenizer and model config")
    p.set_defaults(func=jobs.cmd_validate)

    p = job_command("train", "train a job on Ray Train (starts a local Ray cluster unless one is given)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new run, the job's latest from now on "
        "(run the job again to resume it; an unfinished --fresh run is resumed)",
    )
    add_console_arguments(p)
    p.set_defaults(func=jobs.cmd_train)

    p = job_command("sweep", "tune a job's hyperparameters on Ray Tune (its sweep: section); exports the best")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials are kept")
    p.add_argument("--fresh", action="store_true", help="start a new sweep even if this one ran before")
    add_console_arguments(p)
    p.set_defaults(func=jobs.cmd_sweep)

    p = sub.add_parser("predict", help="predict with an exported artifact (classify, tag, answer, generate)")
    p.add_argument("artifact", help="artifact dir or URI (printed at the end of hfray train)")
    p.add_argument("texts", nargs="+", help="texts; image files for an image-classification artifact")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--context", help="question-answering artifacts: the text the questions are answered from")
    p.set_defaults(func=jobs.cmd_predict)

    p = sub.add_parser("serve", help="serve artifacts over HTTP on Ray Serve (batched, multiplexed)")
    serve.add_serve_arguments(p)
    p.set_defaults(func=serve.cmd_serve)

    p = sub.add_parser("demo", help="serve artifacts with a Gradio demo page at /ui (hfray serve --ui; hfray[demo])")
    serve.add_serve_arguments(p)
    p.set_defaults(func=serve.cmd_serve, ui=True)

    p = job_command("tokenizer", "train the job's tokenizer section into model.tokenizer (WordPiece, BPE, Unigram)")
    p.add_argument("--force", action="store_true", help="retrain even if a tokenizer is already there")
    p.set_defaults(func=jobs.cmd_tokenizer)

    add_export_parser(sub)  # hfray export ARTIFACT --onnx [--int8]
    runs.add_runs_parser(sub)
    cluster.add_cluster_parser(sub)

    p = sub.add_parser("show-default", help="print the embedded default job file")
    p.set_defaults(func=jobs.cmd_show_default)
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
