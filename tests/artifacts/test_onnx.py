"""``hfray export ARTIFACT --onnx [--int8]`` and ONNX artifacts on CPU: outputs, accuracy, serving, bad input.

The artifact is a real small model trained here (a tiny BERT learning conftest's synthetic sentiment sentences
in a plain PyTorch loop, ~5 s on 2 cores, no Ray), saved as an hfray artifact whose manifest carries the job
(its validation CSV is the run's validation set). The exports run through the CLI as a user would; the checks
load ``model.onnx`` with ONNX Runtime and the PyTorch weights with transformers themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import synthetic_rows, tiny_job, write_csv
from hfray.artifacts.manifest import build_manifest, write_manifest
from hfray.cli import main

ATOL = 1e-4  # fp32 ONNX vs PyTorch logits (observed ~1e-7 on this model; ORT fuses ops in another order)
VALIDATION_ROWS = 400  # one accuracy point = 4 rows


def train_artifact(path: Path, files: dict[str, Path], job: dict[str, Any], steps: int = 80) -> Path:
    """A tiny BERT trained on ``files['train']`` and saved as an hfray artifact with ``job`` in its manifest."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from hfray.config import JobConfig
    from hfray.model.builtin import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2"))
    labels = ["neg", "pos"]
    arch = dict(job["model"]["architecture"])
    config = AutoConfig.for_model(
        arch.pop("model_type"), vocab_size=tokenizer.vocab_size, num_labels=2, **arch,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(config)
    rows = synthetic_rows(512, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        batch = [rows[(step * 16 + i) % len(rows)] for i in range(16)]
        enc = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        target = torch.tensor([labels.index(r["label"]) for r in batch])
        loss = model(**enc, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    job_dict = JobConfig.from_dict(job).to_dict()
    manifest = build_manifest(
        task="text-classification", job=job_dict, run_name="tiny-onnx", metrics={}, best={}, labels=labels
    )
    write_manifest(str(path), manifest)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("onnx")
    files = {
        "train": write_csv(root / "train.csv", synthetic_rows(512, seed=1)),
        "validation": write_csv(root / "validation.csv", synthetic_rows(VALIDATION_ROWS, seed=2)),
    }
    job = tiny_job(root, files)
    artifact = train_artifact(root / "artifact", files, job)
    return {"root": root, "artifact": artifact, "validation": files["validation"], "job": job}


@pytest.fixture(scope="module")
def exported(trained: dict[str, Any]) -> dict[str, Path]:
    art = str(trained["artifact"])
    assert main(["export", art, "--onnx"]) == 0
    assert main(["export", art, "--onnx", "--int8", "--out", str(trained["root"] / "int8")]) == 0
    return {"fp32": Path(art + "-onnx"), "int8": trained["root"] / "int8"}


def validation(trained: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    import csv

    with trained["validation"].open() as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], np.array([["neg", "pos"].index(r["label"]) for r in rows])


def onnx_logits(path: Path, enc: dict[str, Any]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: enc[n].astype(np.int64) for n in names})[0]


def pytorch_logits(path: Path, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="np")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        logits = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    return logits, dict(enc)


def test_onnx_fp32_logits_equal_pytorch(trained: dict[str, Any], exported: dict[str, Path]) -> None:
    texts, _ = validation(trained)
    # Padded batches of uneven texts: the attention mask must reach the exported graph, whatever the batch size.
    for batch in (texts[:1], texts[:7], texts[:VALIDATION_ROWS]):
        ref, enc = pytorch_logits(trained["artifact"], batch)
        got = onnx_logits(exported["fp32"], enc)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # The ONNX artifact holds no PyTorch weights; its config carries the labels.
    assert not (exported["fp32"] / "model.safetensors").exists()
    assert json.loads((exported["fp32"] / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_int8_accuracy_within_one_point_of_fp32(trained: dict[str, Any], exported: dict[str, Path]) -> None:
    texts, labels = validation(trained)
    ref, enc = pytorch_logits(trained["artifact"], texts)
    accuracy = {
        "pytorch_fp32": (ref.argmax(-1) == labels).mean(),
        "onnx_fp32": (onnx_logits(exported["fp32"], enc).argmax(-1) == labels).mean(),
        "onnx_int8": (onnx_logits(exported["int8"], enc).argmax(-1) == labels).mean(),
    }
    assert accuracy["pytorch_fp32"] > 0.8, accuracy  # a model that learned, so the comparison means something
    assert abs(accuracy["onnx_int8"] - accuracy["onnx_fp32"]) <= 0.01, accuracy
    # int8 weights are smaller on disk (embeddings stay fp32 in dynamic quantization of a tiny model).
    assert (exported["int8"] / "model.onnx").stat().st_size < (exported["fp32"] / "model.onnx").stat().st_size
    # The manifests record what was measured here, next to the PyTorch accuracy.
    fp32_metrics = json.loads((exported["fp32"] / "hfray_manifest.json").read_text())["metrics"]
    int8_manifest = json.loads((exported["int8"] / "hfray_manifest.json").read_text())
    assert fp32_metrics["validation_accuracy_pytorch_fp32"] == pytest.approx(accuracy["pytorch_fp32"])
    assert fp32_metrics["validation_accuracy_onnx_fp32"] == pytest.approx(accuracy["onnx_fp32"])
    assert int8_manifest["metrics"]["validation_accuracy_onnx_int8"] == pytest.approx(accuracy["onnx_int8"])
    assert int8_manifest["model"]["onnx"]["precision"] == "int8"


def test_onnx_replica_model_answers_like_the_pipeline(trained: dict[str, Any], exported: dict[str, Path]) -> None:
    """The serving replica's ONNX backend (what ``hfray serve`` loads for an ONNX artifact) in-process."""
    from transformers import pipeline

    from hfray.serving.replica.models import is_encoder
    from hfray.serving.replica.onnx_model import OnnxLoadedModel

    texts, _ = validation(trained)
    texts = texts[:6]
    pipe = pipeline("text-classification", model=str(trained["artifact"]))
    model = OnnxLoadedModel(str(exported["fp32"]), max_length=16)
    got = model.predict(texts, [2] * len(texts))
    want = pipe(texts, top_k=2, truncation=True, max_length=16)
    for g, w in zip(got, want, strict=True):
        assert [p["label"] for p in g] == [p["label"] for p in w]
        assert [p["score"] for p in g] == pytest.approx([p["score"] for p in w], abs=1e-5)
    # /v1/embeddings pools hidden states, which the exported graph does not output: refused (a 4xx), not a 500.
    assert is_encoder(str(trained["artifact"])) and not is_encoder(str(exported["fp32"]))


def test_hfray_predict_on_onnx_artifacts(
    trained: dict[str, Any], exported: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    texts, _ = validation(trained)
    outputs = {}
    for name, path in {"pytorch": trained["artifact"], **exported}.items():
        capsys.readouterr()
        assert main(["predict", str(path), *texts[:5], "--top-k", "2"]) == 0
        outputs[name] = [json.loads(line)["predictions"] for line in capsys.readouterr().out.splitlines()]
    assert len(outputs["pytorch"]) == 5
    for got, want in zip(outputs["fp32"], outputs["pytorch"], strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)
    assert [o[0]["label"] for o in outputs["int8"]] == [o[0]["label"] for o in outputs["pytorch"]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{art}", "--int8"], "--int8: quantization applies to the ONNX export; add --onnx"),
        (["{art}"], "name the format to export to: --onnx"),
        (["{root}/nowhere", "--onnx"], "nowhere: no such artifact"),
        (["{root}/qa", "--onnx"], "ONNX export supports text-classification artifacts"),
        (["{art}-onnx", "--onnx"], "already an ONNX artifact"),
        # A run folder stands for its artifact/ (found, so the next check speaks); never over PyTorch weights.
        (["{root}", "--onnx", "--out", "{art}"], "holds a PyTorch model"),
    ],
)
def test_bad_input_is_one_clear_error(
    trained: dict[str, Any],
    exported: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    root = trained["root"]
    qa = root / "qa"
    if not qa.exists():
        qa.mkdir()
        manifest = build_manifest(
            task="hfray-question-answering", job=trained["job"] | {"task": "question-answering"}, run_name="qa",
            metrics={}, best={},
        )  # fmt: skip
        write_manifest(str(qa), manifest)
    args = [a.format(art=trained["artifact"], root=root) for a in argv]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hfray: error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_hfray_serve_answers_http_classify_with_onnx_artifacts(
    ray_cluster: Any, trained: dict[str, Any], exported: dict[str, Path]
) -> None:
    """Real Serve, real HTTP: ONNX artifacts answer /v1/classify next to the PyTorch one, batched the same way."""
    import asyncio
    import shutil

    import httpx
    from ray import serve

    from hfray.cluster.local import free_port
    from hfray.serving.config import ServeConfig
    from hfray.serving.driver import serve_artifacts, wait_healthy

    root = trained["root"] / "served"
    shutil.copytree(trained["artifact"], root / "pytorch")
    shutil.copytree(exported["fp32"], root / "onnx-fp32")
    shutil.copytree(exported["int8"], root / "onnx-int8")
    texts, labels = validation(trained)
    texts, labels = texts[:24], labels[:24]
    cfg = ServeConfig(
        artifact_root=str(root), default_model="onnx-int8", port=free_port(), max_batch_size=16,
        batch_wait_timeout_s=0.1, num_cpus=0.5, max_length=16,
    )  # fmt: skip
    try:
        url = serve_artifacts(cfg)
        wait_healthy(url)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*[client.post(f"{url}/v1/classify", json={"inputs": [t]}) for t in texts])

        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
        assert {r.json()["model"] for r in responses} == {"onnx-int8"}
        predicted = np.array([["neg", "pos"].index(r.json()["results"][0][0]["label"]) for r in responses])
        assert (predicted == labels).mean() > 0.8
        stats = httpx.get(f"{url}/v1/stats").json()
        assert max(stats["batch_sizes"]) > 1, stats["batch_sizes"]  # the same @serve.batch batching
        both = {
            model: httpx.post(f"{url}/v1/classify", json={"inputs": texts, "top_k": 2, "model": model}, timeout=120)
            for model in ("pytorch", "onnx-fp32")
        }
        assert all(r.status_code == 200 for r in both.values()), {m: r.text for m, r in both.items()}
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": texts[0], "model": "onnx-fp32"}, timeout=60)
        assert refused.status_code == 422 and refused.json()["detail"]["field"] == "model", refused.text
        for got, want in zip(both["onnx-fp32"].json()["results"], both["pytorch"].json()["results"], strict=True):
            assert [p["label"] for p in got] == [p["label"] for p in want]
            assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)
    finally:
        serve.shutdown()
