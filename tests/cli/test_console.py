"""What a user sees of ``hfray train``: a real small job run as a user runs it, under a pseudo-terminal and piped.

On a terminal: no line twice, no bytecode, no traceback, the summary as the last block, the log file's path first.
Piped (CI, ``ray job logs``): the same, plain progress lines and no carriage-return redraws. Worker lines are in the
per-run log file, whose path the command printed.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_job

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def job_file(tmp_path: Path, data_files: dict[str, Path]) -> Path:
    job = tiny_job(
        tmp_path,
        data_files,
        resources={"num_workers": 1, "cpus_per_worker": 1},
        training={"max_steps": 12, "eval_steps": 6, "logging_steps": 3},
        tracking={"mlflow": False, "progress_bar": True, "tensorboard": False, "learning_curve": False},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def command_env(tmp_path: Path, address: str) -> dict[str, str]:
    """The session's cluster (a fresh one costs ~20 s more), a log folder of the test's own, a terminal's width."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("HFRAY_")}
    return {**keep, "RAY_ADDRESS": address, "HFRAY_LOG_DIR": str(tmp_path / "logs"), "COLUMNS": "120"}


def run_in_pty(args: list[str], env: dict[str, str], timeout: float = 400) -> tuple[int, str]:
    """The command with a pseudo-terminal as its stdout and stderr: what a user sees, bytes as written."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for {timeout} s: {b''.join(chunks)[-2000:]!r}")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def visible_lines(output: str) -> list[str]:
    """The lines left on screen: a line's last carriage-return segment, colours dropped, blank lines dropped."""
    lines = [ANSI.sub("", line).rsplit("\r", 1)[-1].rstrip() for line in output.replace("\r\n", "\n").split("\n")]
    return [line for line in lines if line.strip()]


def check_console(lines: list[str], output: str) -> None:
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert not repeated, repeated
    for noise in ("LOAD_GLOBAL", "RESUME", "Traceback", "RayTrainWorker", "TrainController", "hfray-run:", "repeated"):
        assert noise not in output, (noise, output)
    assert lines[0].startswith("[hfray] log: "), lines[:3]
    finished = [i for i, line in enumerate(lines) if re.match(r"\[hfray\] run \S+ finished in", line)]
    assert len(finished) == 1, lines
    summary = lines[finished[0] :]
    assert summary[-1].startswith("  try it:      hfray predict "), summary
    assert all(line.startswith("  ") for line in summary[1:]), summary  # nothing interleaved


def check_log_file(first_line: str) -> None:
    log = Path(first_line.removeprefix("[hfray] log: ").split("  (")[0]).read_text()
    # A one-worker job runs in one Ray task by default (resources.launch: auto): its lines carry the task's name.
    assert "(hfray-run:" in log and "[hfray] eval @ step 12" in log, log[-3000:]  # the last lines too
    assert log.count("[hfray] eval @ step 6:") == 1, log  # each worker line once (Train's print patch is off)
    assert "LOAD_GLOBAL" not in log and "RESUME " not in log, log  # dill's dis output stays in its capture
    assert "Reported metrics:" not in log, log  # Ray's local mode logs every report: the metrics log has them


def test_a_run_on_a_terminal_reads_cleanly(ray_cluster, tmp_path, data_files):
    env = command_env(tmp_path, ray_cluster.get_runtime_context().gcs_address)
    code, output = run_in_pty([sys.executable, "-m", "hfray", "train", str(job_file(tmp_path, data_files))], env)
    (tmp_path / "console.txt").write_text(output)  # as the terminal got it, for a failure's reader
    lines = visible_lines(output)
    assert code == 0, output
    check_console(lines, output)
    assert any(line.startswith("[hfray] training: 100%") and "12/12" in line for line in lines), lines
    check_log_file(lines[0])


@pytest.mark.slow  # the same job once more, piped
def test_a_piped_run_prints_plain_lines(ray_cluster, tmp_path, data_files):
    env = command_env(tmp_path, ray_cluster.get_runtime_context().gcs_address)
    args = [sys.executable, "-m", "hfray", "train", str(job_file(tmp_path, data_files))]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=400)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "\r" not in output
    check_console(visible_lines(proc.stdout), output)
    assert re.search(r"^\[hfray\] step 6/12 \(50%\)  loss \S+  eval_accuracy \S+", proc.stderr, re.M), proc.stderr
    assert re.search(r"^\[hfray\] step 12/12 \(100%\)", proc.stderr, re.M), proc.stderr
    check_log_file(proc.stdout.splitlines()[0])


def test_a_step_line_forwarded_after_the_run_ended_draws_no_new_bar():
    # Ray forwards a worker's last step lines asynchronously: with resources.launch=task fit() returned before they
    # arrived, and the bar came back below the run's summary (seen in tests/cli's terminal test under that launch).
    import io

    from hfray.cli.console import Progress

    out = io.StringIO()
    progress = Progress(out, True, "eval_accuracy")
    progress.update(3, 12, 0.69)
    progress.close()
    drawn = out.getvalue()
    assert "3/12" in drawn
    progress.update(12, 12, 0.68)
    assert out.getvalue() == drawn and progress.bar is None
