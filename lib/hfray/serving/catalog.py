"""The artifact catalog: which model ids an artifact root serves, and where each one lives.

The catalog maps a model id (an artifact folder name under the artifact root, a sweep's trial, or ``best``) to
its directory; it is the one place that decides whether an id is safe, so ids such as ``../x`` or ``/etc`` can
never name a directory outside the root. Used by the driver (``hfray serve`` lists the models) and every replica.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfray.artifacts.manifest import read_manifest
from hfray.errors import ArtifactError
from hfray.serving.config import MODEL_ID
from hfray.storage.layout import ARTIFACT_DIR, MANIFEST, SWEEP_SUMMARY, TRIALS_DIR


class ModelIdError(ValueError):
    """A client-supplied model id is malformed, escapes the root, or is unknown (``status`` says which)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    path: str
    manifest: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        keep = ("task", "labels", "name", "run_name", "metrics", "best")
        return {"id": self.model_id, **{k: m[k] for k in keep if k in m}}


def _artifact_dir(candidate: Path) -> Path | None:
    """``candidate`` itself if it is an artifact, or its ``artifact/`` sub-folder (a run dir)."""
    if (candidate / MANIFEST).is_file():
        return candidate
    if (candidate / ARTIFACT_DIR / MANIFEST).is_file():
        return candidate / ARTIFACT_DIR
    return None


BEST_ID = "best"  # a sweep's exported best model


class ArtifactCatalog:
    """Local artifact root -> model ids. Looked up per request so new sweep trials appear without a restart."""

    def __init__(self, root: str, allowed: list[str] | None = None, ttl_s: float = 0.0) -> None:
        """``ttl_s`` > 0 reuses a successful lookup for that long (the ingress: ~0.3 ms of syscalls a request)."""
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        if not self.root.is_dir():
            raise ArtifactError(f"artifact_root: {self.root} is not a directory")
        self.allowed = set(allowed) if allowed else None
        # A sweep folder serves its exported best as 'best' and every trial that exported one by trial id.
        self.sweep = (self.root / SWEEP_SUMMARY).is_file()
        # A single artifact is served under its own folder name (or its run's name for '<run>/artifact').
        self.single = not self.sweep and _artifact_dir(self.root) is not None
        self._manifests: dict[tuple[str, float], dict[str, Any]] = {}
        self.ttl_s = ttl_s
        self._recent: dict[str, tuple[float, ModelEntry]] = {}

    def ids(self) -> list[str]:
        if self.single:
            found = [self._single_id()]
        elif self.sweep:
            trials = self.root / TRIALS_DIR
            runs = sorted(trials.iterdir()) if trials.is_dir() else []
            found = [BEST_ID] if _artifact_dir(self.root) else []
            found += [p.name for p in runs if MODEL_ID.match(p.name) and _artifact_dir(p)]
        else:
            found = sorted(p.name for p in self.root.iterdir() if MODEL_ID.match(p.name) and self._inside(p))
        return [m for m in found if self.allowed is None or m in self.allowed]

    def _inside(self, candidate: Path) -> bool:
        """An artifact whose real location (symlinks resolved) is under the root."""
        path = _artifact_dir(candidate)
        return path is not None and path.resolve().is_relative_to(self.root.resolve())

    def _single_id(self) -> str:
        return self.root.parent.name if self.root.name == ARTIFACT_DIR else self.root.name

    def resolve(self, model_id: str) -> ModelEntry:
        if not isinstance(model_id, str) or not MODEL_ID.match(model_id):
            raise ModelIdError(f"model: {model_id!r} is not a valid model id (a folder name, no '/' or '..')", 400)
        if self.allowed is not None and model_id not in self.allowed:
            raise ModelIdError(f"model: unknown model id {model_id!r}; see GET /v1/models", 404)
        now = time.monotonic()
        hit = self._recent.get(model_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        entry = self._lookup(model_id)
        if self.ttl_s > 0:
            if len(self._recent) > 4096:  # bounded: ids come from clients (though only existing ones get here)
                self._recent.clear()
            self._recent[model_id] = (now, entry)
        return entry

    def _lookup(self, model_id: str) -> ModelEntry:
        if self.single:
            path = self.root if model_id == self._single_id() else None
        elif self.sweep:
            path = _artifact_dir(self.root if model_id == BEST_ID else self.root / TRIALS_DIR / model_id)
        else:
            path = _artifact_dir(self.root / model_id)
        if path is None:
            raise ModelIdError(f"model: unknown model id {model_id!r}; see GET /v1/models", 404)
        # The regex already forbids separators; resolving symlinks keeps a link inside the root from escaping.
        if not self.single and not path.resolve().is_relative_to(self.root.resolve()):
            raise ModelIdError(f"model: {model_id!r} points outside the artifact root", 400)
        return ModelEntry(model_id, str(path), self._manifest(path))

    def _manifest(self, path: Path) -> dict[str, Any]:
        # Cached by mtime: a promoted artifact rewritten in place is re-read, an unchanged one is not.
        key = (str(path), (path / MANIFEST).stat().st_mtime)
        if key not in self._manifests:
            self._manifests[key] = read_manifest(str(path))
        return self._manifests[key]

    def entries(self) -> list[ModelEntry]:
        return [self.resolve(mid) for mid in self.ids()]

    def default_id(self, configured: str | None) -> str:
        if configured:
            try:
                return self.resolve(configured).model_id
            except ModelIdError as exc:
                raise ArtifactError(f"default_model: {exc}; found {self.ids()}") from None
        ids = self.ids()
        if BEST_ID in ids and self.sweep:
            return BEST_ID
        if not ids:
            raise ArtifactError(f"artifact_root: no hfray artifacts ({MANIFEST}) in {self.root}")
        return ids[0]
