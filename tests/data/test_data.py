"""Data loading from every supported source, seeded splits, and the errors users meet."""

from __future__ import annotations

import json

import datasets
import pytest

from conftest import synthetic_rows, write_csv
from hfray.config import DataConfig
from hfray.data.classification import class_weights, prepare
from hfray.errors import DataError


def _rows(n=20, seed=0):
    return synthetic_rows(n, seed)


@pytest.fixture
def files(tmp_path):
    rows = _rows()
    out = {"csv": write_csv(tmp_path / "d.csv", rows)}
    out["jsonl"] = tmp_path / "d.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["json"] = tmp_path / "d.json"
    out["json"].write_text(json.dumps(rows))
    out["parquet"] = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(out["parquet"]))
    out["saved"] = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(out["saved"]))
    return out


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json", "parquet", "saved"])
def test_every_local_format_loads_the_same_rows(files, kind):
    prepared = prepare(DataConfig(train=str(files[kind]), validation_fraction=0.25))
    assert prepared.labels == ["neg", "pos"]
    assert prepared.sizes == {"train": 15, "validation": 5}
    reference = prepare(DataConfig(train=str(files["csv"]), validation_fraction=0.25))
    assert prepared.fingerprint == reference.fingerprint


def test_validation_split_is_seeded(files):
    a = prepare(DataConfig(train=str(files["csv"]), split_seed=1))
    b = prepare(DataConfig(train=str(files["csv"]), split_seed=1))
    c = prepare(DataConfig(train=str(files["csv"]), split_seed=2))
    assert a.splits["validation"]["text"] == b.splits["validation"]["text"]
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_builtin_bbc_news_is_real_and_multiclass():
    prepared = prepare(DataConfig(train="builtin:bbc_news", validation_fraction=0.2))
    assert prepared.labels == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(prepared.sizes.values()) == 2225


def test_builtin_rotten_tomatoes_is_binary():
    prepared = prepare(DataConfig(train="builtin:rotten_tomatoes", max_train_samples=100))
    assert prepared.labels == ["fresh", "rotten"] and prepared.sizes["train"] == 100


def test_missing_column_names_the_field_and_the_columns(files):
    with pytest.raises(DataError) as err:
        prepare(DataConfig(train=str(files["csv"]), text_column="review"))
    assert "data.text_column 'review'" in str(err.value) and "['text', 'label']" in str(err.value)


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(DataError, match="data.train: file or directory not found"):
        prepare(DataConfig(train=str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match="data.validation: no file matches"):
        prepare(DataConfig(train="builtin:bbc_news", validation=str(tmp_path / "*.parquet")))
    with pytest.raises(DataError, match="unknown builtin dataset 'imdb'"):
        prepare(DataConfig(train="builtin:imdb"))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(DataError, match="Hugging Face Hub failed"):
        prepare(DataConfig(train="someone/some-dataset"))


def test_labels_in_validation_must_occur_in_train(tmp_path):
    train = write_csv(tmp_path / "t.csv", _rows())
    val = write_csv(tmp_path / "v.csv", [{"text": "x", "label": "meh"}])
    with pytest.raises(DataError, match=r"data.validation: labels \['meh'\]"):
        prepare(DataConfig(train=str(train), validation=str(val)))


def test_balanced_class_weights_follow_sklearn(tmp_path):
    rows = [{"text": "a", "label": "x"}] * 6 + [{"text": "b", "label": "y"}] * 2
    prepared = prepare(DataConfig(train=str(write_csv(tmp_path / "t.csv", rows)), validation_fraction=0.5))
    train = prepared.splits["train"]
    counts = {lab: train["label"].count(lab) for lab in ["x", "y"]}
    weights = class_weights(train, DataConfig(train="unused"), ["x", "y"])
    assert weights == [len(train) / (2 * counts["x"]), len(train) / (2 * counts["y"])]


def test_the_training_driver_imports_no_datasets_before_it_loads_data(tmp_path):
    """The driver imports hfray's training path, checks paths and connects to Ray before any data is loaded: that
    path must not import ``datasets`` (0.28 s of the driver's imports, measured in isolation on 2 CPUs), which the
    checks thread imports beside the connect (issue 19). Then loading a file through the same module still works."""
    import subprocess
    import sys

    path = write_csv(tmp_path / "d.csv", _rows())
    code = f"""
import sys
import hfray.cli.jobs, hfray.train.run
from hfray.data.sources import check_exists
check_exists({str(path)!r}, "data.train")
assert "datasets" not in sys.modules, "imported before data is loaded"
from hfray.config import DataConfig
from hfray.data.sources import load_source
print(len(load_source({str(path)!r}, DataConfig(train={str(path)!r}), "data.train")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "20"
