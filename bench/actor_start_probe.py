"""Probe: how long a fresh job waits for a running actor on a running local cluster, with and without a runtime_env.

Issue 19's question: would hfray's Train actors start faster if they could take one of Ray's prestarted idle worker
processes? Ray prestarts ``num_cpus`` idle workers with an empty runtime env; an actor whose job or actor options
carry a ``runtime_env`` (hfray's job env vars; Ray Train V2 always gives its controller one) needs a fresh process.
Each run of this script is one job: ``ray.init`` to the cluster, then two actors one after the other; it prints the
seconds from ``ray.init`` to each actor's first answer.

    ray start --head --num-cpus 2 --port 6391 --include-dashboard false --disable-usage-stats
    for m in none env none env; do ADDR=127.0.0.1:6391 python bench/actor_start_probe.py $m; done
    ray stop --force
"""

from __future__ import annotations

import json
import os
import sys
import time

import ray


@ray.remote(num_cpus=0.5)
class Probe:
    def ready(self) -> int:
        return os.getpid()


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "none"
    env = {"env_vars": {"HFRAY_PROBE": "1"}} if mode == "env" else None
    t0 = time.time()
    ray.init(address=os.environ["ADDR"], runtime_env=env, log_to_driver=False)
    t1 = time.time()
    ray.get(Probe.remote().ready.remote())
    t2 = time.time()
    ray.get(Probe.remote().ready.remote())
    t3 = time.time()
    times = {"init_s": t1 - t0, "actor1_s": t2 - t1, "actor2_s": t3 - t2}
    print(json.dumps({"mode": mode, **{k: round(v, 2) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
