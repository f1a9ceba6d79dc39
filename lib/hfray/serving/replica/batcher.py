"""Continuous batching: a batch forms when a slot is free, so requests that arrive while the slots are busy
join the next batch, and batches grow with the load.

Why not ``@serve.batch``: Ray Serve 2.60's batcher forms a batch as soon as ``batch_wait_timeout_s`` has
passed, then waits for one of its ``max_concurrent_batches`` permits. While the model computes, small batches
(what arrived in one wait) pile up behind the permit, so a batch holds the requests of one wait, not those of
one forward pass. Measured on the split topology (bench/results, issue 26): 10.7 rows per forward on an H200
at ~1,600 req/s, the GPU 12% busy. Here a worker takes requests only when it is free: everything queued then
(up to ``max_batch_size``) goes into one batch, after waiting at most ``wait_s`` for more.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ContinuousBatcher(Generic[T, R]):
    """``await submit(item)``: ``run`` gets a list of items (one per request) and returns one result each."""

    def __init__(
        self, run: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch_size: int, wait_s: float, slots: int = 1
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.slots = slots
        self.queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self.arrived: asyncio.Event | None = None  # made in the event loop that serves requests
        self.workers: list[asyncio.Task[None]] = []

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Each item joins the batches as one request (an ingress's gathered call: one per request in it)."""
        loop = asyncio.get_running_loop()
        if self.arrived is None:
            self.arrived = asyncio.Event()
            # A fresh context: workers must not carry the first request's Serve request context (its model id).
            self.workers = [loop.create_task(self._worker(), context=contextvars.Context()) for _ in range(self.slots)]
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures, strict=True))
        self.arrived.set()
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        """Waits for a request, then up to ``wait_s`` more (none when the batch is full). As in @serve.batch, the
        wait starts when this worker takes the first request, not when it arrived: when the process is short of
        CPU, requests queue meanwhile and batches grow, which is what lowers the cost per request."""
        assert self.arrived is not None
        while not self.queue:
            self.arrived.clear()
            await self.arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(self.queue) < self.max_batch_size and (left := deadline - loop.time()) > 0:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                break
        batch = [self.queue.popleft() for _ in range(min(self.max_batch_size, len(self.queue)))]
        if self.queue:
            self.arrived.set()  # more for another free worker
        return [entry for entry in batch if not entry[1].done()]  # a cancelled request costs no forward

    async def _worker(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self.run([item for item, _ in batch])
            except Exception as exc:  # every request of the batch gets the error; the worker goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    def describe(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "wait_s": self.wait_s, "slots": self.slots}


def batched(
    run: Callable[[list[T]], Awaitable[Sequence[R]]], kind: str, max_batch_size: int, wait_s: float, slots: int
) -> Callable[[Sequence[T]], Awaitable[list[R]]]:
    """``submit_many(items)``: each item joins ``run``'s batches as one request, batched the way ``ServeConfig.batcher``
    (``kind``) says: ``continuous`` (:class:`ContinuousBatcher`) or ``serve`` (Ray Serve's ``@serve.batch``)."""
    if kind == "continuous":
        return ContinuousBatcher(run, max_batch_size, wait_s, slots).submit_many
    from ray import serve

    # Decorated here, on a plain function, because the settings come from the config (Serve detects this).
    async def run_batch(items: list[T]) -> Sequence[R]:
        return await run(items)

    batch = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s, max_concurrent_batches=slots)(
        run_batch
    )

    async def submit_many(items: Sequence[T]) -> list[R]:
        return list(await asyncio.gather(*(batch(item) for item in items)))

    return submit_many
