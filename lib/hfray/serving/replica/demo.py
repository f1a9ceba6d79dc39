"""The demo page: Gradio at ``<route_prefix>/ui`` of ``hfray serve --ui`` / ``hfray demo``, one tab per model.

The page runs in the ingress replica and calls the HTTP API's own code there (:class:`IngressApi`): the same
request checks, the same batching and the same loaded models as ``POST /v1/classify`` and the LM routes; it
loads nothing itself. Each model's tab gets the widget of its manifest's task (:data:`WIDGETS`):

- text-classification: a text box and label bars (``/v1/classify``),
- fill-mask: a text box and the top-k fillers (``/v1/fill-mask``),
- text-generation (causal-lm, sft, dpo, grpo artifacts): a chat box (``/v1/chat/completions``; artifacts without
  a chat template continue the text through ``/v1/generate``),
- image-classification: an image upload (``/v1/classify-image``),
- token-classification, QA, seq2seq: a text box (and a context) and the JSON answer (``/v1/predict``).

Every widget calls without Gradio's queue (``queue=False``): one plain HTTP request per call, which any ingress
replica can answer, and concurrent users reach the API's batching instead of a Gradio queue of one.

The ingress mounts :class:`DemoMount` at ``/ui`` when its module loads (Serve freezes the FastAPI app then); in a
replica with ``ui: true`` the mount hands requests to this process's :class:`DemoPage`, else it answers 404.
Gradio is imported only there: ``pip install 'hfray[demo]'``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from hfray.errors import HfrayError
from hfray.serving.config import ServeConfig

Api = Callable[[str, dict[str, Any]], Awaitable[Any]]  # (route, JSON body) -> the route's JSON answer
UI_PATH = "/ui"


def require_gradio() -> None:
    """Raise a clear error where the page is asked for and Gradio is missing (before anything starts)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise HfrayError("ui: the demo page needs Gradio: pip install 'hfray[demo]'")


# ----------------------------------------------------------------------------- the API the widgets call


class IngressApi:
    """The HTTP API's handlers of one ingress replica, called with a JSON body as a route would be."""

    def __init__(self, ingress: Any) -> None:
        self.routes: dict[str, Callable[[bytes], Awaitable[Any]]] = {
            "/v1/classify": ingress.classify_body,
            "/v1/predict": ingress.predict_body,
            "/v1/generate": ingress.lm.generate,
            "/v1/chat/completions": ingress.lm.chat,
            "/v1/fill-mask": ingress.lm.fill_mask,
        }
        if hasattr(ingress, "classify_image_body"):  # the image-classification task's route
            self.routes["/v1/classify-image"] = ingress.classify_image_body

    async def __call__(self, route: str, body: dict[str, Any]) -> Any:
        import gradio as gr
        from fastapi import HTTPException

        handler = self.routes.get(route)
        if handler is None:
            raise gr.Error(f"this server has no {route} route")
        try:
            return await handler(json.dumps(body).encode())
        except HTTPException as exc:  # the API's 4xx: show its message, e.g. "inputs[0]: text is empty"
            detail = exc.detail
            raise gr.Error(detail.get("error", str(detail)) if isinstance(detail, dict) else str(detail)) from None


# ----------------------------------------------------------------------------- what each widget sends and shows


def scores(predictions: list[dict[str, Any]], key: str = "label") -> dict[str, float]:
    """``[{label, score}, ...]`` as gr.Label's ``{label: confidence}``."""
    return {str(p[key]): float(p["score"]) for p in predictions}


async def classify_text(api: Api, model_id: str, text: str, top_k: int) -> dict[str, float]:
    out = await api("/v1/classify", {"inputs": text, "top_k": int(top_k), "model": model_id})
    return scores(out["results"][0])


async def fill_mask(api: Api, model_id: str, text: str, top_k: int) -> dict[str, float]:
    out = await api("/v1/fill-mask", {"inputs": text, "top_k": int(top_k), "model": model_id})
    return scores(out["results"][0], key="token_str")


def png_base64(image: Any) -> str:
    """A PIL image as base64 PNG: the body of ``/v1/classify-image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def classify_image(api: Api, model_id: str, image: Any, top_k: int) -> dict[str, float]:
    if image is None:
        raise HfrayError("image: upload an image first")
    out = await api("/v1/classify-image", {"image": png_base64(image), "top_k": int(top_k), "model": model_id})
    return scores(out["results"][0])


def message_text(content: Any) -> str:
    """A Gradio chat message's content (a text, or a list of parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "".join(message_text(part) for part in content or [])


async def chat(api: Api, model_id: str, message: str, history: list[dict[str, Any]], max_tokens: int) -> str:
    """One assistant turn: the chat template renders the conversation; without one, the text is continued."""
    import gradio as gr

    messages = [{"role": m["role"], "content": message_text(m["content"])} for m in history]
    messages.append({"role": "user", "content": message})
    try:
        out = await api("/v1/chat/completions", {"messages": messages, "model": model_id, "max_tokens": max_tokens})
    except gr.Error as exc:
        if "chat template" not in str(exc.message):
            raise
        out = await api("/v1/generate", {"inputs": message, "model": model_id, "max_new_tokens": max_tokens})
        return out["results"][0]["generated_text"]
    return out["choices"][0]["message"]["content"]


async def predict(api: Api, model_id: str, text: str, context: str | None = None) -> Any:
    inputs: Any = text if context is None else {"question": text, "context": context}
    return (await api("/v1/predict", {"inputs": inputs, "model": model_id}))["results"][0]


# ----------------------------------------------------------------------------- task -> widget


def slug(model_id: str) -> str:
    """A model id as an HTML id and a Gradio API name: letters, digits and ``_`` (``demo_alpha``)."""
    return "demo_" + re.sub(r"[^A-Za-z0-9_]", "_", model_id)


def text_classification_widget(api: Api, model_id: str, manifest: dict[str, Any], cfg: ServeConfig) -> None:
    import gradio as gr

    labels = min(len(manifest.get("labels") or []) or 5, cfg.max_top_k)
    text = gr.Textbox(label="Text", lines=3, elem_id=f"{slug(model_id)}-text")
    top_k = gr.Slider(1, labels, value=min(3, labels), step=1, label="Labels shown")
    button = gr.Button("Classify", variant="primary", elem_id=f"{slug(model_id)}-submit")
    label = gr.Label(label="Prediction", elem_id=f"{slug(model_id)}-label")

    async def run(value: str, k: float) -> dict[str, float]:
        return await classify_text(api, model_id, value, int(k))

    gr.on([button.click, text.submit], run, [text, top_k], label, api_name=f"{slug(model_id)}_classify", queue=False)


def fill_mask_widget(api: Api, model_id: str, manifest: dict[str, Any], cfg: ServeConfig) -> None:
    import gradio as gr

    text = gr.Textbox(label="Text with the model's mask token", lines=2, elem_id=f"{slug(model_id)}-text")
    top_k = gr.Slider(1, min(20, cfg.max_top_k), value=min(5, cfg.max_top_k), step=1, label="Fillers shown")
    button = gr.Button("Fill", variant="primary", elem_id=f"{slug(model_id)}-submit")
    label = gr.Label(label="Fillers", elem_id=f"{slug(model_id)}-label")

    async def run(value: str, k: float) -> dict[str, float]:
        return await fill_mask(api, model_id, value, int(k))

    gr.on([button.click, text.submit], run, [text, top_k], label, api_name=f"{slug(model_id)}_fill_mask", queue=False)


def chat_widget(api: Api, model_id: str, manifest: dict[str, Any], cfg: ServeConfig) -> None:
    import gradio as gr

    chatbot = gr.Chatbot(label="Chat", elem_id=f"{slug(model_id)}-chat")
    message = gr.Textbox(label="Message", elem_id=f"{slug(model_id)}-text")
    most = cfg.max_new_tokens  # the server's limit: more is the API's 422
    max_tokens = gr.Slider(1, most, value=min(128, most), step=1, label="Most new tokens")

    async def run(text: str, history: list[dict[str, Any]], k: float) -> tuple[list[dict[str, Any]], str]:
        reply = await chat(api, model_id, text, history or [], int(k))
        turn = [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        return [*(history or []), *turn], ""

    message.submit(
        run, [message, chatbot, max_tokens], [chatbot, message], api_name=f"{slug(model_id)}_chat", queue=False
    )


def image_classification_widget(api: Api, model_id: str, manifest: dict[str, Any], cfg: ServeConfig) -> None:
    import gradio as gr

    labels = min(len(manifest.get("labels") or []) or 5, cfg.max_top_k)
    image = gr.Image(type="pil", label="Image", elem_id=f"{slug(model_id)}-image")
    top_k = gr.Slider(1, labels, value=min(3, labels), step=1, label="Labels shown")
    button = gr.Button("Classify", variant="primary", elem_id=f"{slug(model_id)}-submit")
    label = gr.Label(label="Prediction", elem_id=f"{slug(model_id)}-label")

    async def run(value: Any, k: float) -> dict[str, float]:
        try:
            return await classify_image(api, model_id, value, int(k))
        except HfrayError as exc:
            raise gr.Error(str(exc)) from None

    button.click(run, [image, top_k], label, api_name=f"{slug(model_id)}_classify_image", queue=False)


def predict_widget(api: Api, model_id: str, manifest: dict[str, Any], cfg: ServeConfig) -> None:
    import gradio as gr

    qa = manifest.get("task") == "hfray-question-answering"
    text = gr.Textbox(label="Question" if qa else "Text", lines=2, elem_id=f"{slug(model_id)}-text")
    context = gr.Textbox(label="Context", lines=5, visible=qa)
    button = gr.Button("Predict", variant="primary", elem_id=f"{slug(model_id)}-submit")
    answer = gr.JSON(label="Answer", elem_id=f"{slug(model_id)}-answer")

    async def run(value: str, ctx: str) -> Any:
        return await predict(api, model_id, value, ctx if qa else None)

    button.click(run, [text, context], answer, api_name=f"{slug(model_id)}_predict", queue=False)


Widget = Callable[[Api, str, dict[str, Any], ServeConfig], None]
# The manifest's task -> the widget of its tab. A new task is one entry here.
WIDGETS: dict[str, Widget] = {
    "text-classification": text_classification_widget,
    "fill-mask": fill_mask_widget,
    "text-generation": chat_widget,
    "image-classification": image_classification_widget,
    "token-classification": predict_widget,
    "hfray-question-answering": predict_widget,
    "hfray-seq2seq": predict_widget,
}


def build_blocks(api: Api, manifests: dict[str, dict[str, Any]], cfg: ServeConfig) -> Any:
    """The page: one tab per model id (``manifests``: id -> manifest), each with its task's widget."""
    import gradio as gr

    with gr.Blocks(title="hfray demo") as blocks:
        gr.Markdown("# hfray demo\nEach tab is one served model; the page calls the server's own HTTP API code.")
        with gr.Tabs():
            for model_id, manifest in manifests.items():
                task = manifest.get("task", "text-classification")
                with gr.Tab(f"{model_id} ({task})", id=model_id):
                    widget = WIDGETS.get(task)
                    if widget is None:
                        gr.Markdown(f"No demo widget for the task {task!r} yet.")
                    else:
                        widget(api, model_id, manifest, cfg)
    return blocks


# ----------------------------------------------------------------------------- the page in the ingress replica


class DemoPage:
    """The Gradio app of one ingress replica; Gradio's startup (its queue) runs on the first request."""

    def __init__(self, blocks: Any) -> None:
        import gradio as gr
        from fastapi import FastAPI
        from starlette.routing import Mount

        self.parent = gr.mount_gradio_app(
            FastAPI(), blocks, path=UI_PATH, footer_links=[], run_history=False, show_error=True
        )
        # The Gradio ASGI app itself: the ingress's own mount at /ui hands it the scope the parent's would.
        self.app = next(r.app for r in self.parent.routes if isinstance(r, Mount) and r.path == UI_PATH)
        self.lifespan: Any = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        async with self.lock:
            if self.lifespan is None:
                lifespan = self.parent.router.lifespan_context(self.parent)
                await lifespan.__aenter__()  # kept open for the replica's life
                self.lifespan = lifespan

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.start()
        await self.app(scope, receive, send)


PAGES: dict[str, DemoPage] = {}  # this process's page: one ingress replica per Ray actor process


def attach(ingress: Any) -> None:
    """Build the page of an ingress replica (``ui: true``) from its models; :class:`DemoMount` serves it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a server
    entries = sorted(ingress.catalog.entries(), key=lambda e: e.model_id != ingress.default_model)
    manifests = {entry.model_id: entry.manifest for entry in entries}  # the default model's tab first
    PAGES["page"] = DemoPage(build_blocks(IngressApi(ingress), manifests, ingress.cfg))


class DemoMount:
    """The ASGI app the ingress mounts at ``/ui``: this replica's page, or 404 when the server has none."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = PAGES.get("page")
        if page is not None and scope["type"] in ("http", "websocket"):
            await page(scope, receive, send)
            return
        if scope["type"] == "http":
            from starlette.responses import JSONResponse

            error = {"field": "ui", "error": "ui: this server has no demo page (hfray serve --ui, or hfray demo)"}
            await JSONResponse({"detail": error}, status_code=404)(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
