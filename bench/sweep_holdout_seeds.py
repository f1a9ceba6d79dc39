"""The sweep-vs-single holdout bench across splits: one table from several ``bench/sweep_holdout.py`` results.

Each input is the JSON of one run of ``bench/sweep_holdout.py ... --only single asha`` with ``sweep.refit=true``
on one ``--split-seed``: a single default run, the sweep's selected checkpoint and its refit, each re-scored row by
row on that split's test rows. Per split: test accuracy, the paired gain over the single run (± its SE, z) and
wall-time ratios, against the single run as it ran and, with ``--single-2cpus``, against a single run given the
whole box (its wall seconds, from that run's JSON). Across splits: the mean gain, its spread (sample standard
deviation) and standard error (sd / sqrt(k)), and a pooled z (sum of gains / sqrt(sum of squared SEs), as if the
splits' test rows were independent; they are drawn from the same 12,808 rows, ~10% of them shared by two splits).

    python bench/sweep_holdout_seeds.py bench/results/sweep_cpu_holdout_v5.json \\
        bench/results/sweep_cpu_holdout_v6_seed1.json bench/results/sweep_cpu_holdout_v6_seed2.json \\
        --single-2cpus bench/results/sweep_cpu_holdout_v5_single_2cpus.json --out bench/results/sweep_cpu_holdout_seeds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from typing import Any

KINDS = {"selected checkpoint": "selected", "refit": "refit"}


def _kind(contender: str) -> str | None:
    if contender.startswith("single"):
        return "single"
    return next((v for k, v in KINDS.items() if k in contender), None)


def per_split(path: str) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    rows = {_kind(r["contender"]): r for r in data["results"]}
    return {"path": path, "seed": data["meta"].get("split_seed", 0), "rows": rows}


def _gain(row: dict[str, Any]) -> tuple[float, float, float | None]:
    p = row["paired_vs_first"]
    return 100 * p["gain"], 100 * p["se"], p["z"]


def table(splits: list[dict[str, Any]], single_2cpus: float | None) -> list[str]:
    lines = [
        "| split seed | single: test acc., wall s | selected ckpt: test acc. | paired gain ± SE (z; won/lost) | "
        "wall s, x single | x 2-CPU single | refit: test acc. | paired gain ± SE (z; won/lost) | wall s, x single | "
        "x 2-CPU single |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in splits:
        single = s["rows"]["single"]
        cells = [str(s["seed"]), f"{single['test_accuracy']:.4f}, {single['wall_seconds']:.0f}"]
        for kind in ("selected", "refit"):
            r = s["rows"][kind]
            gain, se, z = _gain(r)
            p = r["paired_vs_first"]
            wall = r["wall_seconds"]
            cells += [
                f"{r['test_accuracy']:.4f}",
                f"{gain:+.1f} ± {se:.1f} (z {z:.1f}; {p['wins']}/{p['losses']})",
                f"{wall:.0f}, {wall / single['wall_seconds']:.2f}x",
                f"{wall / single_2cpus:.2f}x" if single_2cpus else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def across(splits: list[dict[str, Any]]) -> list[str]:
    lines = ["", "| model | mean gain (points) | sd across splits | SE of the mean | pooled z | splits with gain > 0 |"]
    lines.append("|---|---|---|---|---|---|")
    for kind in ("selected", "refit"):
        gains = [_gain(s["rows"][kind]) for s in splits]
        values = [g for g, _, _ in gains]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        pooled = sum(values) / math.sqrt(sum(se**2 for _, se, _ in gains))
        lines.append(
            f"| {kind} | {statistics.mean(values):+.2f} | {sd:.2f} | {sd / math.sqrt(len(values)):.2f} | "
            f"{pooled:.1f} | {sum(v > 0 for v in values)} of {len(values)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="sweep_holdout.py JSON files, one per split seed")
    parser.add_argument("--single-2cpus", help="JSON of a single run with resources.cpus_per_worker=2")
    parser.add_argument("--out", required=True, help="path prefix for .md")
    args = parser.parse_args()
    splits = [per_split(p) for p in args.results]
    single_2cpus = None
    if args.single_2cpus:
        single_2cpus = per_split(args.single_2cpus)["rows"]["single"]["wall_seconds"]
    lines = ["# Sweep vs one default run across train / validation / test splits", ""]
    lines += [f"Inputs: {', '.join(f'`{p}`' for p in args.results)}; 2-CPU single run: `{args.single_2cpus}`", ""]
    lines += table(splits, single_2cpus) + across(splits)
    with open(f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
