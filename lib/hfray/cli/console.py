"""The console of ``hfray train`` and ``hfray sweep``: hfray's own lines, one progress display, the summary last.

Everything else the command's process prints (Ray's forwarded worker and controller logs, warnings, transformers'
and datasets' chatter, library progress bars) goes to a per-run log file, ``$HFRAY_LOG_DIR`` or
``~/.hfray/logs``, whose path is printed first. ``-v`` streams it to the console as well; ``-q`` keeps only the
summary and errors.

How: for the command's duration ``sys.stdout``/``sys.stderr`` are :class:`Router` s. A line the driver prints
(``[hfray] ...``, ``hfray: error: ...``) goes to the console; every line goes to the log file. Progress comes from
the run's reports: the metrics log the Train controller appends at every report (step, loss, evaluation), and
between reports rank 0's ``[hfray] step S/T`` lines that Ray forwards. On a terminal it is one tqdm bar; elsewhere
(CI, ``ray job logs``, a pipe) plain lines at each report, never carriage-return redraws.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

LOG_DIR_ENV = "HFRAY_LOG_DIR"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# rank 0's line (hfray.train.callbacks.report), as Ray forwards it: "(RayTrainWorker pid=1) [hfray] step 3/24 ..."
_STEP = re.compile(r"\[hfray\] step (\d+)/(\d+) .*?loss ([0-9.eE+-]+)")
_OWN = ("[hfray]", "hfray:")
_FORWARDED = re.compile(r"^\((\S+ )?pid=\d+")  # Ray's prefix of a line another process printed
# Worker lines the console shows too (once each, without Ray's prefix): a run that resumes says from where; storage
# that fails is retried and said (hfray.storage.retry), whichever process (Train worker or controller, task) met it.
_SHOWN = re.compile(r"^\([^)]*\) (\[hfray\] (?:resuming from checkpoint|storage: ).*)$")
# A sweep shows the lines its own process prints (Tune's table), but not libraries' log records among them: MLflow's
# and Ray's timestamped INFO/DEBUG lines, and Ray's notice that the local cluster hfray started uses token auth
# (nothing for the user to do: it is hfray's loopback cluster). They stay in the log file.
_CHATTER = re.compile(
    r"^\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d\S*\s+(INFO|DEBUG)\b"
    r"|^Token authentication is enabled for this Ray cluster"
)


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or Path.home() / ".hfray" / "logs").expanduser()


def new_log_path(command: str, name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{name}-{stamp}-{os.getpid()}.log"


@dataclass
class Progress:
    """Steps, loss and the last evaluation of a run, drawn as a tqdm bar (terminal) or plain lines (else)."""

    out: TextIO
    tty: bool
    metric: str  # e.g. eval_accuracy
    step: int = 0
    total: int = 0
    loss: float | None = None
    evaluation: float | None = None
    bar: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    printed_at: int = -1
    first: tuple[int, float] | None = None  # the first step seen and when: the ETA's rate
    closed: bool = False  # a worker's step line that Ray forwards after the run ended draws no new bar

    def update(self, step: int, total: int = 0, loss: float | None = None, evaluation: float | None = None) -> None:
        """A step line (``evaluation`` None) or a report; plain output prints one line per evaluated report."""
        with self.lock:
            if self.closed:
                return
            self.total = total or self.total
            self.loss = loss if loss is not None else self.loss
            self.evaluation = evaluation if evaluation is not None else self.evaluation
            if self.first is None:
                self.first = (step, time.monotonic())
            self.step = max(self.step, step)
            if self.tty:
                self._draw()
            elif evaluation is not None and step > self.printed_at:
                self.printed_at = step
                print(f"[hfray] {self.describe(step, loss)}", file=self.out, flush=True)

    def eta(self, step: int) -> str:
        if self.first is None or not self.total or step <= self.first[0]:
            return ""
        rate = (step - self.first[0]) / max(time.monotonic() - self.first[1], 1e-6)
        left = int((self.total - step) / rate)
        return f"eta {left // 60}:{left % 60:02d}"

    def describe(self, step: int, loss: float | None) -> str:
        """``step 6/12 (50%)  loss 0.6976  eval_accuracy 0.3906  eta 0:12``: a report's line, plain output."""
        of = f"/{self.total} ({100 * step / self.total:.0f}%)" if self.total else ""
        parts = [f"step {step}{of}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if self.evaluation is not None:
            parts.append(f"{self.metric} {self.evaluation:.4f}")
        return "  ".join([*parts, self.eta(step)]).rstrip()

    def _draw(self) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total or None, file=self.out, unit="step", desc="[hfray] training", leave=True)
        if self.total and self.bar.total != self.total:
            self.bar.total = self.total
        shown = {"loss": f"{self.loss:.4f}"} if self.loss is not None else {}
        if self.evaluation is not None:
            shown[self.metric.removeprefix("eval_")] = f"{self.evaluation:.4f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(self.step - self.bar.n)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.bar is not None:
                self.bar.close()
                self.bar = None


class Router(io.TextIOBase):
    """A stand-in for ``sys.stdout``/``sys.stderr``: every line to the log file; hfray's own lines (or, verbose,
    all lines) to the console; rank 0's step lines to the progress display."""

    def __init__(self, console: Console, stream: TextIO) -> None:
        self.console, self.stream, self.pending = console, stream, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # libraries' own progress bars stay plain (they go to the log file)

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.console.line(line, self.stream)
        return len(text)

    def flush(self) -> None:
        self.console.log.flush()


class Console:
    """The command's console and log file (see the module docstring)."""

    def __init__(self, log_path: Path, verbose: bool, quiet: bool, metric: str, driver_lines: bool = False) -> None:
        self.out, self.err = sys.stdout, sys.stderr
        self.verbose, self.quiet = verbose, quiet
        self.log_path = log_path
        self.log = log_path.open("a", encoding="utf-8", errors="replace")
        tty = self.err.isatty() and not verbose  # -v: worker lines interleave, so plain lines
        self.progress = None if quiet or not metric else Progress(self.err, tty, metric)
        self.driver_lines = driver_lines  # every line this process prints (Tune's table), not Ray's forwarded ones
        self.shown: set[str] = set()
        self.had_ray = "ray" in sys.modules and sys.modules["ray"].is_initialized()

    def line(self, line: str, stream: TextIO) -> None:
        plain = _ANSI.sub("", line)
        self.log.write(plain.rsplit("\r", 1)[-1] + "\n")  # a bar's redraws: its last state
        if self.verbose:
            print(line, file=stream, flush=True)
        elif plain.startswith(_OWN) and not (self.quiet and plain.startswith("[hfray]")):
            self.say(plain, stream)
        elif self.driver_lines and not self.quiet and not _FORWARDED.match(plain) and not _CHATTER.match(plain):
            self.say(line, stream)
        elif (shown := _SHOWN.match(plain)) and not self.quiet and shown[1] not in self.shown:
            self.shown.add(shown[1])
            self.say(shown[1], stream)
        found = _STEP.search(plain)
        if found and self.progress is not None:
            self.progress.update(int(found[1]), int(found[2]), float(found[3]))

    def say(self, text: str, stream: TextIO | None = None) -> None:
        """A line on the console, above the progress bar on a terminal (line() has logged it)."""
        stream = stream or self.out
        if self.progress is None:
            print(text, file=stream, flush=True)
            return
        with self.progress.lock:  # the bar is redrawn from the metrics log's thread too
            bar = self.progress.bar
            if bar is not None:
                bar.clear()
            print(text, file=stream, flush=True)
            if bar is not None:
                bar.refresh()

    def report(self, record: dict[str, Any]) -> None:
        """One line of the run's metrics log (a Train report)."""
        if self.progress is None or "step" not in record:
            return
        evaluation = record.get(self.progress.metric)
        self.progress.update(
            int(record["step"]), int(record.get("max_steps") or 0), record.get("train_loss"), evaluation
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.flush()


def watch_metrics_log(console: Console, uri: str, stop: threading.Event, every: float = 1.0) -> None:
    """Feed every new line of a run's metrics log to the console until ``stop`` (and once more after it)."""
    from hfray.storage import fs

    seen = 0
    while True:
        stopping = stop.wait(every)
        with contextlib.suppress(OSError, ValueError):
            lines = fs.read_text(uri).splitlines() if fs.exists(uri) else []
            for line in lines[seen:]:
                with contextlib.suppress(ValueError):
                    console.report(json.loads(line))
            seen = max(seen, len(lines))
        if stopping:
            return


@contextlib.contextmanager
def watching(console: Console, uri: str) -> Iterator[None]:
    """The progress display follows ``uri`` (a metrics log) while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(target=watch_metrics_log, args=(console, uri, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        console.close()


def quiet_libraries() -> None:
    """Library chatter on the driver (datasets' and transformers' bars and warnings) only in the log file."""
    import logging

    logging.captureWarnings(True)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()


@contextlib.contextmanager
def routed(
    command: str, name: str, verbose: bool, quiet: bool, metric: str, driver_lines: bool = False
) -> Iterator[Console]:
    """The command's output routed (see the module docstring) while the block runs; the log path printed first.

    ``metric``: the evaluation the progress display shows ("": no progress display); ``driver_lines``: every line
    this process prints reaches the console (``hfray sweep``: Tune's trial table), not only hfray's own.
    """
    console = Console(new_log_path(command, name), verbose, quiet, metric, driver_lines)
    if not quiet:
        print(f"[hfray] log: {console.log_path}" + ("" if verbose else "  (-v streams it here)"), flush=True)
    if not verbose:
        quiet_libraries()
    sys.stdout, sys.stderr = Router(console, console.out), Router(console, console.err)
    try:
        yield console
    finally:
        end_ray(console)  # also on an error: Ray's late lines (a worker's traceback) go to the log, not after it
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, Router) and stream.pending:
                stream.write("\n")
        sys.stdout, sys.stderr = console.out, console.err
        console.close()
        console.log.close()


def end_ray(console: Console) -> None:
    """Shut down the Ray connection this command opened, so Ray's last forwarded log lines reach the log file
    before the summary instead of the console after it (a connection that was there before is kept)."""
    ray = sys.modules.get("ray")
    if ray is not None and not console.had_ray and ray.is_initialized():
        ray.shutdown()
