#!/usr/bin/env bash
# A multi-node Ray cluster on this machine for development and tests: a head plus worker nodes, each with
# its own CPUs and a custom resource naming it (head, node_1, node_2, ...). Stops only its own processes.
#
#   cluster/local_cluster.sh up --workers 2 --cpus-per-node 1   # prints RAY_ADDRESS and the dashboard URL
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh down
#
# Then: RAY_ADDRESS=<printed> RAY_AUTH_MODE=disabled hfray train jobs/tiny_bert_smoke.yaml resources.placement_strategy=SPREAD
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m hfray cluster "$@"
