"""A multi-node Ray cluster on one machine, for development and tests: a head and worker nodes, each a
``ray start --block`` process with its own CPUs and a custom resource naming the node (``node_1`` ...).
Started and stopped by the driver (``hfray cluster``, tests).

Each node is its own process group that hfray started, so stopping the cluster signals exactly those
processes: never ``ray stop``, which stops every Ray cluster of the machine (other developers' too).

    hfray cluster up --workers 2 --cpus-per-node 1     # prints RAY_ADDRESS and the dashboard URL
    hfray cluster status
    hfray cluster down
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hfray.errors import HfrayError

DEFAULT_STATE = Path("~/.hfray/local_cluster.json").expanduser()
NODE_IP = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (local clusters, local servers in tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind((NODE_IP, 0))
        return sock.getsockname()[1]


@dataclass
class LocalRayCluster:
    """A running local cluster: where to reach it and which processes are its nodes."""

    address: str  # GCS address for ``ray.init`` / ``ray start --address`` / $RAY_ADDRESS
    dashboard_url: str  # Job Submission API and dashboard
    temp_dir: str
    pids: list[int] = field(default_factory=list)  # one ``ray start --block`` per node, head first
    node_resources: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LocalRayCluster:
        if not path.is_file():
            raise HfrayError(f"no local cluster recorded at {path} (start one with: hfray cluster up)")
        return cls(**json.loads(path.read_text()))

    def alive_pids(self) -> list[int]:
        return [pid for pid in self.pids if _is_our_node(pid, self.temp_dir)]

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM each node (workers first): ``ray start --block`` then stops its own daemons and workers."""
        for pid in reversed(self.alive_pids()):
            _signal_group(pid, signal.SIGTERM)
        deadline = time.time() + timeout_s
        while self.alive_pids() and time.time() < deadline:
            time.sleep(0.2)
        for pid in self.pids:  # anything left in our process groups (a stuck worker) is ours to kill
            _signal_group(pid, signal.SIGKILL)


def client_env() -> dict[str, str]:
    """Environment for processes that talk to a local development cluster (drivers, ``ray job submit``).

    No graceful drain on stop: nothing outside the machine routes to a development cluster.
    """
    return {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _is_our_node(pid: int, temp_dir: str) -> bool:
    """The pid still runs a node of this cluster (not a recycled pid of someone else's process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and "ray" in cmdline and (temp_dir in cmdline or "--address" in cmdline)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # started with start_new_session: the group id is the node's pid


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray) if ray.exists() else "ray", "start", "--block", "--disable-usage-stats", *args]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def alive_nodes(dashboard_url: str) -> int:
    """How many nodes the dashboard at ``dashboard_url`` reports alive (0 when it does not answer)."""
    import httpx

    try:
        resp = httpx.get(f"{dashboard_url}/nodes?view=summary", timeout=5)
        nodes = resp.json()["data"]["summary"]
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
    return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")


def _wait_for_nodes(cluster: LocalRayCluster, count: int, procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if alive_nodes(cluster.dashboard_url) >= count:
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    cluster.stop()
    raise HfrayError(
        f"local cluster: {count} nodes did not come up within {timeout_s:.0f} s; see the logs in {cluster.temp_dir}"
    )


def start_local_ray_cluster(
    workers: int = 1,
    cpus_per_node: float = 1,
    head_cpus: float | None = None,
    env: dict[str, str] | None = None,
    temp_dir: str | None = None,
    timeout_s: float = 90,
) -> LocalRayCluster:
    """Start a head and ``workers`` worker nodes on this machine and wait until all are alive.

    ``env`` is added to every node's environment (and so to every Ray worker process): e.g. storage
    credentials, as a real cluster's nodes would have them.
    """
    # Short: Ray's Unix sockets live under temp_dir and their paths are limited to ~107 characters.
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="hfr-", dir="/tmp")
    port, dash = free_port(), free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.pop("RAY_ADDRESS", None)  # a node must not attach to some other cluster
    # A development cluster on loopback (dashboard and Job API bound to 127.0.0.1): no token auth, so
    # ``ray job submit`` and hfray reach it without a token; clients must say so too (see client_env).
    full_env.update(client_env())
    # Job entrypoints (``python jobs/train.py``) find this environment's Python, as on a real cluster's nodes.
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    cluster = LocalRayCluster(f"{NODE_IP}:{port}", f"http://{NODE_IP}:{dash}", temp_dir)
    head_res = {"head": 1.0}
    head = [
        "--head",
        f"--port={port}",
        f"--node-ip-address={NODE_IP}",
        f"--dashboard-host={NODE_IP}",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        f"--num-cpus={head_cpus if head_cpus is not None else cpus_per_node:g}",
        f"--resources={json.dumps(head_res)}",
        f"--temp-dir={temp_dir}",
    ]
    procs = [_ray_start(head, full_env, Path(temp_dir, "head.log"))]
    cluster.pids.append(procs[0].pid)
    cluster.node_resources.append(head_res)
    _wait_for_nodes(cluster, 1, procs, timeout_s)
    for i in range(1, workers + 1):
        res = {f"node_{i}": 1.0}
        args = [
            f"--address={cluster.address}",
            f"--node-ip-address={NODE_IP}",
            f"--num-cpus={cpus_per_node:g}",
            f"--resources={json.dumps(res)}",
        ]
        procs.append(_ray_start(args, full_env, Path(temp_dir, f"node_{i}.log")))
        cluster.pids.append(procs[-1].pid)
        cluster.node_resources.append(res)
        # One node at a time: a raylet gives up after 30 s waiting to register with the GCS (hardcoded in Ray
        # 2.60), and two nodes starting at once on a loaded 2-core machine timed out there.
        _wait_for_nodes(cluster, 1 + i, procs, timeout_s)
    return cluster


def warm_up(address: str, count: int, timeout_s: float = 60) -> int:
    """Start ``count`` warm workers (:mod:`hfray.cluster.warm`) on every node of the development cluster at
    ``address``. From a short-lived process of its own: this one's Ray connection (a test's, a notebook's) is left
    as it is. Returns how many nodes took them (0 when the request failed: runs then start cold)."""
    env = {**os.environ, **client_env()}
    env.pop("RAY_ADDRESS", None)
    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds the hfray package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "hfray.cluster.warm", address, str(count)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return 0
