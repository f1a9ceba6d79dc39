"""The start-up timeline (``hfray.timeline``) and ``bench/overhead_bench.py`` (issue #7's overhead benchmark)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hfray import timeline

BENCH = Path(__file__).resolve().parents[2] / "bench" / "overhead_bench.py"


def _bench_module():
    sys.path.insert(0, str(BENCH.parent))  # it imports its sibling throughput_bench
    spec = importlib.util.spec_from_file_location("overhead_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marks_are_written_only_when_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.jsonl"
    monkeypatch.delenv(timeline.ENV, raising=False)
    timeline.mark("nothing")
    assert not path.exists() and timeline.forwarded_env() == {}
    monkeypatch.setenv(timeline.ENV, str(path))
    timeline.mark("b", "driver", at=2.0)
    timeline.mark("a", "rank0", at=1.0, extra=1)
    assert timeline.forwarded_env() == {timeline.ENV: str(path)}
    rows = timeline.read(str(path))
    assert [(r["phase"], r["role"]) for r in rows] == [("a", "rank0"), ("b", "driver")] and rows[0]["extra"] == 1


def test_each_run_of_a_process_gets_its_own_marks_for_the_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI or trial process's first run starts at its process start; a later run (a reused trial actor, a
    notebook) at its own run start; marks are kept without HFRAY_TIMELINE."""
    monkeypatch.delenv(timeline.ENV, raising=False)
    monkeypatch.setattr(timeline, "_LOCAL", [])
    timeline.mark("earlier", "driver", at=0.5)
    timeline.mark("process_start", "trial", at=1.0)
    timeline.mark("trial_start", "trial", at=3.0)
    timeline.mark("trial_trainer_built", "trial", at=4.5)
    assert [m["phase"] for m in timeline.run_marks()] == ["process_start", "trial_start", "trial_trainer_built"]
    timeline.mark("trial_start", "trial", at=10.0)
    timeline.mark("trial_trainer_built", "trial", at=11.0)
    second = timeline.run_marks()
    assert [m["phase"] for m in second] == ["trial_start", "trial_trainer_built"]
    worker = [{"phase": "first_step_end", "role": "rank0", "t": 12.5}]
    rows = timeline.phases(second + worker)
    assert [(r["phase"], r["s"], r["dt"]) for r in rows] == [
        ("trial_start", 0, 0),
        ("trial_trainer_built", 1.0, 1.0),
        ("first_step_end", 2.5, 1.5),
    ]


def test_bench_summarizes_marks_and_compares_runners() -> None:
    bench = _bench_module()
    marks = [
        {"phase": "driver_imports", "role": "driver", "t": 102.0},
        {"phase": "first_step_end", "role": "rank1", "t": 109.0},
        {"phase": "first_step_end", "role": "rank0", "t": 110.0},
    ]
    summary = bench.summarize(marks, submitted=100.0)
    assert summary["submit_to_first_step_end_s"] == 10.0  # rank 0's, not another rank's
    assert [r["dt_s"] for r in summary["timeline"]] == [2.0, 7.0, 1.0]
    rows = [
        {"workload": "cls", "runner": "plain", **bench.summarize([{**marks[2], "role": "driver", "t": 104}], 100.0)},
        {"workload": "cls", "runner": "hfray", **summary},
    ]
    assert bench.ratios(rows)["cls"] == {
        "plain_s": 4.0,
        "hfray_s": 10.0,
        "hfray_over_plain": 2.5,
        "hfray_minus_plain_s": 6.0,
    }
    table = bench.markdown({"rows": rows, "ratios": bench.ratios(rows)})
    assert "| hfray | rank0 | first_step_end | 10.00 | 1.00 |" in table


@pytest.mark.slow
def test_overhead_bench_times_a_classification_job_on_a_running_cluster(ray_cluster, tmp_path: Path) -> None:
    bench = _bench_module()
    args = bench.parse_args(["--out", str(tmp_path), "--workloads", "cls", "--steps", "2"])
    args.address = ray_cluster.get_runtime_context().gcs_address
    result = bench.run(args)
    rows = {r["runner"]: r for r in result["rows"]}
    assert "error" not in rows["hfray"], rows["hfray"].get("log_tail")
    phases = {(m["role"], m["phase"]) for m in rows["hfray"]["timeline"]}
    # The driver's checks, the worker's set-up and rank 0's first step are all on the timeline.
    assert {("driver", "driver_preflight"), ("rank0", "worker_fn_start"), ("rank0", "first_step_end")} <= phases
    assert result["ratios"]["cls"]["hfray_over_plain"] > 0
    assert json.loads((tmp_path / "overhead.json").read_text())["ratios"] == result["ratios"]
