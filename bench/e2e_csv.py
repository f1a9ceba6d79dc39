"""Write a learnable two-class CSV (text,label) for end-to-end runs on machines without the builtin datasets.

    python3 bench/e2e_csv.py /tmp/e2e.csv [rows]

A row is "fresh" when its text holds a positive cue word, "rotten" when a negative one; the rest are filler words.
"""

from __future__ import annotations

import csv
import random
import sys

FILLER = [
    "the",
    "a",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "music",
    "was",
    "is",
    "and",
    "of",
    "it",
    "with",
    "long",
    "short",
    "night",
    "city",
    "old",
    "new",
]
CUES = {"fresh": ["great", "superb", "moving", "delightful"], "rotten": ["awful", "dull", "tedious", "clumsy"]}


def main(path: str, rows: int = 4000) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(rows):
            label = "fresh" if i % 2 else "rotten"
            words = rng.choices(FILLER, k=rng.randint(8, 30))
            words.insert(rng.randrange(len(words) + 1), rng.choice(CUES[label]))
            w.writerow([" ".join(words), label])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4000)
