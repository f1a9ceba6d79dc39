"""The ONNX Runtime backend of a classification replica: ONNX artifacts (``hfray export --onnx``) on CPU.

:class:`OnnxLoadedModel` has the interface :class:`hfray.serving.replica.models.ModelHost` uses of a loaded
model (``labels``, ``max_length``, ``forward``, ``predict``, ``predict_timed``), so ONNX artifacts get the same
routes, batching, multiplexing and stats as PyTorch ones; the host picks it for a folder holding ``model.onnx``.
ONNX Runtime runs on the CPU whatever the replica's GPUs, with as many threads as Ray gives the replica.
"""

from __future__ import annotations

import time
from typing import Any

from hfray.artifacts.onnx_runtime import OnnxClassifier, is_onnx_artifact, scores_of

__all__ = ["OnnxLoadedModel", "is_onnx_artifact"]


class OnnxLoadedModel:
    """Tokenizer + ONNX Runtime session of one artifact; scores as ``transformers.pipeline`` would."""

    forward = None  # no CUDA-graph buckets: /v1/stats reports none for ONNX models

    def __init__(self, path: str, max_length: int) -> None:
        self.runner = OnnxClassifier(path, max_length=max_length)
        self.labels = self.runner.labels
        self.max_length = self.runner.max_length
        self.device = "cpu"

    def predict(self, texts: list[str], top_ks: list[int]) -> list[list[dict[str, Any]]]:
        return self.predict_timed(texts, top_ks)[0]

    def predict_timed(self, texts: list[str], top_ks: list[int]) -> tuple[list[list[dict[str, Any]]], dict[str, float]]:
        """Predictions and the seconds each step took (the same steps as the PyTorch backend's)."""
        t0 = time.perf_counter()
        feed = self.runner.encode(texts)
        t1 = time.perf_counter()
        scores = scores_of(self.runner.run(feed), self.runner.sigmoid)
        t2 = time.perf_counter()
        k_max = min(max(top_ks), len(self.labels))
        order = (-scores).argsort(axis=-1, kind="stable")[:, :k_max]
        out = [
            [{"label": self.labels[j], "score": float(row[j])} for j in ix[:k]]
            for row, ix, k in zip(scores, order, top_ks, strict=True)
        ]
        return out, {"tokenize": t1 - t0, "forward": t2 - t1, "postprocess": time.perf_counter() - t2}
