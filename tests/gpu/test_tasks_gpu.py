"""Token classification, QA and seq2seq on a CUDA GPU: bf16 training on Ray Train, metrics, artifacts that predict.

Run on the GPU machine with ``python -m pytest -m gpu tests/gpu/test_tasks_gpu.py`` (needs seqeval, sacrebleu,
rouge-score and nltk there, besides the bundle). The jobs are tests/test_tasks.py's, on 1 GPU worker with
``training.precision: bf16`` (bf16 logits reach the QA span search and generation goes through bf16).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_tasks import TINY_BART, TOKENIZER, _evals, _files, task_job

from hfray.artifacts.loading import load_artifact_pipeline
from hfray.config import JobConfig
from hfray.train.run import run_training
from task_synthetic import ner_rows, qa_rows, translation_rows

pytestmark = pytest.mark.gpu

GPU = {"resources": {"num_workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 2}}


def _run(tmp_path: Any, task: str, make: Any, n: int, **sections: Any) -> Any:
    files = _files(tmp_path, make, n, 48)
    training = {"precision": "bf16", **sections.pop("training", {})}
    raw = task_job(tmp_path, task, files, training=training, **GPU, **sections)
    return run_training(JobConfig.from_dict(raw))


def test_token_classification_bf16_on_gpu(ray_cluster: Any, tmp_path: Any) -> None:
    summary = _run(tmp_path, "token-classification", ner_rows, 320)
    assert _evals(summary)[-1]["eval_f1"] >= 0.8 and summary.manifest["versions"]["torch"]
    entities = load_artifact_pipeline(summary.artifact, device=0)("then alice smith was seen near tokyo today")
    assert {e["word"] for e in entities} >= {"alice smith", "tokyo"}


def test_question_answering_bf16_on_gpu(ray_cluster: Any, tmp_path: Any) -> None:
    summary = _run(
        tmp_path, "question-answering", qa_rows, 384, question_answering={"doc_stride": 8}, data={"max_length": 40},
        training={"max_steps": 24, "eval_steps": 8},
    )  # fmt: skip
    assert _evals(summary)[-1]["eval_exact_match"] >= 70
    pipe = load_artifact_pipeline(summary.artifact, device=0)
    context = " ".join(["the old big new"] * 12) + " and there was madrid then."
    assert pipe({"question": "which city is named ?", "context": context})["answer"] == "madrid"


def test_seq2seq_bf16_on_gpu_learns_the_mapping(ray_cluster: Any, tmp_path: Any) -> None:
    arch = {**TINY_BART, "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
    summary = _run(
        tmp_path, "seq2seq", translation_rows, 512, model={"architecture": arch, "tokenizer": TOKENIZER},
        seq2seq={"source_column": "en", "target_column": "es", "max_target_length": 16,
                 "generation": {"max_new_tokens": 12}},
        training={"learning_rate": 3e-3, "lr_scheduler_type": "constant", "max_steps": 320, "eval_steps": 160,
                  "per_device_train_batch_size": 32},
    )  # fmt: skip
    assert _evals(summary)[-1]["eval_bleu"] >= 50
    assert load_artifact_pipeline(summary.artifact, device=0)("the red cat")["generated_text"] == "el rojo gato"
