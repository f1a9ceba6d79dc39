"""The Serve application: a FastAPI ingress that classifies in batches, itself or through model replicas.

Two topologies (``ServeConfig.topology``): ``fused`` (default), where ``HfrayIngress`` replicas hold the
models and batch requests themselves, one Python hop per request; ``split``, where the ingress forwards to
``HfrayClassifier`` replicas and Serve's model multiplexing sends each request to a replica holding its model.
In ``split``, an ingress gathers requests into one call per model replica while its previous calls are out
(``ingress_batching``, ``ingress_calls_in_flight``), and retries a call whose model replica died on another
one (``call_model``).

HTTP API (OpenAPI at ``<route_prefix>/docs``)::

    GET  /healthz         liveness; never needs a token
    GET  /v1/models       the model ids served, with their manifests' task, labels and metrics
    POST /v1/classify     {"inputs": str | [str, ...], "top_k": 1, "model": optional id}
                          -> {"model": id, "results": [[{"label", "score"}, ... top_k], ... one per input]}
    POST /v1/embeddings   {"input": str | [str, ...], "model": optional id, "normalize": true} (encoder models)
                          -> {"object": "list", "model": id, "data": [{"object": "embedding", "index", "embedding"}]}
    GET  /v1/stats        batch sizes the answering model replica ran, and the models it holds
    POST /v1/predict      token-classification, QA and seq2seq models: see hfray.serving.replica.task_models
    POST /v1/classify-image  image-classification models (multipart or base64): hfray.serving.replica.image_routes

Every client mistake is a 4xx whose JSON ``detail`` has ``field`` (the offending key) and ``error``; the
ingress validates before anything reaches a model replica, so a bad request never costs a forward pass.
``/openapi.json`` states the request models it validates with and every error status
(:mod:`hfray.serving.replica.contract`).
"""

# No "from __future__ import annotations": Serve rebuilds the endpoint signatures of a class-based ingress,
# and FastAPI then cannot resolve string annotations such as "Request" (every call would be a 422).

import asyncio
import hmac
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from hfray.artifacts.predict import TASK_PIPELINES
from hfray.serving.catalog import ArtifactCatalog, ModelIdError
from hfray.serving.config import ServeConfig
from hfray.serving.replica import contract, image_routes
from hfray.serving.replica.batcher import batched
from hfray.serving.replica.contract import ClassifyResponse, EmbeddingsResponse
from hfray.serving.replica.demo import UI_PATH, DemoMount, attach
from hfray.serving.replica.hot_routes import HotRouteMiddleware, HotRoutes, register
from hfray.serving.replica.lm_requests import BODIES
from hfray.serving.replica.lm_routes import LMRoutes
from hfray.serving.replica.models import Job, ModelHost, is_encoder
from hfray.serving.replica.requests import bad_request, parse_body, read_body, task_entry, texts_of
from hfray.serving.replica.task_models import check_inputs, parse_predict_body

app = FastAPI(
    title="hfray serving",
    description="Text classification with hfray artifacts on Ray Serve. Send 'Authorization: Bearer <token>' "
    "to /v1/* when the server was started with an auth token.",
    # Served by the ingress itself, from the request models of its own limits (contract.openapi).
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
app.mount(UI_PATH, DemoMount())  # the Gradio demo page when ui: true (hfray.serving.replica.demo), else 404
# POST /v1/classify and /v1/embeddings without FastAPI's per-request machinery when ServeConfig.hot_routes is on.
app.add_middleware(HotRouteMiddleware)
# split topology: a model replica dying under a request (RayActorError covers ActorDiedError and
# ActorUnavailableError) is retried on another one; classification and embeddings are idempotent.
MODEL_CALL_ATTEMPTS = 4


async def call_model(handle: Any, *args: Any) -> Any:
    """``await handle.remote(*args)``, again on another replica when the one serving it died."""
    for attempt in range(MODEL_CALL_ATTEMPTS):
        try:
            return await handle.remote(*args)
        except RayActorError:
            if attempt == MODEL_CALL_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))  # Serve's router learns of the death meanwhile
    raise AssertionError("unreachable")


# Tasks whose artifacts are encoders with a base model to mean-pool (/v1/embeddings).
EMBEDDING_TASKS = ("text-classification", "fill-mask")


@serve.deployment(name="HfrayIngress")
@serve.ingress(app)
class HfrayIngress:
    """Checks auth and input and picks the model id; then classifies here (fused) or on a model replica (split)."""

    def __init__(
        self,
        classifier: DeploymentHandle | None,
        config: dict[str, Any],
        tasks: DeploymentHandle | None = None,
        lm: DeploymentHandle | None = None,
    ) -> None:
        self.cfg = ServeConfig.from_dict(config)
        # fused topology: this replica holds the models (no second hop); split: HfrayClassifier replicas do.
        self.host = ModelHost(self.cfg) if classifier is None else None
        self.tasks = (
            tasks  # HfrayTaskModels (hfray.serving.replica.task_models): only when the root holds such artifacts
        )
        # A one-second cache: new sweep trials and rewritten manifests still show up within a second.
        self.catalog = ArtifactCatalog(self.cfg.artifact_root, self.cfg.models, ttl_s=1.0)
        self.default_model = self.catalog.default_id(self.cfg.default_model)
        self.lm = LMRoutes(self.cfg, self.catalog, self.default_model, lm)  # hfray.serving.replica.lm_routes
        self.images = image_routes.ImageRoutes(self.cfg, self.catalog, self.default_model)
        self.classifier = classifier
        self.handles: dict[str, DeploymentHandle] = {}
        # The JSON of max_inputs maximal texts, plus room for escapes and the other keys.
        self.body_limit = 6 * self.cfg.max_inputs * self.cfg.max_text_chars + 4096
        self.models = contract.request_models(self.cfg)
        self.gather = self._gatherer() if classifier is not None and self.cfg.ingress_batching else None
        self.openapi_doc: dict[str, Any] | None = None
        if self.cfg.ui:
            attach(self)  # the demo page at /ui calls classify_body, predict_body and self.lm
        hot = {"/v1/classify": self.classify_body, "/v1/embeddings": self.embeddings_body}
        register(HotRoutes(hot, self._authorize, self.body_limit) if self.cfg.hot_routes else None)

    def _auth(self, request: Request) -> None:
        self._authorize(request.headers.get("authorization", ""))

    def _authorize(self, authorization: str) -> None:
        """Raises 401 unless ``authorization`` (the header's value) is the server's bearer token, when it has one."""
        if self.cfg.auth_token is None:
            return
        scheme, _, token = authorization.partition(" ")
        # compare_digest: the time taken must not reveal how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self.cfg.auth_token.encode()):
            raise HTTPException(
                401,
                detail={"field": "Authorization", "error": "Authorization: a valid bearer token is required"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _gatherer(self) -> Any:
        """split topology: requests gathered here into one model call per model id, with at most
        ``ingress_calls_in_flight`` calls out; what arrives meanwhile goes into the next call."""

        async def forward(jobs: list[Job]) -> list[list[Any]]:
            out: list[list[Any]] = [[] for _ in jobs]

            async def one_model(model_id: str) -> None:
                members = [i for i, job in enumerate(jobs) if job[0] == model_id]
                handle = self._model_handle(model_id, "run_jobs")
                for i, result in zip(members, await call_model(handle, [jobs[i] for i in members]), strict=True):
                    out[i] = result

            await asyncio.gather(*(one_model(m) for m in dict.fromkeys(job[0] for job in jobs)))
            return out

        cfg = self.cfg
        # A call leaves when one of ingress_calls_in_flight slots is free (continuous), after the batch wait.
        submit_many = batched(
            forward, cfg.batcher, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.ingress_calls_in_flight
        )

        async def submit(job: Job) -> list[Any]:
            return (await submit_many([job]))[0]

        return submit

    def _model_handle(self, model_id: str, method: str) -> Any:
        """A model replica method routed to replicas holding ``model_id``; kept, since making one costs."""
        key = f"{method}:{model_id}"
        handle = self.handles.get(key)
        if handle is None:
            if len(self.handles) > 1024:
                self.handles.clear()
            handle = self.handles[key] = getattr(self.classifier.options(multiplexed_model_id=model_id), method)
        return handle

    async def _on_model_replica(self, model_id: str, kind: str, texts: list[str], arg: Any) -> Any:
        """split topology: one request's work on a model replica, gathered with others unless told not to."""
        if self.gather is not None:
            return await self.gather((model_id, kind, texts, arg))
        return await call_model(self._model_handle(model_id, kind), texts, arg)

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
        return self.host.stats() if self.host is not None else await self.classifier.stats.remote()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> dict[str, Any]:
        if self.openapi_doc is None:
            hidden = (set() if self.tasks is not None else {"/v1/predict"}) | self.images.hidden() | self.lm.hidden()
            root = request.scope.get("root_path", "")
            self.openapi_doc = contract.openapi(request.app, self.cfg, root, hidden)
        return self.openapi_doc

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="hfray serving")

    def _entry(self, model: str | None, tasks: tuple[str, ...], route: str) -> Any:
        """The catalog entry of ``model`` (default: the server's), refused unless its task is in ``tasks``."""
        return task_entry(self.catalog, model or self.default_model, tasks, route)

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return await self.classify_body(await read_body(request, self.body_limit))

    async def classify_body(self, raw: bytes) -> dict[str, Any]:
        """POST /v1/classify once authorized (the demo page calls it too)."""
        req = parse_body(raw, self.models["/v1/classify"], "inputs")
        model_id = self._entry(req.model, ("text-classification",), "/v1/classify").model_id
        texts = texts_of(req.inputs)
        if self.host is not None:
            results = await self.host.classify(model_id, texts, req.top_k)
        else:
            results = await self._on_model_replica(model_id, "classify", texts, req.top_k)
        return {"model": model_id, "results": results}

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(self, request: Request) -> dict[str, Any]:
        """Sentence embeddings of an encoder artifact: mean-pooled last hidden states, as sentence-transformers."""
        self._auth(request)
        return await self.embeddings_body(await read_body(request, self.body_limit))

    async def embeddings_body(self, raw: bytes) -> dict[str, Any]:
        """POST /v1/embeddings once authorized."""
        req = parse_body(raw, self.models["/v1/embeddings"], "input")
        entry = self._entry(req.model, EMBEDDING_TASKS, "/v1/embeddings")
        if not is_encoder(entry.path):
            raise bad_request(422, "model", f"model: {entry.model_id!r} is not an encoder; embeddings need one")
        texts = texts_of(req.input)
        if self.host is not None:
            vectors = await self.host.embed(entry.model_id, texts, req.normalize)
        else:
            vectors = await self._on_model_replica(entry.model_id, "embed", texts, req.normalize)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {"object": "list", "model": entry.model_id, "data": data}

    @app.post("/v1/predict")
    async def predict(self, request: Request) -> dict[str, Any]:
        """Token classification, extractive QA and seq2seq models (see hfray.serving.replica.task_models)."""
        self._auth(request)
        return await self.predict_body(await read_body(request, self.body_limit))

    async def predict_body(self, raw: bytes) -> dict[str, Any]:
        """POST /v1/predict once authorized (the demo page calls it too)."""
        req = parse_predict_body(raw)
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

    @app.post("/v1/classify-image", openapi_extra=image_routes.BODY)
    async def classify_image(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return await self.images.classify(request)

    async def classify_image_body(self, raw: bytes) -> dict[str, Any]:
        """POST /v1/classify-image with a JSON body, once authorized (the demo page's image tab calls it)."""
        return await self.images.classify_json(raw)

    # Language models: generation, OpenAI chat/completions, fill-mask (hfray.serving.replica.lm_routes).
    @app.post("/v1/generate", openapi_extra=BODIES["generate"])
    async def generate(self, request: Request) -> Any:
        self._auth(request)
        return await self.lm.generate(await read_body(request, self.body_limit))

    @app.post("/v1/chat/completions", openapi_extra=BODIES["chat"])
    async def chat_completions(self, request: Request) -> Any:
        self._auth(request)
        return await self.lm.chat(await read_body(request, self.body_limit))

    @app.post("/v1/completions", openapi_extra=BODIES["completions"])
    async def completions(self, request: Request) -> Any:
        self._auth(request)
        return await self.lm.completions(await read_body(request, self.body_limit))

    @app.post("/v1/fill-mask", openapi_extra=BODIES["fill-mask"])
    async def fill_mask(self, request: Request) -> Any:
        self._auth(request)
        return await self.lm.fill_mask(await read_body(request, self.body_limit))

    @app.get("/v1/lm/stats")
    async def lm_stats(self, request: Request) -> Any:
        self._auth(request)
        return await self.lm.stats()


# ----------------------------------------------------------------------------- the model replica (split topology)


@serve.deployment(name="HfrayClassifier")
class HfrayClassifier:
    """Model replicas of the split topology: Serve routes each request to one that has its model loaded."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.host = ModelHost(ServeConfig.from_dict(config))

    async def classify(self, texts: list[str], top_k: int) -> list[list[dict[str, Any]]]:
        return await self.host.classify(serve.get_multiplexed_model_id(), texts, top_k)

    async def embed(self, texts: list[str], normalize: bool) -> list[list[float]]:
        return await self.host.embed(serve.get_multiplexed_model_id(), texts, normalize)

    async def run_jobs(self, jobs: list[Job]) -> list[list[Any]]:
        return await self.host.run_jobs(jobs)

    async def stats(self) -> dict[str, Any]:
        return self.host.stats()
