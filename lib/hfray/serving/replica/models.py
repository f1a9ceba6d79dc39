"""What a serving replica holds: loaded classifiers (LRU), the request batcher and the stats behind /v1/stats.

``ModelHost`` is plain Python so that both topologies use the same code (``ServeConfig.topology``):
``fused``, where the HTTP ingress replica holds the models itself (one hop per request), and ``split``, where
``HfrayClassifier`` replicas hold them behind a separate ingress and Serve routes each request to a replica that
has its model loaded (model multiplexing).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections import deque
from typing import Any

from ray import serve

from hfray.serving.catalog import ArtifactCatalog
from hfray.serving.config import ServeConfig
from hfray.serving.replica.batcher import batched
from hfray.serving.replica.onnx_model import OnnxLoadedModel, is_onnx_artifact

# One request in a batch: (model id, "classify" | "embed", texts, top_k | normalize).
Job = tuple[str, str, list[str], Any]


def torch_placement(cfg: ServeConfig) -> tuple[str, Any]:
    import torch

    on_gpu = cfg.num_gpus > 0 and torch.cuda.is_available()
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = names.get(cfg.dtype) or (torch.bfloat16 if on_gpu else torch.float32)
    return ("cuda" if on_gpu else "cpu"), dtype


class LoadedModel:
    """Tokenizer + model of one artifact; scores exactly as ``transformers.pipeline`` would."""

    def __init__(
        self, path: str, device: str, dtype: Any, max_length: int, graph_rows: int = 0, bucketed: bool | None = None
    ) -> None:
        from transformers import AutoTokenizer

        from hfray.artifacts.adapters import load_model

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # A plain artifact, or a PEFT adapter on its base (LoRA/IA3 merged in for speed).
        self.model = load_model(path, merge=True, dtype=dtype).to(device).eval()
        self.device = device
        cfg = self.model.config
        # Tokenizers often claim 512 tokens for models built with fewer positions; the smallest limit wins.
        positions = getattr(cfg, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, self.tokenizer.model_max_length, positions)
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        # The pipeline's rule: sigmoid for multi-label or single-logit models, softmax otherwise.
        self.sigmoid = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1
        self.forward = self._bucketed_forward(graph_rows, device == "cuda" if bucketed is None else bucketed)

    def _bucketed_forward(self, graph_rows: int, bucketed: bool) -> Any:
        """CUDA graphs on fixed shape buckets when asked for (``graph_rows`` > 0); ``None``: plain eager calls."""
        from hfray.serving.replica.graphs import BucketedForward

        if graph_rows <= 0 or not bucketed:
            return None
        names = [n for n in self.tokenizer(["x"], return_tensors="pt") if n in _forward_inputs(self.model)]
        if "input_ids" not in names:  # e.g. a PEFT wrapper taking **kwargs: keep the plain eager call
            return None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return BucketedForward(self.model, names, pad, graph_rows, self.max_length, capture=self.device == "cuda")

    def predict(self, texts: list[str], top_ks: list[int]) -> list[list[dict[str, Any]]]:
        return self.predict_timed(texts, top_ks)[0]

    def predict_timed(self, texts: list[str], top_ks: list[int]) -> tuple[list[list[dict[str, Any]]], dict[str, float]]:
        """Predictions and the seconds each step took: where a replica's time goes (see /v1/stats)."""
        import torch

        t0 = time.perf_counter()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            if self.forward is not None:
                logits = self.forward(dict(enc))
            else:
                logits = self.model(**self._on_device(enc)).logits.float()
            scores = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
            k_max = min(max(top_ks), len(self.labels))
            values, indices = scores.topk(k_max, dim=-1)
            values, indices = values.cpu().tolist(), indices.cpu().tolist()  # waits for the GPU
        t2 = time.perf_counter()
        out = [
            [{"label": self.labels[j], "score": s} for s, j in zip(vs[:k], ix[:k], strict=True)]
            for vs, ix, k in zip(values, indices, top_ks, strict=True)
        ]
        return out, {"tokenize": t1 - t0, "forward": t2 - t1, "postprocess": time.perf_counter() - t2}

    def _on_device(self, enc: Any) -> dict[str, Any]:
        """The batch on the model's device: pinned host memory and an asynchronous copy on CUDA."""
        if self.device != "cuda":
            return dict(enc)
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in enc.items()}

    def embed_timed(self, texts: list[str], normalizes: list[bool]) -> tuple[list[list[float]], dict[str, float]]:
        """Sentence embeddings as sentence-transformers makes them: the encoder's last hidden states, averaged
        over the real tokens (attention mask), then scaled to length 1 where asked."""
        import torch

        t0 = time.perf_counter()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            batch = self._on_device(enc)
            hidden = self.model.base_model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            scale = torch.tensor(normalizes, device=pooled.device).unsqueeze(-1)
            pooled = torch.where(scale, torch.nn.functional.normalize(pooled, p=2, dim=-1), pooled)
            vectors = pooled.cpu().tolist()
        t2 = time.perf_counter()
        return vectors, {"tokenize": t1 - t0, "forward": t2 - t1, "postprocess": time.perf_counter() - t2}


def is_encoder(path: str) -> bool:
    """Whether the artifact's model is an encoder (BERT-like: it has a masked-LM form), so mean pooling its
    last hidden states gives sentence embeddings; decoders and encoder-decoders do not qualify."""
    import json
    import os

    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from hfray.artifacts.adapters import BASE_DIR

    if is_onnx_artifact(path):  # its graph outputs logits only: no hidden states to pool
        return False
    for folder in (path, os.path.join(path, BASE_DIR)):
        if os.path.isfile(os.path.join(folder, "config.json")):
            with open(os.path.join(folder, "config.json")) as f:
                config = json.load(f)
            decoder = config.get("is_decoder") or config.get("is_encoder_decoder")
            return not decoder and config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return False


def _forward_inputs(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


class ModelHost:
    """Up to ``max_models_per_replica`` artifacts (LRU) and one forward pass per batch of requests."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.catalog = ArtifactCatalog(cfg.artifact_root, cfg.models)
        self.device, self.dtype = torch_placement(cfg)
        self.batch_sizes: deque[int] = deque(maxlen=2000)  # bounded: a long-lived replica must not grow
        self.batches = 0
        self.requests = 0
        self.recent: list[str] = []  # ids only, most recent last: holding models would defeat Serve's eviction
        # What the multiplexed loader really did: each load's model id, and weak references to the loaded
        # models (an evicted model that nothing holds any more is gone from models_in_memory).
        self.model_loads: deque[str] = deque(maxlen=2000)
        self.loaded_refs: list[tuple[str, weakref.ref[Any]]] = []
        self.step_seconds = {"tokenize": 0.0, "forward": 0.0, "postprocess": 0.0}  # summed over batches
        self.graph_info: dict[str, Any] = {}

        # Decorated here, not on a class, because the cache size comes from the config (Ray detects this).
        async def load(model_id: str) -> Any:
            return await self._load(model_id)

        self.get_model = serve.multiplexed(max_num_models_per_replica=cfg.max_models_per_replica)(load)

        self.submit_many = self._batcher()

    def _batcher(self) -> Any:
        """``submit_many(jobs)``: each job joins the batches as one request (``ServeConfig.batcher``)."""
        cfg = self.cfg
        return batched(
            self._run_batch, cfg.batcher, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.max_concurrent_batches
        )

    async def classify(self, model_id: str, texts: list[str], top_k: int) -> list[list[dict[str, Any]]]:
        return (await self.submit_many([(model_id, "classify", texts, top_k)]))[0]

    async def run_jobs(self, jobs: list[Job]) -> list[list[Any]]:
        """Jobs an ingress gathered (split topology): each joins this replica's batches like a request."""
        return await self.submit_many(jobs)

    async def embed(self, model_id: str, texts: list[str], normalize: bool) -> list[list[float]]:
        """Mean-pooled sentence embeddings, batched with the classification requests of the same model."""
        return (await self.submit_many([(model_id, "embed", texts, normalize)]))[0]

    async def _load(self, model_id: str) -> LoadedModel | OnnxLoadedModel:
        # The ingress resolved this id already; resolving again keeps the replica safe if called directly.
        entry = self.catalog.resolve(model_id)
        rows = graph_rows(self.cfg) if self.device == "cuda" else 0
        if is_onnx_artifact(entry.path):  # hfray export --onnx: ONNX Runtime on CPU (serving.replica.onnx_model)
            model = await asyncio.to_thread(OnnxLoadedModel, entry.path, self.cfg.max_length)
        else:
            model = await asyncio.to_thread(LoadedModel, entry.path, self.device, self.dtype, self.cfg.max_length, rows)
        if model.forward is not None:
            self.graph_info[model_id] = model.forward.describe()
        self.model_loads.append(model_id)
        self.loaded_refs = [(m, ref) for m, ref in self.loaded_refs if ref() is not None]
        self.loaded_refs.append((model_id, weakref.ref(model)))
        return model

    def models_in_memory(self) -> list[str]:
        """Ids of the loaded models still alive in this process (after a collection), sorted."""
        gc.collect()
        return sorted(m for m, ref in self.loaded_refs if ref() is not None)

    def _touch(self, model_id: str) -> None:
        """Mirror Serve's LRU so /v1/stats can say which models this replica holds."""
        self.recent = [m for m in self.recent if m != model_id] + [model_id]
        self.recent = self.recent[-self.cfg.max_models_per_replica :]

    async def _run_batch(self, requests: list[Job]) -> list[list[Any]]:
        """One forward pass per model and kind (classify, embed) for all texts of all requests in the batch."""
        self.batches += 1
        self.requests += len(requests)
        self.batch_sizes.append(len(requests))
        out: list[list[Any]] = [[] for _ in requests]
        # Serve splits batches by multiplexed model id only in the split topology; fused batches mix models.
        for model_id, kind in dict.fromkeys((r[0], r[1]) for r in requests):
            members = [i for i, r in enumerate(requests) if (r[0], r[1]) == (model_id, kind)]
            model = await self.get_model(model_id)
            self._touch(model_id)
            texts = [t for i in members for t in requests[i][2]]
            args = [requests[i][3] for i in members for _ in requests[i][2]]
            run = model.predict_timed if kind == "classify" else model.embed_timed
            # In a thread: the event loop keeps queueing the next batch while this one computes.
            flat, seconds = await asyncio.to_thread(run, texts, args)
            for step, spent in seconds.items():
                self.step_seconds[step] += spent
            start = 0
            for i in members:
                n = len(requests[i][2])
                out[i], start = flat[start : start + n], start + n
        return out

    def stats(self) -> dict[str, Any]:
        import torch

        sizes = list(self.batch_sizes)
        return {
            "topology": self.cfg.topology,
            "batches": self.batches,
            "batch_sizes": sizes[-200:],
            "max_batch_size_seen": max(sizes, default=0),
            "max_batch_size": self.cfg.max_batch_size,
            "requests": self.requests,
            # Totals since the replica started; divide by batches for the time per batch.
            "step_seconds": {step: round(spent, 4) for step, spent in self.step_seconds.items()},
            "models_loaded": list(self.recent),
            "model_loads": list(self.model_loads)[-200:],  # ids the multiplexed loader loaded, in order
            "models_in_memory": self.models_in_memory(),
            "device": self.device,
            "cuda_graphs": {m: info for m, info in self.graph_info.items() if m in self.recent},
            "torch_threads": torch.get_num_threads(),  # Ray sets OMP_NUM_THREADS from the replica's num_cpus
            "loop_thread": threading.current_thread().name,  # Serve's user-code thread, or its main loop's
            "time": time.time(),
        }


def graph_rows(cfg: ServeConfig) -> int:
    """Rows of the largest CUDA-graph bucket: a full batch of one-text requests, at most 128 (0: graphs off)."""
    if not cfg.cuda_graphs:
        return 0
    return min(128, 1 << (cfg.max_batch_size - 1).bit_length())
