"""The continuous batcher (hfray.serving.replica.batcher), in plain asyncio (no Ray).

The scenario: one batch is running (held on a gate) while ten requests arrive a few event-loop turns apart.
Continuous batching puts all ten into the next batch (Ray Serve's @serve.batch would have cut them into
batches of what arrived within each wait, queued behind its slot; it needs a replica, so it is not run here).
No timing: the gate decides when a batch finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hfray.serving.replica.batcher import ContinuousBatcher


class Model:
    """A batch function that records its batches and holds the first one until ``gate`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            await self.gate.wait()
        if -1 in items:
            raise ValueError("bad item")
        return [2 * x for x in items]


async def _started(model: Model) -> None:
    """Until the first batch runs (bounded: a broken batcher fails the test instead of hanging it)."""
    for _ in range(10_000):
        if model.batches:
            return
        await asyncio.sleep(0)
    raise AssertionError("the first batch never started")


async def _scenario(model: Model, submit: Callable[[int], Awaitable[int]]) -> list[int]:
    first = asyncio.ensure_future(submit(0))
    await _started(model)  # the first batch is running, and held
    rest = []
    for i in range(1, 11):
        rest.append(asyncio.ensure_future(submit(i)))
        for _ in range(5):  # a few turns of the loop between arrivals
            await asyncio.sleep(0)
    model.gate.set()
    return list(await asyncio.gather(first, *rest))


def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    model = Model()
    batcher: ContinuousBatcher[int, int] = ContinuousBatcher(model.run, max_batch_size=64, wait_s=0.0, slots=1)
    results = asyncio.run(_scenario(model, batcher.submit))
    assert results == [2 * i for i in range(11)]
    assert model.batches == [[0], list(range(1, 11))]


def test_max_batch_size_splits_and_errors_reach_every_request_of_their_batch() -> None:
    async def scenario() -> tuple[Model, list[Any]]:
        model = Model()
        model.gate.set()
        batcher: ContinuousBatcher[int, int] = ContinuousBatcher(model.run, max_batch_size=3, wait_s=0.0, slots=2)
        # submit_many: an ingress's gathered call; each item is one request of the batches
        outs = await asyncio.gather(
            batcher.submit_many([1, 2, 3, 4, 5, 6]), batcher.submit_many([-1]), return_exceptions=True
        )
        again = await batcher.submit(7)  # the workers survived the error
        return model, [*outs, again]

    model, (ok, bad, again) = asyncio.run(scenario())
    assert ok == [2, 4, 6, 8, 10, 12] and again == 14
    assert isinstance(bad, ValueError)
    assert model.batches[:3] == [[1, 2, 3], [4, 5, 6], [-1]]  # at most 3 each; the bad one fails only its own


def test_a_cancelled_request_costs_no_forward() -> None:
    async def scenario() -> Model:
        model = Model()
        batcher: ContinuousBatcher[int, int] = ContinuousBatcher(model.run, max_batch_size=8, wait_s=0.0, slots=1)
        first = asyncio.ensure_future(batcher.submit(0))
        await _started(model)
        gone = asyncio.ensure_future(batcher.submit(5))  # queued behind the held batch, then its client leaves
        kept = asyncio.ensure_future(batcher.submit(6))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        assert await first == 0 and await kept == 12
        return model

    assert asyncio.run(scenario()).batches == [[0], [6]]
