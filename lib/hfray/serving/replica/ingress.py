"""The Serve application: a FastAPI ingress that classifies in batches, itself or through model replicas.

Two topologies (``ServeConfig.topology``): ``fused`` (default), where ``HfrayIngress`` replicas hold the
models and batch requests themselves, one Python hop per request; ``split``, where the ingress forwards to
``HfrayClassifier`` replicas and Serve's model multiplexing sends each request to a replica holding its model.

HTTP API (OpenAPI at ``<route_prefix>/docs``)::

    GET  /healthz         liveness; never needs a token
    GET  /v1/models       the model ids served, with their manifests' task, labels and metrics
    POST /v1/classify     {"inputs": str | [str, ...], "top_k": 1, "model": optional id}
                          -> {"model": id, "results": [[{"label", "score"}, ... top_k], ... one per input]}
    GET  /v1/stats        batch sizes the answering model replica ran, and the models it holds
    POST /v1/predict      token-classification, QA and seq2seq models: see hfray.serving.replica.task_models
    POST /v1/classify-image  image-classification models (multipart or base64): hfray.serving.replica.image_routes

Every client mistake is a 4xx whose JSON ``detail`` has ``field`` (the offending key) and ``error``; the
ingress validates before anything reaches a model replica, so a bad request never costs a forward pass.
"""

# No "from __future__ import annotations": Serve rebuilds the endpoint signatures of a class-based ingress,
# and FastAPI then cannot resolve string annotations such as "Request" (every call would be a 422).

import hmac
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from hfray.artifacts.predict import TASK_PIPELINES
from hfray.serving.catalog import ArtifactCatalog, ModelIdError
from hfray.serving.config import ServeConfig
from hfray.serving.replica import image_routes
from hfray.serving.replica.lm_requests import BODIES
from hfray.serving.replica.lm_routes import LMRoutes
from hfray.serving.replica.models import ModelHost
from hfray.serving.replica.requests import ClassifyRequest, ClassifyResponse, bad_request, parse_classify, read_body
from hfray.serving.replica.task_models import check_inputs, parse_predict_body

app = FastAPI(
    title="hfray serving",
    description="Text classification with hfray artifacts on Ray Serve. Send 'Authorization: Bearer <token>' "
    "to /v1/* when the server was started with an auth token.",
)


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
        return self.host.stats() if self.host is not None else await self.classifier.stats.remote()

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
        if self.host is not None:
            results = await self.host.classify(model_id, texts, top_k)
        else:
            results = await self._classify_handle(model_id).remote(texts, top_k)
        return {"model": model_id, "results": results}

    @app.post("/v1/predict")
    async def predict(self, request: Request) -> dict[str, Any]:
        """Token classification, extractive QA and seq2seq models (see hfray.serving.replica.task_models)."""
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

    @app.post("/v1/classify-image", openapi_extra=image_routes.BODY)
    async def classify_image(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        return await self.images.classify(request)

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

    async def stats(self) -> dict[str, Any]:
        return self.host.stats()
