"""Token classification, extractive QA and seq2seq: real 2-worker Ray Train runs of tiny models.

Each run trains a model built from a config on a small learnable synthetic set (tests/task_synthetic.py),
reports its task metric at every evaluation to hfray_metrics.jsonl, and exports an artifact that loads
with ``transformers.pipeline`` and predicts held-out rows. The checks before Ray name the bad field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_BERT, check_manifest, merge_sections
from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.metrics_log import read_metrics_log
from hfray.cli import main
from hfray.config import JobConfig
from hfray.errors import ConfigError, DataError
from hfray.storage import layout
from hfray.train.run import preflight, run_training
from task_synthetic import ner_rows, qa_rows, translation_rows, write_jsonl

TOKENIZER = "builtin:all-MiniLM-L6-v2"
TINY_BART = {
    "model_type": "bart",
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "max_position_embeddings": 64,
    "dropout": 0.0,  # a model this small learns the mapping several times faster without it
}


def task_job(tmp_path: Path, task: str, files: dict[str, Path], **sections: Any) -> dict[str, Any]:
    """A job of ``task`` that trains in well under a minute on 2 CPU cores; ``sections`` merge over it."""
    job: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "model": {"architecture": dict(TINY_BERT), "tokenizer": TOKENIZER},
        "data": {"train": str(files["train"]), "validation": str(files["validation"]), "max_length": 32},
        "training": {
            "learning_rate": 5e-3,
            "max_steps": 30,
            "per_device_train_batch_size": 16,
            "eval_strategy": "steps",
            "eval_steps": 10,
            "logging_steps": 5,
            # The untrained model's score is the baseline the metric must rise from.
            "extra_args": {"eval_on_start": True},
        },
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0},
    }
    return merge_sections(job, sections)


def _files(tmp_path: Path, make: Any, n_train: int, n_val: int) -> dict[str, Path]:
    return {
        "train": write_jsonl(tmp_path / "train.jsonl", make(n_train, seed=1)),
        "validation": write_jsonl(tmp_path / "validation.jsonl", make(n_val, seed=2)),
    }


def _evals(summary: Any) -> list[dict[str, Any]]:
    log = read_metrics_log(layout.metrics_log_uri(summary.run_dir))
    return [r for r in log if "eval_loss" in r]


def _manifest(summary: Any) -> dict[str, Any]:
    return json.loads((Path(summary.artifact) / layout.MANIFEST).read_text())


# ----------------------------------------------------------------------------- training runs


def test_token_classification_learns_entities_and_pipeline_tags_them(ray_cluster, tmp_path, capsys):
    files = _files(tmp_path, ner_rows, 320, 48)
    summary = run_training(JobConfig.from_dict(task_job(tmp_path, "token-classification", files)))
    evals = _evals(summary)
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy"} <= set(evals[-1])
    assert evals[0]["eval_f1"] < 0.3 and evals[-1]["eval_f1"] >= 0.8  # seqeval entity F1 rose
    manifest = _manifest(summary)
    check_manifest(manifest)
    assert manifest["task"] == "token-classification" and manifest["best"]["metric"] == "f1"
    assert manifest["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]

    from transformers import pipeline

    pipe = pipeline("token-classification", model=summary.artifact, aggregation_strategy="simple")
    entities = pipe("then alice smith was seen near tokyo today")
    found = {(e["entity_group"], e["word"]) for e in entities}
    assert ("PER", "alice smith") in found and ("LOC", "tokyo") in found
    # hfray predict: the same pipeline with the job's aggregation, one JSON line per text.
    capsys.readouterr()
    assert main(["predict", summary.artifact, "robert was seen near cairo"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {(e["entity_group"], e["word"]) for e in line["predictions"]} == {("PER", "robert"), ("LOC", "cairo")}


@pytest.mark.slow  # CI budget (~1.5 min on 2 cores); token classification keeps the runner in the default suite
def test_question_answering_over_windows_learns_spans(ray_cluster, tmp_path, capsys):
    files = _files(tmp_path, qa_rows, 384, 48)
    test_file = write_jsonl(tmp_path / "test.jsonl", qa_rows(32, seed=3, min_words=30, max_words=60))
    raw = task_job(
        tmp_path,
        "question-answering",
        files,
        question_answering={"doc_stride": 8},
        data={"max_length": 40, "test": str(test_file)},
        training={"max_steps": 24, "eval_steps": 8},
    )
    summary = run_training(JobConfig.from_dict(raw))
    evals = _evals(summary)
    assert [r["step"] for r in evals] == [0, 8, 16, 24]
    assert evals[0]["eval_exact_match"] < 20 and evals[-1]["eval_exact_match"] >= 70
    assert evals[-1]["eval_f1"] >= evals[-1]["eval_exact_match"]
    check_manifest(summary.manifest)
    assert summary.manifest["task"] == "hfray-question-answering"
    # The test split (longer contexts: more windows than validation) is scored against its own windows.
    assert summary.metrics["test_exact_match"] >= 70 and summary.manifest["data"]["sizes"]["test"] == 32

    from transformers import pipeline

    import hfray.artifacts.pipelines  # noqa: F401  registers the pipeline

    pipe = pipeline("hfray-question-answering", model=summary.artifact, **_manifest(summary)["pipeline_kwargs"])
    # A context longer than one window (40 tokens): the answer sits in the last window.
    long_context = " ".join(["the old big new"] * 12) + " and there was madrid then."
    assert pipe({"question": "which city is named ?", "context": long_context})["answer"] == "madrid"
    held_out = qa_rows(20, seed=7)
    right = sum(
        pipe({"question": r["question"], "context": r["context"]})["answer"] == r["answers"]["text"][0]
        for r in held_out
    )
    assert right >= 14
    capsys.readouterr()
    assert main(["predict", summary.artifact, "--context", long_context, "which city is named ?"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]["answer"] == "madrid"
    assert main(["predict", summary.artifact, "which city is named ?"]) == 2  # no --context: a clear error


@pytest.mark.slow  # CI budget (~1.5 min on 2 cores); token classification keeps the runner in the default suite
def test_seq2seq_translation_learns_and_generates(ray_cluster, tmp_path):
    files = _files(tmp_path, translation_rows, 512, 32)
    raw = task_job(
        tmp_path,
        "seq2seq",
        files,
        model={"architecture": dict(TINY_BART), "tokenizer": TOKENIZER},
        seq2seq={
            "source_column": "en",
            "target_column": "es",
            "max_target_length": 16,
            "generation": {"max_new_tokens": 12},
        },
        evaluation={"metrics": ["bleu", "chrf", "rougeL"], "metric_for_best_model": "bleu"},
        training={"learning_rate": 1e-2, "max_steps": 40, "eval_steps": 20},
    )
    summary = run_training(JobConfig.from_dict(raw))
    evals = _evals(summary)
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert {"eval_bleu", "eval_chrf", "eval_rougeL", "eval_gen_len"} <= set(evals[-1])
    # 40 steps of a model built from scratch: the loss falls fast, BLEU needs longer (the slow test below).
    assert evals[-1]["eval_loss"] < 0.4 * evals[0]["eval_loss"]
    check_manifest(summary.manifest)
    assert summary.manifest["task"] == "hfray-seq2seq"
    assert summary.manifest["best"]["metric"] == "bleu"

    pipe = load_artifact_pipeline(summary.artifact)
    out = pipe(["the red cat eats", "big dog"])
    assert len(out) == 2 and all(isinstance(o["generated_text"], str) for o in out)
    # The job's generation settings travelled with the artifact.
    assert pipe.model.generation_config.max_new_tokens == 12


# ----------------------------------------------------------------------------- checks before Ray


def test_job_sections_and_metrics_are_checked_per_task(tmp_path):
    files = {"train": tmp_path / "t.jsonl", "validation": tmp_path / "v.jsonl"}
    raw = task_job(
        tmp_path,
        "token-classification",
        files,
        question_answering={"doc_stride": 8},
        token_classification={"tag_column": "ner"},
        evaluation={"metrics": ["f1", "bleu"], "metric_for_best_model": "f1"},
    )
    with pytest.raises(ConfigError) as info:
        JobConfig.from_dict(raw)
    text = str(info.value)
    assert "token_classification.tag_column: unknown key; did you mean 'tags_column'?" in text
    raw["token_classification"] = {"tags_column": "ner"}
    with pytest.raises(ConfigError) as info:
        JobConfig.from_dict(raw)
    text = str(info.value)  # every problem at once, each under its key
    assert "question_answering: only for task 'question-answering'" in text
    assert "evaluation.metrics: unknown ['bleu']; token-classification jobs report any of" in text
    # Each task's defaults: its metrics, the best model by its main one; a section with its column defaults.
    job = JobConfig.from_dict(task_job(tmp_path, "seq2seq", files))
    assert job.evaluation.metrics == ["bleu", "rougeL"] and job.evaluation.best_metric_key == "eval_bleu"
    assert job.seq2seq is not None and job.seq2seq.target_column == "target"
    # text-classification keeps its own metric names.
    with pytest.raises(ConfigError, match="text-classification jobs report any of"):
        JobConfig.from_dict(
            {
                **task_job(tmp_path, "text-classification", files),
                "evaluation": {"metrics": ["bleu"], "metric_for_best_model": "loss"},
            }
        )


@pytest.mark.parametrize(
    ("task", "rows", "section", "message"),
    [
        (
            "token-classification",
            [{"tokens": ["a", "b"], "tags": ["O"]}],
            {},
            "data.train row 0: token_classification.tags_column 'tags' has 1 tags for 2 words",
        ),
        (
            "token-classification",
            [{"tokens": ["a"], "tags": "O"}],
            {},
            "token_classification.tags_column 'tags' must be a list of tags",
        ),
        (
            "token-classification",
            [{"words": ["a"], "tags": ["O"]}],
            {},
            "data.train: no column for token_classification.tokens_column 'tokens'",
        ),
        (
            "token-classification",
            [{"tokens": ["a", "b"], "tags": [0, 1]}],
            {},
            "holds integer tags: give their names in id order as data.labels",
        ),
        (
            "question-answering",
            [{"question": "q", "context": "abc", "answers": {"text": ["b"], "answer_start": [0]}}],
            {},
            "data.train row 0: question_answering.answers_column 'answers' answer 'b' is not at character 0",
        ),
        (
            "question-answering",
            [{"question": "q", "context": "abc", "answers": "b"}],
            {},
            "question_answering.answers_column 'answers' must be a mapping",
        ),
        (
            "seq2seq",
            [{"en": "a b", "es": ""}],
            {"seq2seq": {"source_column": "en", "target_column": "es"}},
            "data.train row 0: seq2seq.target_column 'es' must be non-empty text",
        ),
    ],
)
def test_bad_rows_fail_before_ray_naming_the_field(tmp_path, task, rows, section, message):
    path = write_jsonl(tmp_path / "train.jsonl", rows * 4)
    raw = task_job(tmp_path, task, {"train": path, "validation": path}, **section)
    with pytest.raises(DataError) as info:
        preflight(JobConfig.from_dict(raw))
    assert message in str(info.value)


def test_models_without_the_task_head_fail_before_ray(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", translation_rows(8, seed=0))
    raw = task_job(
        tmp_path,
        "seq2seq",
        {"train": path, "validation": path},
        seq2seq={"source_column": "en", "target_column": "es"},
        model={"architecture": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2}, "tokenizer": TOKENIZER},
    )
    with pytest.raises(Exception, match="model.architecture.model_type: 'gpt2' is not an encoder-decoder"):
        preflight(JobConfig.from_dict(raw))
    # A pretrained encoder-only model is accepted: it warm-starts an encoder-decoder.
    raw["model"] = {"name_or_path": TOKENIZER}
    _, prepared = preflight(JobConfig.from_dict(raw))
    assert prepared.sizes == {"train": 8, "validation": 8}


@pytest.mark.slow
def test_seq2seq_translation_bleu_rises_with_longer_training(ray_cluster, tmp_path):
    """A few hundred steps: the tiny encoder-decoder learns the word mapping, BLEU follows (6 min, 2 busy cores)."""
    files = _files(tmp_path, translation_rows, 512, 32)
    raw = task_job(
        tmp_path,
        "seq2seq",
        files,
        model={
            "architecture": {**TINY_BART, "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
            "tokenizer": TOKENIZER,
        },
        seq2seq={
            "source_column": "en",
            "target_column": "es",
            "max_target_length": 16,
            "generation": {"max_new_tokens": 12},
        },
        training={"learning_rate": 3e-3, "lr_scheduler_type": "constant", "max_steps": 320, "eval_steps": 160},
    )
    summary = run_training(JobConfig.from_dict(raw))
    evals = _evals(summary)
    assert evals[0]["eval_bleu"] < 5 and evals[-1]["eval_bleu"] >= 50
    assert load_artifact_pipeline(summary.artifact)("the red cat")["generated_text"] == "el rojo gato"


def test_sweeps_take_a_task_metric(tmp_path):
    from hfray.tune.plan import sweep_metric
    from hfray.tune.space import check_space

    files = _files(tmp_path, ner_rows, 16, 8)
    sweep = {
        "parameters": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "num_samples": 2,
    }
    job = JobConfig.from_dict(task_job(tmp_path, "token-classification", files, sweep=sweep))
    check_space(job)
    assert sweep_metric(job) == ("eval_f1", "max")
    bad = JobConfig.from_dict(task_job(tmp_path, "token-classification", files, sweep={**sweep, "metric": "eval_bleu"}))
    with pytest.raises(ConfigError, match="token-classification jobs report"):
        sweep_metric(bad)
