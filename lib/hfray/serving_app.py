"""The Serve application: a FastAPI ingress in front of a batched, multiplexed classifier deployment.

HTTP API (OpenAPI at ``<route_prefix>/docs``)::

    GET  /healthz         liveness; never needs a token
    GET  /v1/models       the model ids served, with their manifests' task, labels and metrics
    POST /v1/classify     {"inputs": str | [str, ...], "top_k": 1, "model": optional id}
                          -> {"model": id, "results": [[{"label", "score"}, ... top_k], ... one per input]}
    GET  /v1/stats        batch sizes the answering model replica ran, and the models it holds
    POST /v1/predict      token-classification, QA and seq2seq models: see hfray.serving_tasks

Every client mistake is a 4xx whose JSON ``detail`` has ``field`` (the offending key) and ``error``; the
ingress validates before anything reaches a model replica, so a bad request never costs a forward pass.
"""

# No "from __future__ import annotations": Serve rebuilds the endpoint signatures of a class-based ingress,
# and FastAPI then cannot resolve string annotations such as "Request" (every call would be a 422).

import asyncio
import hmac
import json
import time
from collections import deque
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from hfray.serving_config import ArtifactCatalog, ModelIdError, ServeConfig

app = FastAPI(
    title="hfray serving",
    description="Text classification with hfray artifacts on Ray Serve. Send 'Authorization: Bearer <token>' "
    "to /v1/* when the server was started with an auth token.",
)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: StrictStr | list[StrictStr] = Field(description="One text or a list of texts.")
    top_k: StrictInt = Field(1, ge=1, description="Labels per input, best first (capped at the label count).")
    model: StrictStr | None = Field(None, description="Model id from GET /v1/models; default: the server's.")


class Prediction(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    results: list[list[Prediction]]


def bad_request(status: int, field: str, error: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"field": field, "error": error})


def first_problem(exc: ValidationError) -> HTTPException:
    """The most specific problem as a 4xx naming the field, e.g. ``inputs[1]`` for a number in the list."""

    def where(err: Any) -> list[Any]:
        # Pydantic names union branches ("list[str]", "str") in the location; users only know their keys.
        return [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int")))]

    err = max(exc.errors(), key=lambda e: len(where(e)))  # the branch that got furthest into the value
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in where(err)).lstrip(".") or "body"
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return bad_request(422, field, f"{field}: {message}")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes even when the client sends no Content-Length."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise bad_request(413, "body", f"body: {declared} bytes is more than the {limit} allowed")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise bad_request(413, "body", f"body: more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_classify(raw: bytes, cfg: ServeConfig) -> tuple[list[str], int, str | None]:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(400, "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(422, "body", "body: expected a JSON object with 'inputs'")
    try:
        req = ClassifyRequest.model_validate(body)  # strict types: "2" is not a top_k, 3 is not a text
    except ValidationError as exc:
        raise first_problem(exc) from None
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise bad_request(422, "inputs", "inputs: give at least one text")
    if len(texts) > cfg.max_inputs:
        raise bad_request(413, "inputs", f"inputs: {len(texts)} texts; at most {cfg.max_inputs} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise bad_request(422, f"inputs[{i}]", f"inputs[{i}]: text is empty")
        if len(text) > cfg.max_text_chars:
            raise bad_request(413, f"inputs[{i}]", f"inputs[{i}]: {len(text)} characters; at most {cfg.max_text_chars}")
    if req.top_k > cfg.max_top_k:
        raise bad_request(422, "top_k", f"top_k: at most {cfg.max_top_k}")
    return texts, req.top_k, req.model


@serve.deployment(name="HfrayIngress")
@serve.ingress(app)
class HfrayIngress:
    """Checks auth and input, picks the model id, and routes to the replica that has that model loaded."""

    def __init__(
        self, classifier: DeploymentHandle, config: dict[str, Any], tasks: DeploymentHandle | None = None
    ) -> None:
        self.cfg = ServeConfig.from_dict(config)
        self.tasks = tasks  # HfrayTaskModels (hfray.serving_tasks): only when the root holds such artifacts
        # A one-second cache: new sweep trials and rewritten manifests still show up within a second.
        self.catalog = ArtifactCatalog(self.cfg.artifact_root, self.cfg.models, ttl_s=1.0)
        self.default_model = self.catalog.default_id(self.cfg.default_model)
        self.classifier = classifier
        self.handles: dict[str, DeploymentHandle] = {}
        # The JSON of max_inputs maximal texts, plus room for escapes and the other keys.
        self.body_limit = 6 * self.cfg.max_inputs * self.cfg.max_text_chars + 4096

    def _auth(self, request: Request) -> None:
        if self.cfg.auth_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.cfg.auth_token.encode()):
            raise HTTPException(
                401,
                detail={"field": "Authorization", "error": "Authorization: a valid bearer token is required"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _classify_handle(self, model_id: str) -> DeploymentHandle:
        """The handle routing to replicas holding ``model_id``; kept, since making one costs per request."""
        handle = self.handles.get(model_id)
        if handle is None:
            if len(self.handles) > 1024:
                self.handles.clear()
            handle = self.handles[model_id] = self.classifier.options(multiplexed_model_id=model_id).classify
        return handle

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return {"default": self.default_model, "models": [e.describe() for e in self.catalog.entries()]}

    @app.get("/v1/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return await self.classifier.stats.remote()

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        # The body is read by hand (size cap before parsing); this keeps its schema in the OpenAPI docs.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
            }
        },
    )
    async def classify(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        texts, top_k, model = parse_classify(await read_body(request, self.body_limit), self.cfg)
        model_id = model or self.default_model
        try:
            entry = self.catalog.resolve(model_id)
        except ModelIdError as exc:
            raise bad_request(exc.status, "model", str(exc)) from None
        if entry.manifest.get("task", "text-classification") != "text-classification":
            raise bad_request(422, "model", f"model: {model_id!r} is a {entry.manifest['task']} model")
        results = await self._classify_handle(model_id).remote(texts, top_k)
        return {"model": model_id, "results": results}

    @app.post("/v1/predict")
    async def predict(self, request: Request) -> dict[str, Any]:
        """Token classification, extractive QA and seq2seq models (see hfray.serving_tasks)."""
        from hfray.serving_tasks import check_inputs, parse_predict_body
        from hfray.tasks.predict import TASK_PIPELINES

        self._auth(request)
        req = parse_predict_body(await read_body(request, self.body_limit))
        model_id = req.model or self.default_model
        try:
            entry = self.catalog.resolve(model_id)
        except ModelIdError as exc:
            raise bad_request(exc.status, "model", str(exc)) from None
        task = entry.manifest.get("task", "text-classification")
        if task not in TASK_PIPELINES or self.tasks is None:
            raise bad_request(422, "model", f"model: {model_id!r} is a {task} model (use /v1/classify)")
        inputs = check_inputs(req.inputs, task, self.cfg)
        results = await self.tasks.options(multiplexed_model_id=model_id).predict.remote(inputs)
        return {"model": model_id, "task": task, "results": results}


# ----------------------------------------------------------------------------- the model replica


def torch_placement(cfg: ServeConfig) -> tuple[str, Any]:
    import torch

    on_gpu = cfg.num_gpus > 0 and torch.cuda.is_available()
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = names.get(cfg.dtype) or (torch.bfloat16 if on_gpu else torch.float32)
    return ("cuda" if on_gpu else "cpu"), dtype


class LoadedModel:
    """Tokenizer + model of one artifact; scores exactly as ``transformers.pipeline`` would."""

    def __init__(self, path: str, device: str, dtype: Any, max_length: int) -> None:
        from transformers import AutoTokenizer

        from hfray.adapters import load_model

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

    def predict(self, texts: list[str], top_ks: list[int]) -> list[list[dict[str, Any]]]:
        return self.predict_timed(texts, top_ks)[0]

    def predict_timed(self, texts: list[str], top_ks: list[int]) -> tuple[list[list[dict[str, Any]]], dict[str, float]]:
        """Predictions and the seconds each step took: where a replica's time goes (see /v1/stats)."""
        import torch

        t0 = time.perf_counter()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(**enc.to(self.device)).logits.float()
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


@serve.deployment(name="HfrayClassifier")
class HfrayClassifier:
    """Holds up to ``max_models_per_replica`` artifacts (LRU) and runs one forward pass per batch of requests."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.from_dict(config)
        self.catalog = ArtifactCatalog(self.cfg.artifact_root, self.cfg.models)
        self.device, self.dtype = torch_placement(self.cfg)
        self.batch_sizes: deque[int] = deque(maxlen=2000)  # bounded: a long-lived replica must not grow
        self.batches = 0
        self.requests = 0
        self.recent: list[str] = []  # ids only, most recent last: holding models would defeat Serve's eviction

        # Decorated here, not on the class, because the cache size comes from the config (Ray detects
        # this). A plain function, not the bound method: Serve keeps its LRU cache as an attribute on it.
        async def load(model_id: str) -> LoadedModel:
            return await self._load(model_id)

        self.get_model = serve.multiplexed(max_num_models_per_replica=self.cfg.max_models_per_replica)(load)

        # The same for batching, whose max_concurrent_batches has no setter.
        async def run_batch(requests: list[tuple[str, list[str], int]]) -> list[list[list[dict[str, Any]]]]:
            return await self._run_batch(requests)

        self._batch = serve.batch(
            max_batch_size=self.cfg.max_batch_size,
            batch_wait_timeout_s=self.cfg.batch_wait_timeout_s,
            max_concurrent_batches=self.cfg.max_concurrent_batches,
        )(run_batch)
        self.step_seconds = {"tokenize": 0.0, "forward": 0.0, "postprocess": 0.0}  # summed over batches

    async def _load(self, model_id: str) -> LoadedModel:
        # The ingress resolved this id already; resolving again keeps the replica safe if called directly.
        entry = self.catalog.resolve(model_id)
        return await asyncio.to_thread(LoadedModel, entry.path, self.device, self.dtype, self.cfg.max_length)

    def _touch(self, model_id: str) -> None:
        """Mirror Serve's LRU so /v1/stats can say which models this replica holds."""
        self.recent = [m for m in self.recent if m != model_id] + [model_id]
        self.recent = self.recent[-self.cfg.max_models_per_replica :]

    async def classify(self, texts: list[str], top_k: int) -> list[list[dict[str, Any]]]:
        return await self._batch((serve.get_multiplexed_model_id(), texts, top_k))

    async def _run_batch(self, requests: list[tuple[str, list[str], int]]) -> list[list[list[dict[str, Any]]]]:
        """One forward pass per model for all texts of all requests in the batch."""
        self.batches += 1
        self.requests += len(requests)
        self.batch_sizes.append(len(requests))
        out: list[list[list[dict[str, Any]]]] = [[] for _ in requests]
        # Serve 2.60 already splits batches by model id; grouping again keeps this correct if that changes.
        for model_id in dict.fromkeys(r[0] for r in requests):
            members = [i for i, r in enumerate(requests) if r[0] == model_id]
            model = await self.get_model(model_id)
            self._touch(model_id)
            texts = [t for i in members for t in requests[i][1]]
            top_ks = [requests[i][2] for i in members for _ in requests[i][1]]
            # In a thread: the event loop keeps queueing the next batch while this one computes.
            flat, seconds = await asyncio.to_thread(model.predict_timed, texts, top_ks)
            for step, spent in seconds.items():
                self.step_seconds[step] += spent
            start = 0
            for i in members:
                n = len(requests[i][1])
                out[i], start = flat[start : start + n], start + n
        return out

    async def stats(self) -> dict[str, Any]:
        import torch

        sizes = list(self.batch_sizes)
        return {
            "batches": self.batches,
            "batch_sizes": sizes[-200:],
            "max_batch_size_seen": max(sizes, default=0),
            "max_batch_size": self.cfg.max_batch_size,
            "requests": self.requests,
            # Totals since the replica started; divide by batches for the time per batch.
            "step_seconds": {step: round(spent, 4) for step, spent in self.step_seconds.items()},
            "models_loaded": list(self.recent),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),  # Ray sets OMP_NUM_THREADS from the replica's num_cpus
            "time": time.time(),
        }
