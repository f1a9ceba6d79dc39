"""The best checkpoint of a PEFT sweep as a loadable adapter artifact.

A checkpoint of an adapter run holds the adapter only; an adapter artifact also needs its base's config
(``base/``, with the base weights when the base was built from a config) and the manifest's ``peft`` facts.
The best run's own artifact, written by the same export as ``hfray train``
(:func:`hfray.artifacts.export.export_artifact`), holds both: the sweep's export takes them from there.
"""

from __future__ import annotations

import tempfile
from typing import Any

from hfray.artifacts.adapters import BASE_DIR
from hfray.artifacts.manifest import read_manifest
from hfray.storage import fs, layout


def run_artifact(trials_storage: str, runs: list[str]) -> str | None:
    """The artifact the best trial's last run exported, if it finished and exported one."""
    if not runs:
        return None
    path = fs.join(trials_storage, runs[-1], layout.ARTIFACT_DIR)
    return path if fs.exists(fs.join(path, layout.MANIFEST)) else None


def adapter_fields(base_job: dict[str, Any], trials_storage: str, runs: list[str]) -> dict[str, Any]:
    """``peft`` for the exported manifest when the sweep trains adapters (nothing otherwise)."""
    artifact = run_artifact(trials_storage, runs) if base_job.get("peft") else None
    return {"peft": read_manifest(artifact)["peft"]} if artifact else {}


def copy_adapter_base(base_job: dict[str, Any], trials_storage: str, runs: list[str], dest: str) -> None:
    """``base/`` of the best run's artifact into the exported artifact ``dest`` (adapter sweeps only)."""
    artifact = run_artifact(trials_storage, runs) if base_job.get("peft") else None
    if artifact is None or not fs.exists(fs.join(artifact, BASE_DIR)):
        return
    with tempfile.TemporaryDirectory(prefix="hfray-base-") as stage:
        fs.upload_dir(fs.download_dir(fs.join(artifact, BASE_DIR), stage), fs.join(dest, BASE_DIR))
