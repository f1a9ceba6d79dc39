"""Probe: one client, streamed (SSE) vs non-streamed chat answers of the same length, interleaved, on hfray serve;
plus the same two paths on an ``LMHost`` in this process (no Ray, no HTTP) to tell the host's cost from Serve's.

    python bench/lm_stream_probe.py --model random:tiny --device cpu --dtype float32 --rounds 10 \\
        --out bench/results/lm_stream_cpu.json

Every answer is exactly ``--max-new-tokens`` long (``min_new_tokens``, as in lm_serve_bench.py). Reported per path:
median total time and median time to first piece, and the streamed / non-streamed ratio. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.append(str(Path(__file__).resolve().parent))
from lm_serve_bench import base_artifact, hfray_server, shutdown  # noqa: E402  (a sibling module)

LOOP = asyncio.new_event_loop()
BODY = {"messages": [{"role": "user", "content": "Write one sentence about the sea."}], "temperature": 0}


def http_once(url: str, stream: bool, tokens: int) -> tuple[float, float]:
    """(total s, time to first content s) of one chat turn over HTTP."""
    body = {**BODY, "max_tokens": tokens}
    t0 = time.perf_counter()
    if not stream:
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).raise_for_status()
        total = time.perf_counter() - t0
        return total, total
    first = None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=600) as r:
        for line in r.iter_lines():
            if (
                first is None
                and line.startswith("data: {")
                and json.loads(line[6:])["choices"][0]["delta"].get("content")
            ):
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return total, first if first is not None else total


async def old_stream(host: Any, prompt: list[int], opts: dict[str, Any]) -> Any:
    """LMHost.stream before issue 21's fix: a TextIteratorStreamer drained with one executor hop per piece."""
    import threading

    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(host._tokenizer(host.catalog.resolve("smollm2")), skip_prompt=True, timeout=600)
    run = lambda: host._generate_locked("smollm2", [prompt], {**opts, "streamer": streamer})  # noqa: E731
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    pieces = iter(streamer)
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        if piece:
            yield piece
    await asyncio.to_thread(thread.join)


def host_once(host: Any, prompt: list[int], stream: bool | str, tokens: int) -> tuple[float, float]:
    """The same on an LMHost in this process (stream "old": the path before the fix)."""
    opts = {"max_new_tokens": tokens, "do_sample": False}

    async def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        if not stream:
            await host.generate("smollm2", prompt, opts)
            return time.perf_counter() - t0, time.perf_counter() - t0
        first = None
        pieces = old_stream(host, prompt, opts) if stream == "old" else host.stream("smollm2", prompt, opts)
        async for piece in pieces:
            if first is None and isinstance(piece, str):
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        return total, first if first is not None else total

    return LOOP.run_until_complete(run())  # one loop: the host's batcher lives in the loop of its first request


def summary(samples: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, vals in samples.items():
        out[name] = {
            "total_p50_ms": round(statistics.median(v[0] for v in vals) * 1000, 1),
            "ttft_p50_ms": round(statistics.median(v[1] for v in vals) * 1000, 1),
            "n": len(vals),
        }
    for where in ("http", "host"):
        if f"{where} plain" in out:
            ratio = out[f"{where} stream"]["total_p50_ms"] / out[f"{where} plain"]["total_p50_ms"]
            out[f"{where} stream/plain"] = round(ratio, 2)
        if f"{where} stream old" in out:
            ratio = out[f"{where} stream old"]["total_p50_ms"] / out[f"{where} plain"]["total_p50_ms"]
            out[f"{where} stream old/plain"] = round(ratio, 2)
    return out


def rounds(once: Any, n: int, kinds: tuple[Any, ...] = (False, True)) -> dict[str, list[tuple[float, float]]]:
    names = {False: "plain", True: "stream", "old": "stream old"}
    samples: dict[str, list[tuple[float, float]]] = {names[k]: [] for k in kinds}
    for k in kinds:  # warm-up
        once(k)
    for i in range(n):  # interleaved, the order rotating: the machine's load drifts
        for k in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
            samples[names[k]].append(once(k))
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--tokenizer-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--proxy", default="serve")
    p.add_argument("--skip-host", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from hfray.cluster.local import free_port

    args.serve_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="hfray-stream-probe-"))
    base = base_artifact(args, work / "plain")
    samples: dict[str, list[tuple[float, float]]] = {}
    if not args.skip_host:
        from transformers import AutoTokenizer

        from hfray.serving.config import ServeConfig
        from hfray.serving.replica.generation import LMHost

        host = LMHost(
            ServeConfig.from_dict({"artifact_root": str(base.parent), "num_gpus": int(args.device == "cuda")})
        )
        tok = AutoTokenizer.from_pretrained(base)
        text = tok.apply_chat_template(BODY["messages"], add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False)["input_ids"]  # as the ingress does
        once = lambda s: host_once(host, prompt, s, args.max_new_tokens)  # noqa: E731
        for k, v in rounds(once, args.rounds, (False, True, "old")).items():
            samples[f"host {k}"] = v
    if args.skip_http:
        return report(samples, args)
    try:
        url = hfray_server(base.parent, args)
        for k, v in rounds(lambda s: http_once(url, s, args.max_new_tokens), args.rounds).items():
            samples[f"http {k}"] = v
    finally:
        shutdown()
    return report(samples, args)


def report(samples: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> int:
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "summary": summary(samples),
        "samples_s": {k: [[round(a, 4), round(b, 4)] for a, b in v] for k, v in samples.items()},
    }
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
