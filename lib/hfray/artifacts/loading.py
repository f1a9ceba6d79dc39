"""Loading an artifact (a local folder or a URI) as a ``transformers.pipeline`` for its task.

Used by ``hfray predict`` (driver) and by Serve replicas for the fine-tuning tasks. Plain artifacts load as
they are; PEFT adapter artifacts load as their base plus the adapter (:mod:`hfray.artifacts.adapters`).
"""

from __future__ import annotations

import tempfile
from typing import Any

from hfray.artifacts.adapters import is_adapter, load_model
from hfray.artifacts.manifest import read_manifest
from hfray.artifacts.onnx_runtime import OnnxTextClassification, is_onnx_artifact
from hfray.storage import fs


def load_artifact_pipeline(artifact: str, device: int | str | None = None) -> Any:
    """A ``transformers.pipeline`` over an artifact (a local dir or URI) for its task."""
    from transformers import pipeline

    manifest = read_manifest(artifact)
    if manifest["task"].startswith("hfray-"):
        import hfray.artifacts.pipelines  # noqa: F401  registers hfray's QA and seq2seq pipelines

    local = fs.download_dir(artifact, tempfile.mkdtemp(prefix="hfray-artifact-"))
    if is_onnx_artifact(local):  # hfray export --onnx: ONNX Runtime on CPU, the pipeline's call and results
        return OnnxTextClassification(local)
    # A PEFT adapter artifact: its base plus the adapter (merged in where it can be), else the folder itself.
    model = load_model(local, manifest, merge=True) if is_adapter(local) else local
    # Task settings the job chose (token aggregation, QA windows, seq2seq source prefix).
    return pipeline(manifest["task"], model=model, tokenizer=local, device=device, **manifest["pipeline_kwargs"])
