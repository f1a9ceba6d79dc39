"""The tokenized-data cache (issue 19): a second preparation of the same data tokenizes nothing, and a changed data
file, tokenizer or max_length misses. Real CSV files, the real MiniLM tokenizer, ``datasets`` on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import synthetic_rows, write_csv
from hfray.config import DataConfig
from hfray.data import classification
from hfray.data.cache import cache_root
from hfray.model.builtin import resolve_model


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))


def test_second_run_reads_the_cache_and_changes_miss(tmp_path: Path, tokenizer, monkeypatch) -> None:
    calls: list[int] = []
    real = classification.tokenize_for_classification

    def counting(splits, tok, cfg, labels):
        calls.append(sum(len(ds) for ds in splits.values()))
        return real(splits, tok, cfg, labels)

    monkeypatch.setattr(classification, "tokenize_for_classification", counting)
    train = write_csv(tmp_path / "train.csv", synthetic_rows(40, seed=1))
    storage = str(tmp_path / "runs")
    root = Path(cache_root(storage))

    def tokenize(cfg: DataConfig, tok=tokenizer):
        prepared = classification.prepare(cfg)
        return classification.tokenize_cached(prepared, tok, cfg, prepared.labels, storage)

    cfg = DataConfig(train=str(train), max_length=16)
    first = tokenize(cfg)
    assert len(calls) == 1 and len(list(root.iterdir())) == 1
    second = tokenize(cfg)  # a re-run, another worker or a trial on the same data
    assert len(calls) == 1, "the second preparation tokenized again"
    assert str(root) in second["train"].cache_files[0]["filename"]  # read from the cache (memory-mapped Arrow)
    for split in first:
        assert second[split]["input_ids"] == first[split]["input_ids"]
        assert second[split]["labels"] == first[split]["labels"]

    tokenize(DataConfig(train=str(train), max_length=12))  # max_length changed
    assert len(calls) == 2
    changed = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)  # same path, another vocabulary
    changed.add_tokens(["plot"])
    retokenized = tokenize(cfg, changed)
    assert len(calls) == 3
    new_id = changed.convert_tokens_to_ids("plot")  # the new ids, not a stale copy of the old tokenization
    assert any(new_id in ids for ids in retokenized["train"]["input_ids"])
    rows = synthetic_rows(40, seed=1)
    rows[3]["text"] += " plot"  # one edited row of the data file
    write_csv(train, rows)
    tokenize(cfg)
    assert len(calls) == 4 and len(list(root.iterdir())) == 4
    tokenize(cfg)
    assert len(calls) == 4  # the edited file's entry is reused in turn


def test_no_cache_when_turned_off_or_storage_is_remote(tmp_path: Path, tokenizer) -> None:
    train = write_csv(tmp_path / "train.csv", synthetic_rows(20, seed=1))
    cfg = DataConfig(train=str(train), max_length=16, cache_tokenized=False)
    prepared = classification.prepare(cfg)
    classification.tokenize_cached(prepared, tokenizer, cfg, prepared.labels, str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()
    assert cache_root("s3://bucket/runs") is None
