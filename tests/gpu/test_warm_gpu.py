"""Warm workers on a GPU host (hfray.cluster.warm): their preload must leave CUDA untouched.

A warm worker imports torch and the Trainer stack before Ray hands it a task; Ray sets ``CUDA_VISIBLE_DEVICES``
only then. If the preload had initialized CUDA, the process would keep seeing every GPU of the node and a second
run would train on the first run's GPU. Here, in a fresh process like a warm worker: preload with no
``CUDA_VISIBLE_DEVICES``, then set it to a GPU that does not exist; CUDA must honour it (no device), as it does
for a process that imported nothing. ``python -m pytest -m gpu tests/gpu/test_warm_gpu.py`` (seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

CODE = """
import json, os, sys
from hfray.cluster import warm
if sys.argv[1] == "preload":
    warm.preload()
os.environ["CUDA_VISIBLE_DEVICES"] = "987"  # what Ray would set at the task's start; no such GPU
import torch
print(json.dumps({"loaded": "transformers.trainer" in sys.modules, "devices": torch._C._cuda_getDeviceCount()}))
"""


@pytest.mark.parametrize("mode", ["preload", "bare"])
def test_a_preloaded_process_still_takes_the_gpus_ray_gives_it(mode: str) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-c", CODE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"loaded": mode == "preload", "devices": 0}, result
