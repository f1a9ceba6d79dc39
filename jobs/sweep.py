"""Entry point for `ray job submit`: sweep an hfray job file (its `sweep:` section) on the job's cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/sweep.py jobs/rotten_tomatoes_sweep.yaml

Inside a Ray job, RAY_ADDRESS is set, so hfray attaches to that cluster. Arguments are those of
`hfray sweep`: a job file, section.key=value overrides, --resume or --fresh.
"""

import sys

from hfray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
