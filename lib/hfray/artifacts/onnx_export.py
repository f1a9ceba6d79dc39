"""``hfray export ARTIFACT --onnx [--int8]``: an artifact as an ONNX model for CPU serving, with its accuracy.

The ecosystem's tools do the work: PyTorch's own ONNX exporter (``torch.onnx.export(dynamo=True)``, the
exporter optimum-onnx wraps; optimum-onnx itself pins transformers < 4.58 and does not import under
transformers 5) writes ``model.onnx`` with dynamic batch and sequence axes, and ONNX Runtime's dynamic
quantization (``onnxruntime.quantization.quantize_dynamic``, int8 weights, activations quantized per batch)
makes the int8 variant. The new artifact (default: next to the source, ``<artifact>-onnx`` or
``<artifact>-onnx-int8``) holds ``model.onnx``, the model config, the tokenizer and a manifest whose
``metrics`` give the accuracy on the run's validation set of the PyTorch model and of the exported one(s),
measured here on the same rows with the same tokenization, and whose ``model.onnx`` says how it was made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hfray.artifacts.manifest import read_manifest, write_manifest
from hfray.artifacts.onnx_runtime import ONNX_FILE, OnnxClassifier
from hfray.config import JobConfig
from hfray.errors import ArtifactError, HfrayError
from hfray.storage import fs
from hfray.storage.layout import ARTIFACT_DIR, MANIFEST

SUPPORTED_TASKS = ("text-classification",)
EVAL_BATCH = 32


def default_destination(artifact: str, int8: bool) -> str:
    return artifact.rstrip("/") + ("-onnx-int8" if int8 else "-onnx")


def check_exportable(artifact: str, manifest: dict[str, Any]) -> None:
    """Only tasks hfray can export and serve as ONNX; an ONNX artifact is not exported again."""
    if manifest["task"] not in SUPPORTED_TASKS:
        raise ArtifactError(
            f"{artifact}: a {manifest['task']} artifact (job task {manifest['training_task']}); "
            f"ONNX export supports {', '.join(SUPPORTED_TASKS)} artifacts"
        )
    if (manifest.get("model") or {}).get("onnx"):
        raise ArtifactError(f"{artifact}: already an ONNX artifact; export the PyTorch artifact it came from")


def export_onnx(artifact: str, out: str | None = None, int8: bool = False) -> dict[str, Any]:
    """Export ``artifact`` (a local dir or URI, or a run folder holding ``artifact/``) to ONNX (``int8``: dynamically
    quantized); returns the new artifact's manifest and its location (``artifact``)."""
    if not fs.exists(artifact):
        raise ArtifactError(f"{artifact}: no such artifact")
    if not fs.exists(fs.join(artifact, MANIFEST)) and fs.exists(fs.join(artifact, ARTIFACT_DIR, MANIFEST)):
        artifact = fs.join(artifact, ARTIFACT_DIR)  # a run folder: its exported artifact
    manifest = read_manifest(artifact)
    check_exportable(artifact, manifest)
    dest = out or default_destination(artifact, int8)
    if fs.exists(fs.join(dest, "model.safetensors")):
        raise HfrayError(f"--out {dest}: holds a PyTorch model; choose an empty or ONNX artifact folder")
    job = JobConfig.from_dict(manifest["job"], source="manifest")
    rows = validation_rows(job, manifest["labels"])  # the data first: a missing file fails before the export
    with tempfile.TemporaryDirectory(prefix="hfray-onnx-") as work:
        local = fs.download_dir(artifact, os.path.join(work, "source"))
        stage = os.path.join(work, "stage")
        os.makedirs(stage)
        model, tokenizer = load_pytorch(local, manifest)
        tokenizer.save_pretrained(stage)
        model.config.save_pretrained(stage)
        export_model(model, tokenizer, os.path.join(stage, ONNX_FILE))
        metrics = evaluate(model, stage, rows, job.data.max_length, "onnx_fp32")
        if int8:
            fp32 = os.path.join(work, "fp32.onnx")
            shutil.move(os.path.join(stage, ONNX_FILE), fp32)
            quantize(fp32, os.path.join(stage, ONNX_FILE))
            metrics |= evaluate(None, stage, rows, job.data.max_length, "onnx_int8")
        onnx_manifest = exported_manifest(manifest, artifact, stage, int8, metrics, len(rows["labels"]))
        write_manifest(stage, onnx_manifest)
        fs.upload_dir(stage, dest)
    return {"artifact": dest, **onnx_manifest}


def validation_rows(job: JobConfig, labels: list[str]) -> dict[str, Any]:
    """Texts (and pairs) and label ids of the run's validation split, prepared exactly as training prepared it."""
    from hfray.data.classification import prepare

    data = job.data
    split = prepare(data).splits["validation"]
    label_ids = {label: i for i, label in enumerate(labels)}
    return {
        "texts": [t if t is not None else "" for t in split[data.text_column]],
        "pairs": list(split[data.text_pair_column]) if data.text_pair_column else None,
        "labels": [label_ids[str(v)] for v in split[data.label_column]],
    }


def load_pytorch(local: str, manifest: dict[str, Any]) -> tuple[Any, Any]:
    """The artifact's fp32 model in eval mode (a PEFT adapter merged into its base) and its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from hfray.artifacts.adapters import load_model

    model = load_model(local, manifest, merge=True, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(local)


def export_model(model: Any, tokenizer: Any, path: str) -> None:
    """``torch.onnx.export`` (dynamo) with dynamic batch and sequence axes on every tokenizer input."""
    import inspect
    import warnings

    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    sample = tokenizer(["an example input", "another one"], padding="max_length", max_length=8, return_tensors="pt")
    inputs = {k: v for k, v in sample.items() if k in accepted}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in inputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # axis-name notes and deprecations of the exporter's internals
        program = torch.onnx.export(
            model,
            (),
            kwargs=inputs,
            input_names=list(inputs),
            output_names=["logits"],
            dynamic_shapes=dynamic,
            dynamo=True,
            verbose=False,
        )
    program.save(path)


def quantize(source: str, dest: str) -> None:
    """ONNX Runtime dynamic quantization: int8 weights; activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, dest, weight_type=QuantType.QInt8)


def evaluate(model: Any, stage: str, rows: dict[str, Any], max_length: int, name: str) -> dict[str, float]:
    """Validation accuracy of the ONNX model in ``stage`` (and of the PyTorch ``model`` on the same batches,
    with the largest absolute difference of their logits)."""
    import numpy as np
    import torch

    onnx = OnnxClassifier(stage, max_length=max_length)
    texts, pairs, labels = rows["texts"], rows["pairs"], np.asarray(rows["labels"])
    ort_pred, pt_pred, diff = [], [], 0.0
    for start in range(0, len(texts), EVAL_BATCH):
        part = pairs[start : start + EVAL_BATCH] if pairs is not None else None
        feed = onnx.encode(texts[start : start + EVAL_BATCH], part)
        logits = onnx.run(feed)
        ort_pred.append(logits.argmax(-1))
        if model is not None:
            with torch.inference_mode():
                ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
            pt_pred.append(ref.argmax(-1))
            diff = max(diff, float(np.abs(ref - logits).max()))
    out = {f"validation_accuracy_{name}": float((np.concatenate(ort_pred) == labels).mean())}
    if model is not None:
        out["validation_accuracy_pytorch_fp32"] = float((np.concatenate(pt_pred) == labels).mean())
        out["max_abs_logit_diff_onnx_fp32"] = diff
    return out


def exported_manifest(
    manifest: dict[str, Any], source: str, stage: str, int8: bool, metrics: dict[str, float], rows: int
) -> dict[str, Any]:
    """The source's manifest, its metrics joined by the export's, and ``model.onnx``: how the model was made."""
    from importlib.metadata import version

    import onnx

    proto = onnx.load(os.path.join(stage, ONNX_FILE), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    info = {
        "file": ONNX_FILE,
        "precision": "int8" if int8 else "fp32",
        "exporter": f"torch.onnx.export(dynamo=True), torch {version('torch')}, onnxscript {version('onnxscript')}",
        "quantization": f"onnxruntime {version('onnxruntime')} quantize_dynamic QInt8" if int8 else None,
        "opset": opset,
        "runtime": "onnxruntime CPUExecutionProvider",
        "source_artifact": source,
        "validation_rows": rows,
    }
    out = dict(manifest)
    out["metrics"] = {**manifest["metrics"], **metrics}
    out["model"] = {**(manifest.get("model") or {}), "onnx": info}
    out["versions"] = {**manifest.get("versions", {}), "onnx": version("onnx"), "onnxruntime": version("onnxruntime")}
    return out
