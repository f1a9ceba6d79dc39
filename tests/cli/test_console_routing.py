"""The console's routing in this process, no Ray: which lines reach the console, the log file, the progress display,
with and without ``-v`` / ``-q``; the progress lines drawn from a real metrics log file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from hfray.cli import console

WORKER = "(RayTrainWorker pid=7) "


def chatter() -> None:
    """What the command's process prints during a run: hfray's lines, forwarded worker lines, library noise."""
    print("[hfray] run tiny: 2 labels", flush=True)
    print(WORKER + "[hfray] step 3/12 epoch 0.09 loss 0.6935 lr 1.67e-03")
    print(WORKER + "Checkpoint successfully created at: Checkpoint(...)")
    for pid in (7, 8):  # every rank says it resumes; the console says it once
        print(f"(RayTrainWorker pid={pid}) [hfray] resuming from checkpoint /runs/c6 at step 6")
    for _ in range(2):  # a storage outage, retried (hfray.storage.retry) in a one-worker run's task: said once
        print("(hfray-run:tiny pid=9) [hfray] storage: writing s3://b/tiny/m.jsonl failed (OSError), retrying in 1 s")
    print("tokenize train:  50%|#####     | 128/256\rtokenize train: 100%|##########| 256/256", file=sys.stderr)
    print("some library warning", file=sys.stderr)


def routed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **flags: bool) -> tuple[console.Console, str]:
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    with console.routed("train", "tiny", flags.get("verbose", False), flags.get("quiet", False), "eval_acc") as shown:
        chatter()
        metrics = tmp_path / "hfray_metrics.jsonl"
        with console.watching(shown, str(metrics)):
            metrics.write_text(json.dumps({"step": 6, "max_steps": 12, "train_loss": 0.7, "eval_acc": 0.91}) + "\n")
    return shown, shown.log_path.read_text()


def test_default_console_shows_own_lines_and_plain_progress(tmp_path, monkeypatch, capsys):
    shown, log = routed_run(tmp_path, monkeypatch)
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"[hfray] log: {shown.log_path}  (-v streams it here)",
        "[hfray] run tiny: 2 labels",
        "[hfray] resuming from checkpoint /runs/c6 at step 6",
        "[hfray] storage: writing s3://b/tiny/m.jsonl failed (OSError), retrying in 1 s",
    ]
    # not a TTY: one plain line per report, no redraws; the rate since rank 0's step 3 line gives the ETA
    assert re.fullmatch(r"\[hfray\] step 6/12 \(50%\)  loss 0\.7000  eval_acc 0\.9100  eta \d+:\d\d\n", err), err
    for line in ("[hfray] run tiny", WORKER + "[hfray] step 3/12", "Checkpoint successfully", "some library warning"):
        assert log.count(line) == 1, (line, log)
    assert "tokenize train: 100%" in log and "128/256" not in log  # a bar's last state, not its redraws
    assert str(shown.log_path).startswith(str(tmp_path / "logs"))


def test_verbose_streams_everything_and_quiet_only_errors(tmp_path, monkeypatch, capsys):
    routed_run(tmp_path, monkeypatch, verbose=True)
    out, err = capsys.readouterr()
    assert WORKER + "[hfray] step 3/12" in out and "some library warning" in err

    routed_run(tmp_path, monkeypatch, quiet=True)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_error_lines_pass_even_when_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    with console.routed("train", "tiny", False, True, "eval_acc"):
        print("hfray: error: data.train: row 5 has no label", file=sys.stderr)
    assert capsys.readouterr().err == "hfray: error: data.train: row 5 has no label\n"


def test_sweep_console_keeps_tunes_table_and_logs_forwarded_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    with console.routed("sweep", "grid", False, False, "", driver_lines=True) as shown:
        print("Trial status: 1 RUNNING | 1 PENDING")  # Tune's table, printed by this process
        print("(sweep_trial pid=9, ip=10.0.0.2) " + WORKER.strip() + " [hfray] step 3/12 loss 0.7")
        print("\x1b[36m(TrainController pid=5)\x1b[0m Requesting resources")
        # libraries' log records in this process (MLflow's tracking callback, Ray starting the local cluster)
        print("2026/12/05 15:49:49 INFO mlflow.store.db.utils: Creating initial MLflow database tables...")
        print("2026-12-05 15:13:16,258\tINFO worker.py:2038 -- Started a local Ray instance.", file=sys.stderr)
        print("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        print("2026-12-05 15:13:16,258\tWARNING tune.py:1 -- a warning stays", file=sys.stderr)
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["Trial status: 1 RUNNING | 1 PENDING"]
    assert err.splitlines() == ["2026-12-05 15:13:16,258\tWARNING tune.py:1 -- a warning stays"]
    log = shown.log_path.read_text()
    assert "(sweep_trial pid=9" in log and "(TrainController pid=5) Requesting resources" in log
    assert "Creating initial MLflow database tables" in log and "Token authentication is enabled" in log
    assert shown.progress is None
