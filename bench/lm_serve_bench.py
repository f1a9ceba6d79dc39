"""Benchmark: LM generation on hfray serve vs plain ``pipeline("text-generation")`` behind uvicorn, and 8 LoRA
adapters on one shared base vs 8 merged models. Same machine, same run, one server at a time.

GPU (issue 21's must-show, one device call): ``bench/gpu_lm_serve21.sh`` runs

    python bench/lm_serve_bench.py --device cuda --model random:smollm2 --concurrency 1,16,64 --seconds 12 \\
        --adapter-concurrency 16,64 --budget-s 400 --out $OUT/lm_serve_gpu_h200.json

``--model random:smollm2`` is SmolLM2-135M's architecture built from its config with random weights (saved in
``--dtype``) and SmolLM2's real tokenizer + chat template (``--tokenizer-dir``: ``.devmin/smollm2_tokenizer`` on the
GPU machine, staged by ``bench/device_assets.sh``); tokens/s do not depend on the weights' values.
``--model builtin:smollm2-135m-instruct`` (or any folder) uses real weights. ``random:tiny`` is a 2-layer Llama
for a CPU smoke run.

Every answer is exactly ``--max-new-tokens`` long on both servers (the artifact's generation config sets
``min_new_tokens`` to it: the end-of-sequence token is held back), so tokens/s compare. Each level is a closed
loop of ``concurrency`` clients sending one chat turn each (greedy) for ``--seconds``; requests still in flight then
get ``--drain-s`` to finish (else they are cancelled and counted as ``unfinished``); rates are over the whole
time. Reported: requests/s, generated tokens/s, p50/p99 latency, time to first token (hfray's SSE streaming, at
``--stream-concurrency``; the baseline has no streaming) and the server process's CUDA memory. Adapters: 8 random
LoRA adapters (r=8, q/k/v/o) of the same base, served ``adapters: shared`` (one base) and ``adapters: merged``
(8 models): parameters and CUDA memory held after every adapter answered once, and requests/s with clients spread
over the 8 model ids. ``--budget-s`` skips (and records as skipped) the levels that would not end in time;
the JSON and the markdown table are rewritten after every level. Not a test: pytest does not collect it.
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

sys.path.append(str(Path(__file__).resolve().parent))
from bench_common import SMOLLM2_135M_SHAPE  # noqa: E402  (a sibling module, not a package)

PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France? Answer briefly.",
    "Give me three words that rhyme with light.",
    "Explain in one line what a neural network is.",
]
SHAPES = {
    "smollm2": {**SMOLLM2_135M_SHAPE, "rms_norm_eps": 1e-5},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True},
}  # fmt: skip
T0 = time.monotonic()


# ----------------------------------------------------------------------------- artifacts


def default_tokenizer_dir() -> str:
    """SmolLM2's tokenizer: staged for the GPU machine in .devmin, else the builtin model's folder."""
    staged = Path(".devmin/smollm2_tokenizer")
    if staged.is_dir():
        return str(staged)
    from hfray.model.builtin import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct")


def random_model(shape: str, tokenizer_dir: str, dtype: str, dest: Path) -> None:
    """A Llama of ``SHAPES[shape]`` with random weights (seed 0) and a real tokenizer, saved in ``dtype``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    arch = {k: v for k, v in SHAPES[shape].items() if k != "model_type"}
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **ids, **arch)).to(getattr(torch, dtype))
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def base_artifact(args: argparse.Namespace, out: Path) -> Path:
    """The model as an hfray text-generation artifact whose answers are always ``max_new_tokens`` long."""
    from transformers import GenerationConfig

    from hfray.model.builtin import resolve_model

    dest = out / "smollm2"
    dest.mkdir(parents=True)
    if args.model.startswith("random:"):
        random_model(args.model.split(":", 1)[1], args.tokenizer_dir or default_tokenizer_dir(), args.dtype, dest)
    else:
        for f in Path(resolve_model(args.model)).iterdir():  # real weights: linked, not copied
            os.symlink(f, dest / f.name)
    gen = GenerationConfig.from_pretrained(dest)
    (dest / "generation_config.json").unlink(missing_ok=True)  # a link into the source folder
    gen.min_new_tokens = args.max_new_tokens  # EOS held back: every answer is max_new_tokens long, on both servers
    gen.save_pretrained(dest)
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

    @app.get("/memory")
    def memory() -> dict[str, Any]:
        return {"cuda_memory_allocated": torch.cuda.memory_allocated() if device == "cuda" else None}

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


async def one_request(http: httpx.AsyncClient, url: str, body: dict[str, Any], stream: bool, acc: dict) -> None:
    """One chat turn; its latency, TTFT (streaming) and completion tokens go into ``acc``."""
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await http.post(f"{url}/v1/chat/completions", json=body)
            r.raise_for_status()
            acc["tokens"] += r.json()["usage"]["completion_tokens"]
            acc["latencies"].append(time.perf_counter() - t0)
            return
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        first = None
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
                if event.get("usage"):
                    acc["tokens"] += event["usage"]["completion_tokens"]
        acc["latencies"].append(time.perf_counter() - t0)
        acc["ttfts"].append(first if first is not None else acc["latencies"][-1])
    except httpx.HTTPError as exc:
        acc["errors"] += 1
        acc["last_error"] = repr(exc)[:200]
        await asyncio.sleep(0.1)


async def closed_loop(
    url: str, concurrency: int, seconds: float, drain_s: float, body_for: Any, stream: bool
) -> dict[str, Any]:
    acc: dict[str, Any] = {"latencies": [], "ttfts": [], "tokens": 0, "errors": 0}
    start = time.perf_counter()
    deadline = start + seconds
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=concurrency)) as http:

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                await one_request(http, url, body_for(i), stream, acc)
                i += concurrency

        tasks = [asyncio.create_task(client(k)) for k in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=seconds + drain_s)
        for task in pending:  # each still waits for one answer: cancelled, counted as unfinished
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - start
    lat = acc["latencies"]
    # inclusive: within the measured range (the default extrapolates: a p99 of 10.3 s from 4 requests, max 6.2 s)
    pct = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    row = {
        "concurrency": concurrency,
        "requests": len(lat),
        "unfinished": len(pending),
        "errors": acc["errors"],
        "wall_s": round(wall, 1),
        "req_per_s": round(len(lat) / wall, 2),
        "tokens_per_s": round(acc["tokens"] / wall, 1),
        "tokens_per_request": round(acc["tokens"] / len(lat), 1) if lat else None,
        "p50_ms": round(pct[49] * 1000, 1) if lat else None,
        "p99_ms": round(pct[98] * 1000, 1) if lat else None,
    }
    if acc["ttfts"]:
        row["ttft_p50_ms"] = round(statistics.median(acc["ttfts"]) * 1000, 1)
    if "last_error" in acc:
        row["last_error"] = acc["last_error"]
    return row


def left_s(args: argparse.Namespace) -> float:
    return args.budget_s - (time.monotonic() - T0)


def levels(
    name: str, url: str, args: argparse.Namespace, out: list, concurrency: list[int], stream: bool = False,
    models: list[str] | None = None, extra: Any = None, warm: bool = True, drain_s: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per concurrency level (skipped when the budget is spent), appended to ``out`` and saved at once."""

    def body(i: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        b = {"messages": messages, "max_tokens": args.max_new_tokens, "temperature": 0}
        return {**b, "model": models[i % len(models)]} if models else b

    rows = []
    if warm and left_s(args) >= args.seconds + 5:  # warm-up: loads, compilation; one lone request, then two at once
        asyncio.run(closed_loop(url, 1, 0.1, min(120.0, max(10.0, left_s(args))), body, stream))
        asyncio.run(closed_loop(url, 2, 0.1, min(120.0, max(10.0, left_s(args))), body, stream))
    for c in concurrency:
        if left_s(args) < args.seconds + 5:
            row = {"server": name, "concurrency": c, "skipped": "time budget spent"}
        else:
            drain = max(5.0, min(drain_s or args.drain_s, left_s(args) - args.seconds))
            row = {"server": name, **asyncio.run(closed_loop(url, c, args.seconds, drain, body, stream))}
            row.update(extra() if extra else {})
        print(json.dumps(row), flush=True)
        rows.append(row)
        out.append(row)
        save(out, args)
    return rows


# ----------------------------------------------------------------------------- runs


def start_baseline(artifact: Path, args: argparse.Namespace) -> tuple[Any, str]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=baseline_server, args=(str(artifact), port, args.device, args.dtype))
    proc.start()
    wait_healthy(f"http://127.0.0.1:{port}", timeout_s=600)
    return proc, f"http://127.0.0.1:{port}"


def baseline_memory(url: str) -> dict[str, Any]:
    """The baseline's CUDA memory; a server still busy with a level's leftover requests may not answer in time."""
    try:
        return httpx.get(f"{url}/memory", timeout=30).json()
    except httpx.HTTPError as exc:
        return {"cuda_memory_allocated": None, "memory_error": repr(exc)[:100]}


def run_baseline(artifact: Path, args: argparse.Namespace, out: list) -> None:
    """A new server process after a level that left requests unfinished: their work must not load the next level."""
    proc = url = None
    try:
        drains = args.baseline_drain_s or [args.drain_s] * len(args.concurrency)
        for c, drain in zip(args.concurrency, drains, strict=True):
            if left_s(args) < args.seconds + 30:
                out.append({"server": "pipeline + uvicorn", "concurrency": c, "skipped": "time budget spent"})
                continue
            fresh = proc is None
            if fresh:
                proc, url = start_baseline(artifact, args)
            memory = lambda url=url: baseline_memory(url)  # noqa: E731
            row = levels("pipeline + uvicorn", url, args, out, [c], extra=memory, warm=fresh, drain_s=drain)[0]
            if row.get("unfinished"):
                proc.terminate()
                proc.join()
                proc = None
    finally:
        if proc is not None:
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


def lm_stats(url: str) -> dict[str, Any]:
    stats = httpx.get(f"{url}/v1/lm/stats", timeout=60).json()
    return {"parameters": stats["parameters"], "cuda_memory_allocated": stats["cuda_memory_allocated"]}


def batch_stats(url: str) -> Any:
    """lm_stats plus the mean batch of non-streaming requests since the last call (the level and its warm-up)."""
    seen = {"batches": 0, "batched_requests": 0}

    def stats() -> dict[str, Any]:
        raw = httpx.get(f"{url}/v1/lm/stats", timeout=60).json()
        batches, requests = (
            raw.get("batches", 0) - seen["batches"],
            raw.get("batched_requests", 0) - seen["batched_requests"],
        )
        seen.update(batches=raw.get("batches", 0), batched_requests=raw.get("batched_requests", 0))
        return {**lm_stats(url), "mean_batch": round(requests / batches, 1) if batches else None}

    return stats


def run_hfray(root: Path, args: argparse.Namespace, out: list) -> None:
    from ray import serve

    for static in (False, True) if args.static_cache else (False,):
        name = "hfray serve" + (" (static cache)" if static else "")
        if left_s(args) < args.seconds + 30:
            out.append({"server": name, "skipped": "time budget spent"})
            continue
        url = hfray_server(root, args, static_cache=static)
        levels(name, url, args, out, args.concurrency, extra=batch_stats(url))
        if args.stream_concurrency:
            levels(name + " streaming", url, args, out, args.stream_concurrency, stream=True)
        serve.delete(DEFAULT_APP_NAME)  # not serve.shutdown(): a new Serve instance right after races the old one


def run_adapters(root: Path, args: argparse.Namespace, out: list) -> None:
    from ray import serve

    ids = sorted(p.name for p in root.iterdir())
    for mode in ("shared", "merged"):
        if left_s(args) < args.seconds + 30:
            out.append({"server": f"{len(ids)} adapters {mode}", "skipped": "time budget spent"})
            continue
        url = hfray_server(root, args, adapters=mode, max_models_per_replica=len(ids) + 1, max_adapters=len(ids))
        for model in ids:  # every adapter loaded once
            hi = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            httpx.post(f"{url}/v1/chat/completions", json=hi, timeout=600).raise_for_status()
        memory = lm_stats(url)  # after every adapter answered once, before the load
        levels(f"{len(ids)} adapters {mode}", url, args, out, args.adapter_concurrency, models=ids,
               extra=lambda memory=memory: memory)  # fmt: skip
        serve.delete(DEFAULT_APP_NAME)


# ----------------------------------------------------------------------------- results


def save(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    meta = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.node(), "args": vars(args)}
    meta.update(args.versions)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    Path(args.out).with_suffix(".md").write_text(markdown(rows, args))


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    keys = ["server", "concurrency", "req_per_s", "tokens_per_s", "tokens_per_request", "p50_ms", "p99_ms"]
    keys += ["ttft_p50_ms", "mean_batch", "requests", "unfinished", "errors", "parameters", "cuda_memory_allocated"]
    keys += ["skipped"]
    v = args.versions
    lines = [f"# LM serving: {args.model}, {args.max_new_tokens} new tokens per answer, greedy", ""]
    where = v.get("gpu") or platform.processor() or platform.machine()
    lines += [f"{args.device} ({where}), {args.dtype}, torch {v.get('torch')}, transformers {v.get('transformers')}; "
              f"{args.seconds} s per level", ""]  # fmt: skip
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def versions(device: str) -> dict[str, Any]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "gpu": gpu}


def shutdown() -> None:
    """Serve (and its HAProxy, which holds fixed ports) stopped before the next program starts its own."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:smollm2", help="random:smollm2 | random:tiny | builtin:... | a folder")
    p.add_argument("--tokenizer-dir", default=None, help="random:*: the tokenizer (default: SmolLM2's)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--concurrency", type=ints, default=[1, 16, 64])
    p.add_argument("--stream-concurrency", type=ints, default=[1], help="hfray SSE levels ('' for none)")
    p.add_argument("--adapter-concurrency", type=ints, default=[16, 64])
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--drain-s", type=float, default=60, help="time in-flight requests get after a level's end")
    p.add_argument("--baseline-drain-s", type=ints, default=[], help="per --concurrency level (default: --drain-s)")
    p.add_argument("--budget-s", type=float, default=3600, help="skip the levels that would end later than this")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--parts", default="hfray,adapters,baseline", help="which servers, in this order (comma list)")
    p.add_argument("--static-cache", action="store_true", help="also hfray with static_cache (compiles: slow start)")
    p.add_argument("--out", default="bench/results/lm_serve_gpu.json")
    p.add_argument("--proxy", default="auto", choices=PROXIES, help="Serve's HTTP proxy (hfray serve --proxy)")
    args = p.parse_args(argv)
    args.serve_port = free_port()  # one Serve instance for every variant: its HTTP port is fixed when it starts
    args.versions = versions(args.device)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="hfray-lm-bench-"))
    try:
        base = base_artifact(args, work / "plain")
        # hfray first: the plain pipeline serves one request at a time per thread and its levels at 16+ clients
        # can eat a device call's budget (the first H200 run never reached hfray's rows).
        if "hfray" in args.parts:
            run_hfray(base.parent, args, rows)
        if "adapters" in args.parts and args.adapters and left_s(args) > args.seconds + 60:
            run_adapters(adapter_root(base, work, args.adapters), args, rows)
        elif "adapters" in args.parts and args.adapters:
            rows.append({"server": f"{args.adapters} adapters", "skipped": "time budget spent"})
        if "baseline" in args.parts:
            run_baseline(base, args, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        save(rows, args)
        shutdown()
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
