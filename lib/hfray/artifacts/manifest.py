"""The artifact manifest, ``hfray_manifest.json``: one schema for every task, with a version.

Written last into every artifact (its presence marks a finished run) by one builder, :func:`build_manifest`;
read by ``hfray predict``, ``hfray serve``, ``hfray runs``, MLflow and the sweep report. Every manifest carries
every key of :data:`KEYS` (``None`` or empty where a task has nothing to say):

=========================== =====================================================================================
``format``                  the schema version, :data:`FORMAT`
``task``                    what ``transformers.pipeline`` loads the model as (text-classification, fill-mask,
                            text-generation, token-classification, hfray-question-answering, hfray-seq2seq)
``training_task``           the job's ``task`` (text-classification, masked-lm, causal-lm, sft, dpo, ...)
``name``, ``run_name``      the job's name and the run (or sweep trial) that trained the model
``labels``                  label names in id order (``[]`` for tasks without labels)
``metrics``                 the final evaluation of the exported model (``eval_*``, ``test_*``)
``best``                    ``{step, metric, value}``: the checkpoint the model comes from
``global_step``             optimizer steps of the run; ``resumed_from_step``: where the last attempt resumed
``train_seconds_this_attempt``  wall time of ``Trainer.train`` in the last attempt
``throughput``              ``steady_state`` (samples/s, tokens/s, MFU: :mod:`hfray.train.callbacks.throughput`)
                            plus the task's own counts (tokens trained, tokens/s, peak memory per rank)
``data``                    what the data was (fingerprint and split sizes, or the LM pipeline's facts)
``model``                   ``{parameters, attention, liger_kernel, torch_compile, cuda_graphs}`` of the trained
                            model: its size, the attention kernel it trained with and hfray's kernel defaults as the
                            run resolved them
``peft``                    the adapter (method, targets, trainable parameters), or ``None``
``pipeline_kwargs``         task settings ``transformers.pipeline`` gets (aggregation, QA windows, source prefix)
``generation``              generation defaults for predict and serve (``{}`` when the task generates nothing)
``sweep``                   the sweep that chose this model (name, trial, params, checkpoint), or ``None``
``timeline``                the run's start-up phases (:func:`hfray.timeline.phases`: driver marks, then rank
                            0's, seconds since the first), or ``None`` (an artifact exported by a sweep)
``job``                     the job as trained (a ``JobConfig`` dict)
``versions``                library versions; ``created_at``: UTC time of writing
=========================== =====================================================================================

Format 1 manifests (before this schema) are read with their missing keys filled in (:func:`upgrade`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hfray.errors import ArtifactError
from hfray.storage import fs
from hfray.storage.layout import MANIFEST

FORMAT = 2
KEYS = (
    "format",
    "task",
    "training_task",
    "name",
    "run_name",
    "labels",
    "metrics",
    "best",
    "global_step",
    "resumed_from_step",
    "train_seconds_this_attempt",
    "throughput",
    "data",
    "model",
    "peft",
    "pipeline_kwargs",
    "generation",
    "sweep",
    "timeline",
    "job",
    "versions",
    "created_at",
)
_EMPTY: dict[str, Any] = {"labels": [], "metrics": {}, "throughput": {}, "data": {}, "model": {}}
_EMPTY |= {"pipeline_kwargs": {}, "generation": {}, "best": {}}
_LIBRARIES = ("hfray", "ray", "torch", "transformers", "datasets", "tokenizers", "accelerate", "evaluate", "peft")


def build_manifest(
    *, task: str, job: dict[str, Any], run_name: str, metrics: dict[str, Any], best: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """The manifest of an artifact: ``task`` is the pipeline name, ``job`` the job dict; ``fields`` any other
    key of :data:`KEYS` (unknown keys are a programming error). Keys not given get their empty value."""
    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        raise ValueError(f"not manifest keys: {unknown}; the schema is hfray.artifacts.manifest.KEYS")
    manifest: dict[str, Any] = {key: _EMPTY.get(key) for key in KEYS}
    manifest.update(
        format=FORMAT,
        task=task,
        training_task=job["task"],
        name=job["name"],
        run_name=run_name,
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        best=best,
        job=job,
        versions=library_versions(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    manifest.update({k: v for k, v in fields.items() if v is not None or _EMPTY.get(k) is None})
    return manifest


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest of any format as the current schema: format 1 named the job's task ``hfray_task`` (pre-training,
    fine-tuning tasks), ``training_task`` (TRL) or not at all (classification, where it is ``task``)."""
    if manifest.get("format") == FORMAT:
        return {**{key: _EMPTY.get(key) for key in KEYS}, **manifest}  # keys added since, as their empty value
    out = {key: manifest.get(key, _EMPTY.get(key)) for key in KEYS}
    job_task = (manifest.get("job") or {}).get("task")
    out["training_task"] = manifest.get("training_task") or manifest.get("hfray_task") or job_task or out["task"]
    out["format"] = manifest.get("format", 1)
    return out


def write_manifest(local_dir: str, manifest: dict[str, Any]) -> None:
    Path(local_dir, MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def read_manifest(artifact: str) -> dict[str, Any]:
    """The manifest of an artifact folder (local or URI), in the current schema."""
    uri = fs.join(artifact, MANIFEST)
    if not fs.exists(uri):
        raise ArtifactError(f"{artifact}: not an hfray artifact (no {MANIFEST})")
    return upgrade(json.loads(fs.read_text(uri)))


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the libraries that decide what an artifact is (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in (*_LIBRARIES, *extra):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
