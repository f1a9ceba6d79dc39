"""From start/end logits of context windows to answer spans: shared by evaluation and the QA pipeline.

For each question, every window proposes its ``n_best`` highest start and end logits; a pair is a
candidate if both tokens are context tokens (their offsets are not ``None``), the end is not before
the start and the span is at most ``max_answer_length`` tokens. The candidate with the highest
start + end logit wins, across windows (the Hugging Face example's rule, SQuAD v1: always answer).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _window_candidates(
    start: np.ndarray, end: np.ndarray, offsets: list[Any], n_best: int, max_len: int
) -> list[tuple[float, int, int]]:
    """(score, first char, last char + 1) of the valid spans of one window."""
    found = []
    limit = len(offsets)
    for s in np.argsort(start)[::-1][:n_best]:
        for e in np.argsort(end)[::-1][:n_best]:
            if s >= limit or e >= limit or offsets[s] is None or offsets[e] is None:
                continue  # padding (logits padded past the window) or not a context token
            if e < s or e - s + 1 > max_len:
                continue
            found.append((float(start[s] + end[e]), int(offsets[s][0]), int(offsets[e][1])))
    return found


def best_answers(
    start_logits: Any,
    end_logits: Any,
    offsets: list[Any],
    example_ids: list[int],
    contexts: list[str],
    n_best: int,
    max_answer_length: int,
) -> list[dict[str, Any]]:
    """One ``{"answer", "score", "start", "end"}`` per context (score: the winning start + end logit)."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if len(start_logits) != len(example_ids):
        raise ValueError(f"{len(start_logits)} windows of logits for {len(example_ids)} windows")
    windows: dict[int, list[int]] = defaultdict(list)
    for w, example in enumerate(example_ids):
        windows[int(example)].append(w)
    results = []
    for i, context in enumerate(contexts):
        candidates = [
            cand
            for w in windows.get(i, [])
            for cand in _window_candidates(start_logits[w], end_logits[w], offsets[w], n_best, max_answer_length)
        ]
        if not candidates:
            results.append({"answer": "", "score": float("-inf"), "start": 0, "end": 0})
            continue
        score, first, last = max(candidates)
        results.append({"answer": context[first:last], "score": score, "start": first, "end": last})
    return results
