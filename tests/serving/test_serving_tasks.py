"""``POST /v1/predict`` on Ray Serve for token-classification, QA and seq2seq artifacts: real HTTP requests.

The artifacts are tiny untrained models saved the way hfray exports them (model, tokenizer, manifest): what is
checked is that the server answers exactly what the artifact's pipeline answers locally, and that bad
input is a 4xx naming the field, not what the models learned (tests/test_tasks.py trains them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import TINY_BERT
from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.serving.config import ServeConfig
from hfray.serving.driver import wait_healthy

LABELS = ["B-LOC", "B-PER", "I-PER", "O"]
CONTEXT = " ".join(["the old big new house"] * 20) + " and there was madrid."


def _save(model: Any, tokenizer: Any, path: Path, manifest: dict[str, Any]) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_manifest(str(path), {"format": 1, "name": path.name, "metrics": {}, **manifest})


@pytest.fixture(scope="module")
def task_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartForConditionalGeneration,
        BertConfig,
        BertForQuestionAnswering,
        BertForTokenClassification,
    )

    from hfray.model.builtin import resolve_model

    root = tmp_path_factory.mktemp("task-artifacts")
    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    torch.manual_seed(0)
    bert = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    ner = BertForTokenClassification(
        BertConfig(
            **bert, num_labels=4, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
        )
    )
    _save(
        ner, tok, root / "ner", {"task": "token-classification", "pipeline_kwargs": {"aggregation_strategy": "simple"}}
    )
    qa_kwargs = {"max_length": 40, "doc_stride": 8, "max_answer_length": 5}
    _save(
        BertForQuestionAnswering(BertConfig(**bert)),
        tok,
        root / "qa",
        {"task": "hfray-question-answering", "pipeline_kwargs": qa_kwargs},
    )
    bart = BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.cls_token_id, forced_eos_token_id=tok.sep_token_id,
    )  # fmt: skip
    s2s = BartForConditionalGeneration(bart)
    s2s.generation_config.update(max_new_tokens=6, max_length=None)
    _save(s2s, tok, root / "s2s", {"task": "hfray-seq2seq", "pipeline_kwargs": {"source_prefix": "", "max_length": 32}})
    return root


@pytest.fixture(scope="module")
def server(ray_cluster: Any, task_root: Path) -> Iterator[str]:
    from ray import serve

    from hfray.serving.driver import serve_artifacts

    cfg = ServeConfig(artifact_root=str(task_root), default_model="ner", port=free_port(), num_cpus=0.5)
    try:
        url = serve_artifacts(cfg)
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


def predict(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", json=body, timeout=120)


def test_each_task_answers_as_its_pipeline(server: str, task_root: Path) -> None:
    texts = ["then alice smith was seen near tokyo", "robert went to cairo"]
    got = predict(server, {"inputs": texts})  # the default model: ner
    assert got.status_code == 200, got.text
    from transformers import pipeline

    # The reference is plain transformers on the saved folder, not hfray's loader: label, words and offsets.
    expected = pipeline("token-classification", model=str(task_root / "ner"), aggregation_strategy="simple")(texts)
    spans = [[(e["entity_group"], e["word"], e["start"], e["end"]) for e in r] for r in expected]
    assert [[(e["entity_group"], e["word"], e["start"], e["end"]) for e in r] for r in got.json()["results"]] == spans
    assert {group for r in spans for group, *_ in r} >= {"LOC", "PER"}  # the seeded model tags both kinds
    assert got.json()["task"] == "token-classification"

    question = {"question": "which city is named ?", "context": CONTEXT}
    got = predict(server, {"inputs": [question], "model": "qa"})
    assert got.status_code == 200, got.text
    want = load_artifact_pipeline(str(task_root / "qa"))(question)
    answer = got.json()["results"][0]
    assert (answer["answer"], answer["start"], answer["end"]) == (want["answer"], want["start"], want["end"])
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]

    got = predict(server, {"inputs": "the red cat", "model": "s2s"})
    assert got.status_code == 200, got.text
    assert got.json()["results"] == [load_artifact_pipeline(str(task_root / "s2s"))("the red cat")]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"inputs": "a question without context", "model": "qa"}, 422, "inputs"),
        ({"inputs": [{"question": "q", "context": ""}], "model": "qa"}, 422, "inputs[0].context"),
        ({"inputs": [{"question": "q"}], "model": "qa"}, 422, "inputs[0]"),
        ({"inputs": ["fine", 3]}, 422, "inputs[1]"),
        ({"inputs": []}, 422, "inputs"),
        ({"inputs": "x", "model": "nope"}, 404, "model"),
        ({"inputs": "x", "top_k": 2}, 422, "top_k"),
        ({"text": "x"}, 422, "body"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(server: str, body: Any, status: int, field: str) -> None:
    got = predict(server, body)
    assert got.status_code == status, got.text
    assert got.json()["detail"]["field"] == field


def test_classify_refuses_a_task_model(server: str) -> None:
    got = httpx.post(f"{server}/v1/classify", json={"inputs": "x", "model": "ner"}, timeout=60)
    assert got.status_code == 422 and got.json()["detail"]["field"] == "model"
