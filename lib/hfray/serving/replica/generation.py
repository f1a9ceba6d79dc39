"""Language-model hosting in a Serve replica: causal-LM generation and fill-mask, adapters on a shared base.

``LMHost`` holds, per replica:

- full models (plain causal-LM / SFT / DPO artifacts, or adapters merged in with ``adapters: merged``), LRU;
- *bases* shared by PEFT adapters (``adapters: shared``, the default): every adapter artifact of one base model
  is loaded into the same ``PeftModel`` (``load_adapter``) and picked per batch with ``set_adapter``; at most
  ``max_adapters`` adapters stay loaded per base (least recently used evicted with ``delete_adapter``);
- fill-mask pipelines of masked-LM artifacts (``transformers.pipeline("fill-mask")``, the same answer).

Requests arrive as prompt token ids (the ingress applied the chat template and checked the lengths,
:mod:`hfray.serving.lm_routes`). Non-streaming requests are batched and grouped by model id and
sampling settings: one left-padded ``generate`` per group, batched as ``ServeConfig.batcher`` says (default:
:class:`~hfray.serving.replica.batcher.ContinuousBatcher`: a batch is what waited while the last one decoded, not
``serve.batch``'s few milliseconds of arrivals; issue 21's first H200 run: 16 clients, 0.94 req/s).
Streaming requests run one ``generate`` each, its text handed to the event loop by :func:`loop_streamer`.
One lock covers loading, adapter switching and ``generate`` on a replica: an adapter switch (or an eviction) must
not happen in the middle of another request's decoding.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from hfray.artifacts.adapters import BASE_DIR, base_source, is_adapter, load_base, load_model
from hfray.artifacts.loading import load_artifact_pipeline
from hfray.artifacts.predict import plain_json
from hfray.serving.catalog import ArtifactCatalog, ModelEntry
from hfray.serving.config import ServeConfig
from hfray.serving.replica.batcher import batched
from hfray.serving.replica.models import torch_placement

LM_WAIT_S = 0.02  # least wait for more requests before a generation batch starts


def base_identity(entry: ModelEntry) -> str:
    """Adapters with the same identity share one base: its source folder, or a hash of weights shipped in base/."""
    source = base_source(entry.path, entry.manifest.get("peft") or {})
    inside = os.path.join(entry.path, BASE_DIR)
    if os.path.realpath(source) != os.path.realpath(inside):
        return os.path.realpath(source)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(inside)):
        with open(os.path.join(inside, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def adapter_name(model_id: str) -> str:
    """PEFT adapter names become module keys: no dots allowed, so model ids are hashed."""
    return "a" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


@dataclass
class SharedBase:
    model: Any  # a PeftModel holding every loaded adapter of this base
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)  # model id -> adapter name, LRU order


@dataclass
class Generator:
    """What one request decodes with: the model (adapter already active under the lock) and its tokenizer."""

    model: Any
    tokenizer: Any
    adapter: str | None = None


def count_parameters(models: list[Any]) -> int:
    """Parameters held, each tensor counted once (a shared base under several adapters counts once)."""
    seen: dict[int, int] = {}
    for model in models:
        for p in model.parameters():
            seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


class LMHost:
    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.catalog = ArtifactCatalog(cfg.artifact_root, cfg.models)
        self.device, self.dtype = torch_placement(cfg)
        self.full: OrderedDict[str, Any] = OrderedDict()  # model id -> model (or fill-mask pipeline)
        self.bases: OrderedDict[str, SharedBase] = OrderedDict()  # base identity -> adapters on it
        self.adapter_base: dict[str, str] = {}  # adapter model id -> its base's identity (hashing it costs)
        self.tokenizers: dict[str, Any] = {}
        self.lock = threading.Lock()  # loads, set_adapter and generate one at a time: set_adapter is model-wide
        self.batches = self.batched_requests = 0
        # One slot: generate holds the lock anyway. A batch lasts seconds, so waiting LM_WAIT_S for more costs ~1%
        # and lets the clients of the batch that just ended rejoin the waiting ones (not alternate in half batches).
        wait = max(cfg.batch_wait_timeout_s, LM_WAIT_S)
        self.submit_many = batched(self._run_counted, cfg.batcher, cfg.max_batch_size, wait, 1)

    # ------------------------------------------------------------------------- loading

    def _tokenizer(self, entry: ModelEntry) -> Any:
        from transformers import AutoTokenizer

        if entry.model_id not in self.tokenizers:
            self.tokenizers[entry.model_id] = AutoTokenizer.from_pretrained(entry.path)
        return self.tokenizers[entry.model_id]

    def _evict_full(self) -> None:
        while len(self.full) + len(self.bases) > self.cfg.max_models_per_replica and (self.full or self.bases):
            if self.full:
                gone, _ = self.full.popitem(last=False)
                self.tokenizers.pop(gone, None)
            else:
                _, base = self.bases.popitem(last=False)
                for gone in base.adapters:
                    self.tokenizers.pop(gone, None)

    def _load_shared(self, entry: ModelEntry) -> Generator:
        """An adapter on its shared base: the base loaded once, the adapter added to it (``load_adapter``)."""
        from peft import PeftModel

        key = self.adapter_base.get(entry.model_id) or base_identity(entry)
        name = adapter_name(entry.model_id)
        base = self.bases.get(key)
        if base is None:
            bare = load_base(entry.path, entry.manifest, dtype=self.dtype)
            model = PeftModel.from_pretrained(bare, entry.path, adapter_name=name)
            self.bases[key] = base = SharedBase(model.to(self.device).eval())
        elif entry.model_id not in base.adapters:
            base.model.load_adapter(entry.path, adapter_name=name)
            base.model.to(self.device).eval()
        self.adapter_base[entry.model_id] = key
        base.adapters[entry.model_id] = name
        base.adapters.move_to_end(entry.model_id)
        self.bases.move_to_end(key)
        while len(base.adapters) > self.cfg.max_adapters:
            gone, gone_name = base.adapters.popitem(last=False)
            base.model.delete_adapter(gone_name)
            self.tokenizers.pop(gone, None)
        return Generator(base.model, self._tokenizer(entry), name)

    def _load(self, model_id: str) -> Generator:
        """The model for ``model_id``, loading it (and evicting the least recently used) when needed."""
        entry = self.catalog.resolve(model_id)
        if model_id in self.full:
            self.full.move_to_end(model_id)
            return Generator(self.full[model_id], self._tokenizer(entry))
        if self.cfg.adapters == "shared" and is_adapter(entry.path) and entry.manifest.get("task") != "fill-mask":
            generator = self._load_shared(entry)
        else:
            if entry.manifest.get("task") == "fill-mask":
                self.full[model_id] = load_artifact_pipeline(entry.path, self.device)
            else:
                model = load_model(entry.path, entry.manifest, merge=True, dtype=self.dtype)
                self.full[model_id] = model.to(self.device).eval()
            generator = Generator(self.full[model_id], self._tokenizer(entry))
        self._evict_full()
        return generator

    # ------------------------------------------------------------------------- generation

    async def generate(self, model_id: str, prompt_ids: list[int], options: dict[str, Any]) -> dict[str, Any]:
        return (await self.submit_many([(model_id, prompt_ids, options)]))[0]

    async def _run_counted(self, requests: list[tuple[str, list[int], dict[str, Any]]]) -> list[dict[str, Any]]:
        self.batches += 1
        self.batched_requests += len(requests)
        return await self._run_batch(requests)

    async def _run_batch(self, requests: list[tuple[str, list[int], dict[str, Any]]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in requests]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (model_id, _, options) in enumerate(requests):
            groups.setdefault((model_id, repr(sorted(options.items()))), []).append(i)
        for (model_id, _), members in groups.items():
            prompts = [requests[i][1] for i in members]
            results = await in_new_thread(self._generate_locked, model_id, prompts, requests[members[0]][2])
            for i, result in zip(members, results, strict=True):
                out[i] = result
        return out

    def _generate_locked(self, model_id: str, prompts: list[list[int]], options: dict[str, Any]) -> list[Any]:
        with self.lock:
            gen = self._load(model_id)
            if gen.adapter is not None:
                gen.model.set_adapter(gen.adapter)
            if self.cfg.static_cache and self.device == "cuda":  # transformers compiles the decoding step for it
                options = {**options, "cache_implementation": "static"}
            return generate_batch(gen.model, gen.tokenizer, prompts, options, self.device)

    async def stream(self, model_id: str, prompt_ids: list[int], options: dict[str, Any]) -> AsyncIterator[Any]:
        """Text pieces as they are decoded, then a dict with the token counts and the finish reason."""
        tokenizer = await asyncio.to_thread(self._tokenizer, self.catalog.resolve(model_id))
        streamer = loop_streamer(tokenizer)
        done = asyncio.ensure_future(in_new_thread(self._stream_locked, model_id, prompt_ids, options, streamer))
        try:
            async for piece in streamer.pieces():
                yield piece
            result = await done
        finally:
            streamer.cancelled = True  # a client gone: its generate stops at the next token
        yield {k: v for k, v in result.items() if k != "text"}

    def _stream_locked(self, model_id: str, prompt_ids: list[int], options: dict[str, Any], streamer: Any) -> Any:
        from transformers import StoppingCriteriaList

        try:
            stop = StoppingCriteriaList([streamer.stop])
            options = {**options, "streamer": streamer, "stopping_criteria": stop}
            return self._generate_locked(model_id, [prompt_ids], options)[0]
        finally:
            streamer.end()  # the pieces end also when generate failed (its error comes with the result)

    async def fill_mask(self, model_id: str, texts: list[str], top_k: int) -> list[Any]:
        def run() -> list[Any]:
            with self.lock:
                pipe = self._load(model_id).model
                return [plain_json(pipe(t, top_k=top_k)) for t in texts]

        return await asyncio.to_thread(run)

    def stats(self) -> dict[str, Any]:
        import torch

        bases = [
            {"base": key, "adapters": list(b.adapters), "parameters": count_parameters([b.model])}
            for key, b in self.bases.items()
        ]
        full = [m.model if hasattr(m, "task") else m for m in self.full.values()]
        return {
            "adapters_mode": self.cfg.adapters,
            "bases": bases,
            "models": list(self.full),
            "parameters": count_parameters(full + [b.model for b in self.bases.values()]),
            "device": self.device,
            "cuda_memory_allocated": torch.cuda.memory_allocated() if self.device == "cuda" else None,
            "batches": self.batches,
            "batched_requests": self.batched_requests,
        }


def loop_streamer(tokenizer: Any) -> Any:
    """A ``TextStreamer`` whose pieces reach the running event loop without a thread hop per token: the generate
    thread appends the decoded text to a list and wakes the loop (``call_soon_threadsafe``) only when the loop has
    taken everything before; the loop then takes all pieces waiting. Was ``TextIteratorStreamer`` drained by
    ``asyncio.to_thread(next, ...)``: two thread wake-ups per token, each contending for the GIL with the decoding
    thread (issue 21's H200 run: 64 tokens streamed in 5.6-9 s against 1.8 s answered whole)."""
    from transformers import StoppingCriteria, TextStreamer

    loop = asyncio.get_running_loop()

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), streamer.cancelled, dtype=torch.bool, device=input_ids.device)

    class LoopStreamer(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.guard = threading.Lock()
            self.pending: list[str] = []
            self.ended = self.woken = self.cancelled = False
            self.wake = asyncio.Event()
            self.stop = Stop()

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            with self.guard:
                if text:
                    self.pending.append(text)
                self.ended |= stream_end
                if self.woken or not (self.pending or self.ended):
                    return
                self.woken = True
            loop.call_soon_threadsafe(self.wake.set)

        async def pieces(self) -> AsyncIterator[str]:
            while True:
                await self.wake.wait()
                with self.guard:
                    self.wake.clear()
                    self.woken = False
                    taken, self.pending, ended = self.pending, [], self.ended
                for piece in taken:  # one event each: a client sees the pieces the streamer made
                    yield piece
                if ended:
                    return

    streamer = LoopStreamer()
    return streamer


async def in_new_thread(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own, awaited. Not ``asyncio.to_thread``: in a Serve replica on CPU, ``generate``
    in the event loop's shared executor thread took 3-5x as long as in a fresh thread (the streaming path's), e.g.
    1.0-1.2 s against 0.22-0.27 s for 64 tokens of a tiny Llama (2 cores, measured for issue 21's bench)."""
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # handed to the awaiting request
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True, name="hfray-lm-batch").start()
    return await asyncio.wrap_future(done)


def generate_batch(
    model: Any, tokenizer: Any, prompts: list[list[int]], options: dict[str, Any], device: str
) -> list[dict[str, Any]]:
    """``model.generate`` on left-padded prompts; per prompt the new text, token counts and finish reason."""
    import torch

    options = dict(options)
    seed = options.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, **options)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    results = []
    for row, prompt in zip(out[:, width:].tolist(), prompts, strict=True):
        ends = [i for i, token in enumerate(row) if token in eos_ids]
        row = row[: ends[0] + 1] if ends else row  # a batch pads the rows that stopped early
        results.append(
            {
                "text": tokenizer.decode(row, skip_special_tokens=True),
                "prompt_tokens": len(prompt),
                "completion_tokens": len(row),
                "finish_reason": "stop" if ends else "length",
            }
        )
    return results


@serve.deployment(name="HfrayLM")
class HfrayLM:
    """Replicas holding causal-LM, adapter and masked-LM artifacts (:class:`LMHost`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.host = LMHost(ServeConfig.from_dict(config))

    async def generate(self, model_id: str, prompt_ids: list[int], options: dict[str, Any]) -> dict[str, Any]:
        return await self.host.generate(model_id, prompt_ids, options)

    async def stream(self, model_id: str, prompt_ids: list[int], options: dict[str, Any]) -> AsyncIterator[Any]:
        async for piece in self.host.stream(model_id, prompt_ids, options):
            yield piece

    async def fill_mask(self, model_id: str, texts: list[str], top_k: int) -> list[Any]:
        return await self.host.fill_mask(model_id, texts, top_k)

    async def stats(self) -> dict[str, Any]:
        return self.host.stats()
