"""Bad data and storage through the `hfray` command: one `hfray: error:` line naming the row, line or byte, exit
status 2, no traceback, before Ray starts. And flags mix with ``key=value`` overrides in any order.

The command runs in this process (``hfray.cli.main``); these checks come before Ray, so no cluster starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import synthetic_rows, tiny_job, write_csv
from hfray.cli import main


@pytest.fixture
def hfray(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """``hfray ARGS`` in this process: (exit status, stdout, stderr). An escaping exception fails the test."""
    monkeypatch.setenv("RAY_ADDRESS", "")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def one_error(ran: tuple[int, str, str], *needles: str) -> str:
    code, out, err = ran
    assert code == 2, out + err
    assert "Traceback" not in out + err, out + err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("hfray: error:")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err  # nothing of datasets' own logging around it
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def job_with(tmp_path: Path, data_files: dict[str, Path], **sections) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, data_files, **sections)))
    return str(path)


def test_empty_label_cells_name_their_rows(hfray, tmp_path, data_files):
    rows = synthetic_rows(40, seed=3)
    rows[4]["label"] = ""
    rows[17]["label"] = " "
    train = write_csv(tmp_path / "holes.csv", rows)
    job = job_with(tmp_path, data_files, data={"train": str(train)})
    # train, not only validate: the rows are found on the driver, before Ray (the KeyError on workers)
    message = one_error(hfray("train", job, "cluster.overlap_checks=false"), "data.train", "label column 'label'")
    assert "2 rows" in message and "row 5, 18" in message
    assert not (tmp_path / "runs").exists()


def test_nan_labels_in_a_numeric_column(hfray, tmp_path, data_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = synthetic_rows(20, seed=4)
    labels = [float(r["label"] == "pos") for r in rows]
    labels[2] = float("nan")
    train = tmp_path / "numeric.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": labels}), train)
    job = job_with(tmp_path, data_files, data={"train": str(train), "validation": None})
    one_error(hfray("validate", job), "data.train: 1 row without a value", "row 3")


def test_empty_csv(hfray, tmp_path, data_files):
    (tmp_path / "empty.csv").write_text("")
    job = job_with(tmp_path, data_files, data={"train": str(tmp_path / "empty.csv")})
    one_error(hfray("validate", job), "data.train", "empty.csv", "the file is empty")


def test_header_only_csv(hfray, tmp_path, data_files):
    (tmp_path / "header.csv").write_text("text,label\n")
    job = job_with(tmp_path, data_files, data={"validation": str(tmp_path / "header.csv")})
    one_error(hfray("validate", job), "data.validation", "header.csv", "a header line and no rows")


def test_non_utf8_csv_names_the_byte(hfray, tmp_path, data_files):
    (tmp_path / "latin.csv").write_bytes("text,label\ngreat film,pos\ncaf\xe9 dull,neg\n".encode("latin-1"))
    job = job_with(tmp_path, data_files, data={"train": str(tmp_path / "latin.csv")})
    ran = hfray("validate", job)
    message = one_error(ran, "data.train", "not UTF-8: byte 29 (line 3)", "iconv")
    assert "An error occurred" not in message and "UnicodeDecodeError" not in ran[2]  # datasets' own line stays off


def test_malformed_json_line_names_the_line(hfray, tmp_path, data_files):
    lines = [json.dumps(r) for r in synthetic_rows(10, seed=5)]
    lines[6] = '{"text": "a broken row", label: "pos"}'
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    job = job_with(tmp_path, data_files, data={"train": str(tmp_path / "rows.jsonl")})
    one_error(hfray("validate", job), "data.train", "rows.jsonl", "malformed JSON at line 7")


def test_storage_path_that_cannot_be_written(hfray, tmp_path, data_files):
    (tmp_path / "a-file").write_text("not a folder")
    job = job_with(tmp_path, data_files, storage={"path": str(tmp_path / "a-file" / "runs")})
    one_error(hfray("validate", job), "storage.path: cannot write under", "a-file")
    one_error(hfray("train", job, "cluster.overlap_checks=false"), "storage.path: cannot write under")


def test_storage_check_leaves_nothing_behind(hfray, tmp_path, data_files):
    job = job_with(tmp_path, data_files, storage={"path": str(tmp_path / "new" / "runs")})
    code, out, err = hfray("validate", job)
    assert code == 0, err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "order",
    [
        ["validate", "{job}", "--schema-only", "training.max_steps=7", "--print"],
        ["validate", "--print", "training.max_steps=7", "--schema-only"],
        ["validate", "{job}", "training.max_steps=5", "--print", "--schema-only", "training.max_steps=7"],
    ],
)
def test_flags_and_overrides_mix_in_any_order(hfray, tmp_path, data_files, order):
    job = job_with(tmp_path, data_files)
    code, out, err = hfray(*[arg.format(job=job) for arg in order])
    assert code == 0, err
    assert yaml.safe_load(out.split("\nOK:")[0])["training"]["max_steps"] == 7
    assert ("job.yaml" in out) == ("{job}" in order)
