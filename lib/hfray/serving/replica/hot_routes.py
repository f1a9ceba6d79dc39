"""The hot routes (``POST /v1/classify``, ``/v1/embeddings``) answered by a plain ASGI middleware, ahead of
FastAPI's routing, exception middlewares, per-request dependency solving and ``response_model`` re-validation.

Why: at thousands of requests per second a serving replica is CPU-bound on Python per request (issue 26). The
routes' work is the same either way: the same auth check, the same body limit, the same request models
(:mod:`hfray.serving.replica.contract`), the same handler and the same 4xx bodies (``{"detail": {"field",
"error"}}`` with FastAPI's status and headers); only the framework around them is skipped. Every other
request, and these routes while no ingress has registered (``ServeConfig.hot_routes`` false), goes on to FastAPI,
so ``/openapi.json`` still documents them from their FastAPI declarations.

The middleware is added to the FastAPI app where it is declared; the ingress replica registers its handlers at
start (:func:`register`): one ingress per replica process, as Serve runs them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException

Handler = Callable[[bytes], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class HotRoutes:
    """What the middleware needs from the ingress: handlers by route path, the auth check, the body limit."""

    routes: dict[str, Handler]  # route path (after the route prefix) -> handler of the raw body
    authorize: Callable[[str], None]  # the Authorization header's value; raises HTTPException(401)
    body_limit: int


_REGISTERED: list[HotRoutes] = []


def register(hot: HotRoutes | None) -> None:
    """The replica's hot routes (``None``: every request goes through FastAPI)."""
    _REGISTERED[:] = [hot] if hot is not None else []


def route_path(scope: dict[str, Any]) -> str:
    """The path inside the app, as Starlette's router matches it (the route prefix is Serve's root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


class HotRouteMiddleware:
    """ASGI middleware: POSTs to a registered hot route are answered here; everything else passes through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = None
        if _REGISTERED and scope["type"] == "http" and scope["method"] == "POST":
            hot = _REGISTERED[0]
            handler = hot.routes.get(route_path(scope))
        if handler is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        extra: dict[str, str] | None = None
        try:
            hot.authorize(headers.get(b"authorization", b"").decode("latin-1"))
            raw = await read_body(receive, headers.get(b"content-length", b"").decode("latin-1"), hot.body_limit)
            if raw is None:  # the client went away; nobody to answer
                return
            status, payload = 200, await handler(raw)
        except HTTPException as exc:  # what FastAPI's handler would answer: {"detail": ...}, status, headers
            status, payload, extra = exc.status_code, {"detail": exc.detail}, exc.headers
        await send_json(send, status, payload, extra)


async def read_body(receive: Any, declared: str, limit: int) -> bytes | None:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed, as ``requests.read_body``);
    ``None`` when the client disconnected."""
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, {"field": "body", "error": f"body: {declared} bytes is more than the {limit} allowed"})
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, {"field": "body", "error": f"body: more than the {limit} bytes allowed"})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Any, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
    """``payload`` as Starlette's JSONResponse renders it (compact, UTF-8, no NaN)."""
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
