"""``hfray cluster up|status|down``: a local multi-node Ray cluster for development (:mod:`hfray.cluster.local`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hfray.cluster.local import DEFAULT_STATE, LocalRayCluster, alive_nodes, start_local_ray_cluster, warm_up
from hfray.errors import HfrayError


def add_cluster_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="a local multi-node Ray cluster for development: up, status, down")
    p.add_argument("action", choices=["up", "status", "down"])
    p.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    p.add_argument("--cpus-per-node", type=float, default=1, help="logical CPUs of each node (fractions allowed)")
    p.add_argument("--head-cpus", type=float, default=None, help="CPUs of the head (default: --cpus-per-node)")
    p.add_argument(
        "--warm-workers",
        type=int,
        default=1,
        help="idle Ray workers per node with the training stack imported, for one-task runs (default 1; 0: none)",
    )
    p.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"where the cluster is recorded ({DEFAULT_STATE})")
    p.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    if args.action == "up":
        if args.state.is_file() and LocalRayCluster.load(args.state).alive_pids():
            raise HfrayError(f"a local cluster recorded at {args.state} is running: hfray cluster down first")
        cluster = start_local_ray_cluster(args.workers, args.cpus_per_node, args.head_cpus)
        cluster.save(args.state)
        warmed = warm_up(cluster.address, args.warm_workers) if args.warm_workers > 0 else 0
        print(f"local Ray cluster up: head + {args.workers} worker nodes ({args.state})")
        if warmed:
            print(f"  {args.warm_workers} warm worker(s) starting on each of {warmed} nodes (for one-task runs)")
        print(f"  export RAY_ADDRESS={cluster.address}")
        print(f"  dashboard / jobs: {cluster.dashboard_url}   (ray job submit --address {cluster.dashboard_url} ...)")
        print(f"  node resources: {cluster.node_resources}   logs: {cluster.temp_dir}")
        return 0
    cluster = LocalRayCluster.load(args.state)
    alive = cluster.alive_pids()
    if args.action == "status":
        nodes = alive_nodes(cluster.dashboard_url) if alive else 0
        print(
            f"{cluster.address}: {nodes} nodes alive ({len(alive)}/{len(cluster.pids)} node processes), "
            f"dashboard {cluster.dashboard_url}"
        )
        return 0 if alive else 1
    cluster.stop()
    args.state.unlink(missing_ok=True)
    print(f"local Ray cluster at {cluster.address} stopped")
    return 0
