"""Load generation and CPU/GPU accounting for ``bench/serve_bench.py``.

A level is a closed loop of ``concurrency`` clients (each sends its next request when the previous one
returns), spread over several client processes that start together at an agreed wall-clock time and stop
at the same deadline, so requests/s = successes / the common window. Each client process reports its own
CPU time: a load generator near 100% of its cores is the bottleneck, not the server.

While a level runs we also take the CPU seconds of every server process (by role: Serve proxy, ingress,
model replica, Ray's own daemons, the baseline's uvicorn) and, on NVIDIA machines, sample GPU utilisation.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Any

SENTENCES = [
    "a wonderful, moving film with a brilliant cast",
    "the plot was dull and the actors clumsy",
    "I would not watch this again",
    "superb camera work and lovely music throughout the second half",
    "boring",
    "an average story, told well enough, with a few charming scenes and a weak ending",
]


# ----------------------------------------------------------------------------- clients


async def closed_loop(
    url: str, concurrency: int, total: int, start_at: float, seconds: float
) -> tuple[list[float], int, float, float]:
    """``concurrency`` aiohttp clients from ``start_at`` (time.time()) for ``seconds`` or ``total`` requests.

    Returns (latencies of successes in s, error count, wall s from start_at to the last answer, CPU s).
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        deadline = time.monotonic() + seconds

        async def client(offset: int) -> None:
            nonlocal issued, errors
            while issued < total and time.monotonic() < deadline:
                issued += 1
                body = {"inputs": [SENTENCES[(issued + offset) % len(SENTENCES)]]}
                t0 = time.perf_counter()
                try:
                    async with http.post(url, json=body) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall = time.time() - start_at
        cpu = time.process_time() - cpu0
    return latencies, errors, wall, cpu


def client_process(
    url: str, concurrency: int, total: int, start_at: float, seconds: float
) -> tuple[list[float], int, float, float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(closed_loop(url, concurrency, total, start_at, seconds))


def split(n: int, parts: int) -> list[int]:
    return [(n + i) // parts for i in range(parts)]


def run_level(url: str, concurrency: int, total: int, seconds: float, procs: int) -> dict[str, Any]:
    """One level over ``procs`` client processes, with the server's CPU and GPU use in the same window."""
    procs = max(1, min(procs, concurrency))
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(int, range(procs))  # the workers exist and have imported this module before the clock starts
        start_at = time.time() + 0.5
        args = [
            (url, c, n, start_at, seconds) for c, n in zip(split(concurrency, procs), split(total, procs), strict=True)
        ]
        pending = pool.starmap_async(client_process, args)
        time.sleep(max(0.0, start_at - time.time()))
        server: dict[str, Any] = {}
        with server_accounting(server):
            parts = pending.get(timeout=seconds + 120)
    return server | {
        "latencies": [x for lat, _, _, _ in parts for x in lat],
        "errors": sum(p[1] for p in parts),
        "wall_s": max(p[2] for p in parts),
        "client_cpu_s": sum(p[3] for p in parts),
        "client_procs": procs,
    }


def summarize(raw: dict[str, Any], concurrency: int) -> dict[str, Any]:
    ms = sorted(x * 1000 for x in raw["latencies"])
    wall = raw["wall_s"]

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))], 1) if ms else float("nan")

    return {
        "concurrency": concurrency,
        "ok": len(ms),
        "errors": raw["errors"],
        "wall_s": round(wall, 3),
        "req_per_s": round(len(ms) / wall, 1) if wall else 0.0,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan"),
        "client_procs": raw["client_procs"],
        # Cores the load generator used; near client_procs means it, not the server, set the pace.
        "client_cpu_cores": round(raw["client_cpu_s"] / wall, 2) if wall else 0.0,
    } | {k: raw[k] for k in ("server_cpu_cores", "gpu_util_pct", "gpu_mem_mib") if k in raw}


# ----------------------------------------------------------------------------- server-side accounting


def role(cmdline: list[str], name: str) -> str | None:
    """Which part of the serving stack a process is, from its title; None for processes we do not count."""
    text = " ".join(cmdline)
    if "multiprocessing" in text:  # our own client processes: they report their CPU themselves
        return None
    if name == "haproxy":  # RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy takes the Python proxy's place
        return "haproxy"
    for marker, label in (
        ("ProxyActor", "serve-proxy"),
        ("HfrayIngress", "hfray-ingress"),
        ("HfrayClassifier", "hfray-model-replica"),
        ("ServeController", "serve-controller"),
        ("--baseline-server", "baseline-server"),
    ):
        if marker in text:
            return label
    if name in ("raylet", "gcs_server") or "ray/" in text or text.startswith("ray::"):
        return "ray-other"
    return "other"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process's descendants (our Ray cluster, our baseline server), by role."""
    import psutil

    totals: dict[str, float] = {}
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            label = role(proc.cmdline(), proc.name())
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if label is not None:
            totals[label] = totals.get(label, 0.0) + t.user + t.system
    return totals


class GpuSampler:
    """Mean GPU utilisation (%) and peak memory (MiB) of GPU 0 while running; empty without NVML."""

    def __init__(self, period_s: float = 0.1) -> None:
        self.period_s = period_s
        self.util: list[int] = []
        self.mem_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML, no GPU, no driver: nothing to sample
            return self

        def loop() -> None:
            while not self._stop.wait(self.period_s):
                self.util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                self.mem_mib = max(self.mem_mib, pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, float]:
        if not self.util:
            return {}
        return {"gpu_util_pct": round(statistics.fmean(self.util), 1), "gpu_mem_mib": round(self.mem_mib)}


@contextmanager
def server_accounting(out: dict[str, Any]):
    """Fill ``out`` with the server's cores used by role and GPU use over the ``with`` block."""
    before, t0 = cpu_by_role(), time.monotonic()
    with GpuSampler() as gpu:
        yield
    after, wall = cpu_by_role(), time.monotonic() - t0
    cores = {k: round((v - before.get(k, 0.0)) / wall, 2) for k, v in sorted(after.items())}
    out["server_cpu_cores"] = {k: v for k, v in cores.items() if v >= 0.01}
    out |= gpu.summary()


def measure(url: str, concurrency: int, total: int, seconds: float, procs: int) -> dict[str, Any]:
    """A summarised level: throughput, latency, client CPU, and the server's CPU and GPU use."""
    return summarize(run_level(url, concurrency, total, seconds, procs), concurrency)
