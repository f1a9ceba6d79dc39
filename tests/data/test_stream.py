"""The Ray Data stream of pre-training jobs: held-out texts read on the driver, and a worker's started shard."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import lm_job, merge_sections
from hfray.config import JobConfig


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "parquet", "csv", "tsv", "jsonl"])
def test_held_out_texts_read_on_the_driver_are_the_rows_ray_data_reads(ray_cluster, tmp_path, news, fmt):
    """A bounded held-out set is read in the driver process: the same rows, in file order, as Ray Data's readers."""
    import gzip

    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    from hfray.data.stream.driver import held_out_texts_here, read_corpus

    texts = ["first line", "", "  ", "ünïcode 東京 🤗", 'a, "quoted" one'] + news["texts"][:30]
    files = []
    for i, part in enumerate((texts[:12], texts[12:])):  # two files: order across files matters too
        path = tmp_path / f"held-{i}.{fmt}"
        table = pa.table({"body": part})
        if fmt.startswith("txt"):
            raw = "\r\n".join(part).encode()  # Windows line ends, blank lines
            path.write_bytes(gzip.compress(raw) if fmt.endswith("gz") else raw)
        elif fmt == "parquet":
            pq.write_table(table, path)
        elif fmt in ("csv", "tsv"):
            pyarrow.csv.write_csv(table, path, pyarrow.csv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
        else:
            path.write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in part))
        files.append(path)
    raw = lm_job(tmp_path, "masked-lm", news["txt"], data={"validation": str(tmp_path / f"held-*.{fmt}")})
    raw["data"].update(text_column="body", max_eval_samples=20)
    job = JobConfig.from_dict(raw)
    mine = held_out_texts_here(job)
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    default, options.preserve_order = options.preserve_order, True  # else blocks of later files may come first
    try:
        ray_rows = read_corpus(job.data.validation, job.data, "data.validation", 0.5).take_all()
    finally:
        options.preserve_order = default
    assert mine == [r["text"] for r in ray_rows][:20] and len(mine) == 20

    # No validation file: the held-out side of the hash split of the training texts, the first 16 of them.
    from hfray.data.lm import in_validation

    job = JobConfig.from_dict(lm_job(tmp_path, "masked-lm", news["txt"]))
    expected = [t for t in news["texts"] if in_validation([t], 0.1, job.data.split_seed)[0]][:16]
    assert held_out_texts_here(job) == expected and len(expected) == 16


def test_a_started_stream_waits_for_its_collator_and_raises_where_the_trainer_iterates(ray_cluster):
    """ShardStream.start pulls epoch 0 early; batches wait for set_collate; a failure surfaces in the loop."""
    import itertools
    import threading

    import numpy as np
    import ray.data

    from hfray.data.stream.worker import ShardStream

    blocks = [{"input_ids": np.full(4, i, dtype=np.int32)} for i in range(6)]
    from ray.data.collate_fn import NumpyBatchCollateFn

    ds = ray.data.from_items(blocks)
    reached, called = threading.Event(), threading.Event()

    class Shard:
        """The real Ray Data iterator; it notes when its first batch reaches the stream's collate step."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def iter_torch_batches(self, collate_fn: Any, **kwargs: Any) -> Any:
            class Noting(NumpyBatchCollateFn):
                def __call__(self, batch: Any) -> Any:
                    reached.set()
                    return collate_fn(batch)

            return self.inner.iter_torch_batches(collate_fn=Noting(), **kwargs)

    def collate(ids):
        called.set()
        return {"rows": [int(row[0]) for row in ids]}

    stream = ShardStream(Shard(ds.iterator()), batch_size=2, shuffle_buffer=0, seed=0)
    # The collator is in place but not announced: a stream that collated before set_collate would call it now.
    stream.collate = collate
    stream.start()
    assert reached.wait(60.0), "the started stream never pulled a batch"
    assert not called.wait(1.0)  # the pulled batch waits for set_collate...
    stream.set_collate(collate)
    assert called.wait(60.0)  # ...which releases it, before anything iterates
    batches = [b["rows"] for b in itertools.islice(iter(stream), 5)]
    assert called.is_set() and sorted(r for b in batches[:3] for r in b) == list(range(6))  # epoch 0: each block once
    assert stream.epoch == 1 and len(batches) == 5  # then on into epoch 1

    failing = ShardStream(ds.iterator(), batch_size=2, shuffle_buffer=0, seed=0)
    failing.start()
    failing.set_collate(lambda ids: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        next(iter(failing))


@pytest.mark.parametrize("materialize", ["auto", "never"])
def test_auto_materialize_reads_the_corpus_once_and_keeps_the_same_blocks(ray_cluster, tmp_path, news, materialize):
    """A run that reads its (small) corpus more than once keeps the tokenized blocks in the object store.

    The outcome: once built, the materialized stream serves epoch after epoch with the corpus file gone (nothing is
    read or tokenized again) and holds exactly the blocks the lazy pipeline makes; the lazy one needs the file.
    """
    import shutil

    from hfray.data.lm import block_digest
    from hfray.data.stream.driver import build_datasets, corpus_bytes, reads_more_than_once
    from hfray.model import loading
    from hfray.model.builtin import resolve_model

    corpus = tmp_path / "corpus.txt"
    shutil.copy(news["txt"], corpus)
    # 1,000 steps of 2 x 16 blocks of 64 tokens: ~8 MB of text at ~4 bytes a token, several passes over this corpus.
    raw = lm_job(tmp_path, "masked-lm", corpus, lm={"materialize": materialize}, training={"max_steps": 1000})
    raw["model"]["tokenizer"] = resolve_model("builtin:all-MiniLM-L6-v2")
    del raw["tokenizer"]  # no tokenizer training: the bundled one
    job = JobConfig.from_dict(raw)
    once = JobConfig.from_dict(merge_sections(raw, {"training": {"max_steps": 40}}))  # ~0.3 MB of ~1 MB: one pass
    assert reads_more_than_once(job, corpus_bytes(str(corpus))) and not reads_more_than_once(
        once, corpus_bytes(str(corpus))
    )
    tokenizer = loading.load_tokenizer(job.model)
    train = build_datasets(job, tokenizer)[0]["train"]
    lazy = build_datasets(JobConfig.from_dict({**raw, "lm": {**raw["lm"], "materialize": "never"}}), tokenizer)[0]
    expected = sorted(block_digest(b) for b in _ids(lazy["train"]))
    corpus.unlink()
    if materialize == "never":
        with pytest.raises(Exception, match="corpus.txt"):
            _ids(train)
        return
    for _epoch in range(2):
        assert sorted(block_digest(b) for b in _ids(train)) == expected and len(expected) > 16


def _ids(ds: Any) -> list[Any]:
    return [row for batch in ds.iter_batches(batch_format="numpy") for row in batch["input_ids"]]
