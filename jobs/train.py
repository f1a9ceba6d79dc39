"""Entry point for `ray job submit`: train an hfray job file on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train.py jobs/rotten_tomatoes_minilm.yaml

Inside a Ray job, RAY_ADDRESS is set, so hfray attaches to that cluster instead of starting one.
Arguments are those of `hfray train`: a job file, then section.key=value overrides.
"""

import sys

from hfray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
