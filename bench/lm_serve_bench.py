"""Benchmark: LM generation on hfray serve vs plain ``pipeline("text-generation")`` behind uvicorn, and 8 LoRA
adapters on one shared base vs 8 merged models. Same machine, same run, one server at a time.

    python bench/lm_serve_bench.py --device cuda --concurrency 1,16,64 --seconds 30 \\
        --out bench/results/lm_serve_gpu_h200.json

Generation: each level is a closed loop of ``concurrency`` clients sending one chat turn each (the model's chat
template, greedy, ``--max-new-tokens``); we report requests/s, generated tokens/s, p50/p99 latency and, for hfray
(SSE streaming), time to first token. The baseline has no streaming: its TTFT is its latency. hfray variants:
dynamic KV cache and ``static_cache`` (static KV cache, compiled decoding). Adapters: 8 random LoRA adapters (r=8,
q/k/v/o) of the same base, served ``adapters: shared`` (one base) and ``adapters: merged`` (8 models): GPU memory
held after every adapter answered once, and requests/s with clients spread over the 8 model ids. Not a test:
pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hfray.artifacts.manifest import write_manifest
from hfray.cluster.local import free_port
from hfray.serving.driver import DEFAULT_APP_NAME, PROXIES, wait_healthy

PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France? Answer briefly.",
    "Give me three words that rhyme with light.",
    "Explain in one line what a neural network is.",
]


# ----------------------------------------------------------------------------- artifacts


def base_artifact(model: str, out: Path) -> Path:
    """The pretrained model as an hfray text-generation artifact (files linked, not copied)."""
    from hfray.model.builtin import resolve_model

    src = Path(resolve_model(model))
    dest = out / "smollm2"
    dest.mkdir(parents=True)
    for f in src.iterdir():
        os.symlink(f, dest / f.name)
    write_manifest(str(dest), {"format": 1, "name": "smollm2", "metrics": {}, "task": "text-generation"})
    return dest


def adapter_root(base: Path, out: Path, n: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = out / "adapters"
    config = AutoConfig.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    for i in range(n):
        torch.manual_seed(i)
        lora = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora)
        dest = root / f"adapter{i}"
        peft.save_pretrained(dest)
        config.save_pretrained(dest / "base")
        tok.save_pretrained(dest)
        info = {"method": "lora", "base_model": str(base), "auto_class": "AutoModelForCausalLM"}
        write_manifest(
            str(dest), {"format": 1, "name": dest.name, "metrics": {}, "task": "text-generation", "peft": info}
        )
    return root


# ----------------------------------------------------------------------------- the baseline server


def baseline_server(artifact: str, port: int, device: str, dtype: str) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-generation", model=artifact, device=device, dtype=getattr(torch, dtype))
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:  # sync: FastAPI runs it in its thread pool
        prompt = pipe.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        out = pipe(prompt, max_new_tokens=body["max_tokens"], do_sample=False, return_tensors=True)
        ids = out[0]["generated_token_ids"]  # the prompt's tokens, then the new ones
        new = ids[len(pipe.tokenizer(prompt)["input_ids"]) :]
        text = pipe.tokenizer.decode(new, skip_special_tokens=True)
        return {"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": len(new)}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ----------------------------------------------------------------------------- load


async def closed_loop(url: str, concurrency: int, seconds: float, body_for: Any, stream: bool) -> dict[str, Any]:
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = errors = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as http:

        async def one(i: int) -> None:
            nonlocal tokens, errors
            body = {**body_for(i), "stream": stream} if stream else body_for(i)
            t0 = time.perf_counter()
            if not stream:
                r = await http.post(f"{url}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    errors += 1
                    return
                tokens += r.json()["usage"]["completion_tokens"]
                latencies.append(time.perf_counter() - t0)
                return
            body["stream_options"] = {"include_usage": True}
            first = None
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
                    if event.get("usage"):
                        tokens += event["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - t0)
            ttfts.append(first if first is not None else latencies[-1])

        async def client(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                await one(i)
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        wall = time.perf_counter() - start
    pct = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    row = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": round(len(latencies) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "p50_ms": round(pct[49] * 1000, 1),
        "p99_ms": round(pct[98] * 1000, 1),
    }
    if ttfts:
        row["ttft_p50_ms"] = round(statistics.median(ttfts) * 1000, 1)
    return row


def levels(name: str, url: str, args: argparse.Namespace, stream: bool, models: list[str] | None = None) -> list:
    def body(i: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        b = {"messages": messages, "max_tokens": args.max_new_tokens, "temperature": 0}
        return {**b, "model": models[i % len(models)]} if models else b

    rows = []
    asyncio.run(closed_loop(url, 2, 5, body, stream))  # warm-up: first loads, compilation
    for c in args.concurrency:
        row = {"server": name, **asyncio.run(closed_loop(url, c, args.seconds, body, stream))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- runs


def run_baseline(artifact: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=baseline_server, args=(str(artifact), port, args.device, args.dtype))
    proc.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=600)
        return levels("pipeline + uvicorn", f"http://127.0.0.1:{port}", args, stream=False)
    finally:
        proc.terminate()
        proc.join()


def hfray_server(root: Path, args: argparse.Namespace, **settings: Any) -> str:
    from hfray.serving.driver import serve_artifacts

    gpus = 1 if args.device == "cuda" else 0
    dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[args.dtype]
    url = serve_artifacts(
        {"artifact_root": str(root), "port": args.serve_port, "num_gpus": gpus,
         "num_cpus": 1 if gpus else os.cpu_count(),  # CPU: the replica's torch gets every core, as the baseline's
         "dtype": dtype, "access_log": False,
         "max_batch_size": 64, "max_ongoing_requests": 256, "max_new_tokens": 1024, **settings},
        num_cpus=os.cpu_count(),
        proxy=args.proxy,
    )  # fmt: skip
    wait_healthy(url, timeout_s=600)
    return url


def run_hfray(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from ray import serve

    rows = []
    for static in (False, True):
        url = hfray_server(root, args, static_cache=static)
        name = "hfray serve" + (" (static cache)" if static else "")
        rows += levels(name, url, args, stream=False)
        rows += levels(name + " streaming", url, args, stream=True)
        serve.delete(DEFAULT_APP_NAME)  # not serve.shutdown(): a new Serve instance right after races the old one
    return rows


def run_adapters(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from ray import serve

    ids = sorted(p.name for p in root.iterdir())
    rows = []
    for mode in ("shared", "merged"):
        url = hfray_server(root, args, adapters=mode, max_models_per_replica=len(ids) + 1, max_adapters=len(ids))
        for model in ids:  # every adapter loaded once
            hi = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            r = httpx.post(f"{url}/v1/chat/completions", json=hi, timeout=600)
            r.raise_for_status()
        stats = httpx.get(f"{url}/v1/lm/stats", timeout=60).json()
        memory = {"parameters": stats["parameters"], "cuda_memory_allocated": stats["cuda_memory_allocated"]}
        for row in levels(f"{len(ids)} adapters {mode}", url, args, stream=False, models=ids):
            rows.append({**row, **memory})
        serve.delete(DEFAULT_APP_NAME)  # not serve.shutdown(): a new Serve instance right after races the old one
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    keys = ["server", "concurrency", "req_per_s", "tokens_per_s", "p50_ms", "p99_ms", "ttft_p50_ms", "errors"]
    keys += ["parameters", "cuda_memory_allocated"]
    lines = [f"# LM serving: {args.model}, {args.max_new_tokens} new tokens, greedy ({args.device}, {args.dtype})", ""]
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--out", default="bench/results/lm_serve_gpu.json")
    p.add_argument("--proxy", default="auto", choices=PROXIES, help="Serve's HTTP proxy (hfray serve --proxy)")
    args = p.parse_args(argv)
    args.serve_port = free_port()  # one Serve instance for every variant: its HTTP port is fixed when it starts
    work = Path(tempfile.mkdtemp(prefix="hfray-lm-bench-"))
    try:
        base = base_artifact(args.model, work / "plain")
        rows = run_baseline(base, args) + run_hfray(base.parent, args)
        if args.adapters:
            rows += run_adapters(adapter_root(base, work, args.adapters), args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.node(), "args": vars(args)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    Path(args.out).with_suffix(".md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
