"""``hfray runs [ROOT]``: the runs and sweeps under a storage root with their best metrics, without Ray."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any

from hfray.artifacts.runs import list_runs, render
from hfray.storage.endpoint import ENDPOINT_ENV


def add_runs_parser(sub: Any) -> None:
    p = sub.add_parser("runs", help="list runs and sweeps under a storage root with their best metrics")
    p.add_argument("root", nargs="?", default="~/hfray_runs", help="storage.path of the jobs (local dir or s3://...)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible server for s3:// roots ($AWS_ENDPOINT_URL_S3)")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    if args.endpoint_url:
        os.environ[ENDPOINT_ENV] = args.endpoint_url
    rows = list_runs(args.root)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    elif rows:
        print(render(rows))
    else:
        print(f"no hfray runs or sweeps under {args.root}")
    return 0
