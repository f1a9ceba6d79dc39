"""Small learnable data sets for the fine-tuning tasks (no package ships NER or QA data).

Each is easy to learn from the words themselves and random enough not to be memorised: a tiny
model trained for a few dozen steps must score clearly better than an untrained one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

FILLER = ["the", "a", "was", "seen", "near", "with", "and", "today", "then", "there", "old", "new", "big", "small"]
PEOPLE = ["alice", "robert", "maria", "james", "sarah", "david", "laura", "peter"]
SURNAMES = ["smith", "jones", "brown", "wilson", "taylor", "clark"]
CITIES = ["paris", "london", "tokyo", "berlin", "madrid", "rome", "moscow", "cairo"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]


def ner_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Words with IOB tags: people (one or two words: B-PER I-PER) and cities (B-LOC) among filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        spans: list[tuple[list[str], list[str]]] = [([w], ["O"]) for w in rng.sample(FILLER, rng.randint(3, 6))]
        name = [rng.choice(PEOPLE)] + ([rng.choice(SURNAMES)] if rng.random() < 0.5 else [])
        spans.append((name, ["B-PER"] + ["I-PER"] * (len(name) - 1)))
        spans.append(([rng.choice(CITIES)], ["B-LOC"]))
        rng.shuffle(spans)
        rows.append({"tokens": [w for ws, _ in spans for w in ws], "tags": [t for _, ts in spans for t in ts]})
    return rows


def qa_rows(n: int, seed: int, min_words: int = 8, max_words: int = 40, cities: bool = True) -> list[dict[str, Any]]:
    """SQuAD-style rows: a context holding one city and one colour (a distractor); the question asks for the city.

    (Asking for either, by question, needs a few hundred steps of a tiny model: too long for the default suite.)
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(min_words, max_words))]
        city, color = rng.choice(CITIES), rng.choice(COLORS)
        words.insert(rng.randint(0, len(words)), city)
        words.insert(rng.randint(0, len(words)), color)
        context = " ".join(words) + " ."
        answer, question = (city, "which city is named ?") if cities else (color, "which colour is named ?")
        start = (" " + context + " ").index(f" {answer} ")  # word boundary: 'red' is not inside another word
        rows.append(
            {
                "id": str(i),
                "question": question,
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return rows


DICTIONARY = {
    "red": "rojo",
    "blue": "azul",
    "green": "verde",
    "cat": "gato",
    "dog": "perro",
    "house": "casa",
    "big": "grande",
    "small": "pequeno",
    "the": "el",
    "and": "y",
    "sees": "ve",
    "eats": "come",
}


def translation_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Word-for-word 'translations' through a fixed dictionary: learnable by a tiny encoder-decoder."""
    rng = random.Random(seed)
    words = sorted(DICTIONARY)
    rows = []
    for _ in range(n):
        source = [rng.choice(words) for _ in range(rng.randint(3, 6))]
        rows.append({"en": " ".join(source), "es": " ".join(DICTIONARY[w] for w in source)})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
