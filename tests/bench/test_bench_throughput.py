"""The throughput bench's CPU smoke mode (``bench/throughput_bench.py --smoke``), so the bench cannot rot.

It runs the same code as the GPU benchmark: the synthetic corpus, hfray-trained tokenizers, the plain
Trainer baseline in a subprocess and ``hfray train`` as a subprocess on the test's running Ray cluster.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput_bench.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("throughput_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _smoke(tmp_path: Path, workloads: str, gpus: str, runners: str = "plain,hfray") -> dict:
    import ray

    args = argparse.Namespace(
        out=tmp_path,
        smoke=True,
        workloads=workloads,
        gpus=gpus,
        runners=runners,
        hfray_variants="",
        steps=12,
        batch=4,
        seq=32,
        docs=60,
        address=ray.get_runtime_context().gcs_address,
    )
    return _bench_module().run(args)


def _check_row(row: dict, seq: int = 32) -> None:
    assert "error" not in row, row.get("log_tail")
    assert row["samples_per_second"] > 0 and row["steady_steps"] >= 5
    if row["workload"] != "cls":  # packed LM blocks: every sample is one full block; a DPO pair is two
        per_sample = 2 * seq if row["workload"] == "dpo" else seq
        assert row["tokens_per_second"] == pytest.approx(row["samples_per_second"] * per_sample, rel=1e-4)  # rounded
    assert 0 < row["submit_to_first_step_s"] < row["wall_s"]
    assert row["flops_per_token"] > 0 and row["mfu"] is None  # no GPU peak to divide by on CPU
    # every runner's row (hfray's from its manifest) says whether a one-off moved the mean
    assert 0 < row["median_step_s"] <= max(seconds for _, seconds in row["slowest_steps"])


def test_smoke_bench_times_plain_trainer_and_hfray_on_the_same_mlm_work(ray_cluster, tmp_path: Path) -> None:
    result = _smoke(tmp_path, "mlm", "1")
    rows = {r["runner"]: r for r in result["rows"]}
    assert set(rows) == {"plain", "hfray"}
    for row in rows.values():
        _check_row(row)
    # Both count the same model: hfray's MLM head runs on masked positions only, the FLOP count is the same.
    assert rows["hfray"]["flops_per_token"] == rows["plain"]["flops_per_token"]
    assert rows["plain"]["vs_plain_1gpu"] == 1.0 and rows["hfray"]["vs_plain_1gpu"] > 0
    table = (tmp_path / "throughput.md").read_text()
    assert "| mlm | hfray | 1 |" in table and "| mlm | plain | 1 |" in table
    manifest = json.loads(next(tmp_path.glob("cases/mlm-hfray-*/runs/*/artifact/hfray_manifest.json")).read_text())
    assert manifest["throughput"]["steady_state"]["samples_per_second"] == pytest.approx(
        rows["hfray"]["samples_per_second"], rel=1e-3
    )


@pytest.mark.slow
def test_smoke_bench_all_workloads_with_torchrun_and_two_hfray_workers(ray_cluster, tmp_path: Path) -> None:
    result = _smoke(tmp_path, "mlm,clm,cls", "1,2")
    assert {(r["workload"], r["runner"], r["gpus"]) for r in result["rows"]} == {
        (w, r, n) for w in ("mlm", "clm", "cls") for r in ("plain", "hfray") for n in (1, 2)
    }
    for row in result["rows"]:
        _check_row(row)
        if row["gpus"] == 2:
            assert row["scaling_efficiency"] > 0


@pytest.mark.slow  # ~2 min on 2 cores: TRL's DPOTrainer alone and under hfray
def test_smoke_bench_dpo_counts_pairs_alike_in_the_bare_step_trl_and_hfray(ray_cluster, tmp_path: Path) -> None:
    result = _smoke(tmp_path, "dpo", "1", runners="bare,plain,hfray")
    rows = {r["runner"]: r for r in result["rows"]}
    assert set(rows) == {"bare", "plain", "hfray"}
    for row in rows.values():
        _check_row(row)
    # the same FLOPs per token for all three (hfray's model also holds TRL's frozen copy of the adapter)
    assert len({r["flops_per_token"] for r in rows.values()}) == 1
    assert rows["hfray"]["vs_bare_1gpu"] > 0 and rows["hfray"]["vs_plain_1gpu"] > 0


def test_cpu_mode_runs_pretrained_minilm_with_the_cores_shared_out_and_the_same_global_batch(tmp_path: Path) -> None:
    """``--cpu``: plain and hfray load the same pretrained MiniLM; N workers split the cores and the batch."""
    import os

    bench = _bench_module()
    args = argparse.Namespace(smoke=False, cpu=True, steps=30, batch=32, seq=128)
    data = {k: str(tmp_path / k) for k in ("train", "validation", "train_csv", "validation_csv")}
    spec = bench.spec_for("cls", args, data, {})  # no tokenizer trained: MiniLM brings its own
    assert spec["model"] == "builtin:all-MiniLM-L6-v2" and spec["architecture"] is None
    assert (Path(spec["tokenizer"]) / "config.json").is_file()  # the plain script loads the model from it
    cores = os.cpu_count() or 1
    for n in (1, 2):
        job = bench.hfray_job(spec, n, False, tmp_path / "runs", "default")
        assert job["model"] == {"name_or_path": "builtin:all-MiniLM-L6-v2"}
        assert job["resources"] == {"num_workers": n, "cpus_per_worker": max(1, cores // n)}
        assert job["training"]["per_device_train_batch_size"] * n == 32
    smoke = bench.spec_for("cls", argparse.Namespace(smoke=True, steps=12, batch=4, seq=32), data, {"bert": "tok"})
    assert bench.hfray_job(smoke, 2, False, tmp_path, "default")["resources"]["cpus_per_worker"] == 0.5


@pytest.mark.parametrize(
    ("workload", "variant", "training"),
    [
        ("cls", "cudagraphs", {"torch_compile": True, "cuda_graphs": True}),
        ("cls", "cudagraphs-whole", {"torch_compile": True, "cuda_graphs": True, "compile_regions": False}),
        ("cls", "cudagraphs-keepmask", {"torch_compile": True, "cuda_graphs": True, "drop_unpadded_masks": False}),
        ("cls", "nocompile", {"torch_compile": False}),
        (
            "cls",
            "cudagraphs-whole-hf",
            {"compile_regions": False, "dataloader_num_workers": 0, "group_by_length": False},
        ),
        ("mbert", "compile", {"torch_compile": True}),
        ("mbert", "compile-regions", {"torch_compile": True, "compile_regions": True}),
        ("mlm", "compile-exact", {"torch_compile": True}),
    ],
)
def test_variant_names_give_valid_jobs_with_their_keys(tmp_path: Path, workload: str, variant: str, training: dict):
    """A GPU call costs minutes: a variant name the bench maps wrong, or to a job hfray refuses, fails here first."""
    from hfray.config import JobConfig

    bench = _bench_module()
    data = {k: str(tmp_path / f"{k}.csv") for k in ("train_csv", "validation_csv")}
    data |= {"train_ragged_csv": data["train_csv"], "validation_ragged_csv": data["validation_csv"]}
    data |= {"train": str(tmp_path / "t.txt"), "validation": str(tmp_path / "v.txt")}
    spec = {"workload": workload, "architecture": dict(bench.BASE[workload]), "data": data, "steps": 10}
    spec |= {"batch": 8, "seq": 32, "tokenizer": "builtin:all-MiniLM-L6-v2"}
    job = JobConfig.from_dict(bench.hfray_job(spec, 1, True, tmp_path / "runs", variant))
    assert {k: getattr(job.training, k) for k in training} == training
