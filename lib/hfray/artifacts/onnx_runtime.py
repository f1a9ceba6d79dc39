"""Running an ONNX artifact (``hfray export --onnx``) on CPU with ONNX Runtime.

An ONNX artifact is an artifact folder whose model is ``model.onnx`` (fp32, or int8 weights after dynamic
quantization) next to the model's ``config.json`` (labels, problem type), its tokenizer and the manifest; it has
no PyTorch weights. :class:`OnnxClassifier` tokenizes exactly as the PyTorch path does (padding, truncation to
the smaller of the requested length, the tokenizer's and the model's positions) and returns logits as numpy.
Used by the export (accuracy on the validation set) and by ``hfray serve`` replicas
(:mod:`hfray.serving.replica.onnx_model`).
"""

from __future__ import annotations

import os
from typing import Any

ONNX_FILE = "model.onnx"


def is_onnx_artifact(path: str) -> bool:
    """A local artifact folder holding an ONNX model."""
    return os.path.isfile(os.path.join(path, ONNX_FILE))


def session_threads() -> int:
    """Intra-op threads: the replica's CPU share as Ray sets it (``OMP_NUM_THREADS``); 0 lets ORT choose."""
    try:
        return max(int(os.environ.get("OMP_NUM_THREADS", "0")), 0)
    except ValueError:
        return 0


class OnnxClassifier:
    """Tokenizer + ONNX Runtime session of a sequence-classification model; :meth:`logits` per batch of texts."""

    def __init__(self, path: str, max_length: int = 512, threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.config = AutoConfig.from_pretrained(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
        self.session = ort.InferenceSession(os.path.join(path, ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        positions = getattr(self.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, self.tokenizer.model_max_length, positions)
        self.labels = [self.config.id2label[i] for i in range(self.config.num_labels)]
        # transformers.pipeline's rule: sigmoid for multi-label or single-logit models, softmax otherwise.
        self.sigmoid = self.config.problem_type == "multi_label_classification" or self.config.num_labels == 1

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, Any]:
        """The session's inputs for ``texts`` (int64 numpy arrays, padded to the longest)."""
        enc = self.tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        return {name: enc[name].astype("int64") for name in self.input_names}

    def run(self, feed: dict[str, Any]) -> Any:
        return self.session.run(None, feed)[0]

    def logits(self, texts: list[str], pairs: list[str] | None = None) -> Any:
        return self.run(self.encode(texts, pairs))


def scores_of(logits: Any, sigmoid: bool) -> Any:
    """Class scores from logits (numpy, float64 for a stable softmax), as ``transformers.pipeline`` gives them."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-x))
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxTextClassification:
    """An ONNX artifact where ``hfray predict`` expects a ``transformers.pipeline("text-classification")``:
    ``pipe(texts, top_k=k)`` -> one list of ``{label, score}`` per text, best first."""

    task = "text-classification"

    def __init__(self, path: str) -> None:
        self.runner = OnnxClassifier(path)

    def __call__(self, texts: list[str], top_k: int = 1) -> list[list[dict[str, Any]]]:
        scores = scores_of(self.runner.logits(list(texts)), self.runner.sigmoid)
        k = min(top_k, len(self.runner.labels))
        order = (-scores).argsort(axis=-1, kind="stable")[:, :k]
        return [
            [{"label": self.runner.labels[j], "score": float(row[j])} for j in ix]
            for row, ix in zip(scores, order, strict=True)
        ]
