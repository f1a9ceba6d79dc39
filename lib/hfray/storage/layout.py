"""What hfray leaves under ``storage.path``, by name::

<run>/checkpoint_step_<N>/     Ray Train checkpoints = HF Trainer checkpoint folders (resumable)
<run>/hfray_metrics.jsonl      every report of the run (rank 0's metrics), one JSON per line
<run>/artifact/                the best model: save_pretrained model + tokenizer + hfray_manifest.json
<run>/learning_curve.png|json  the learning curve and its diagnosis
<sweep>/hfray_sweep.json       a finished sweep's summary (written last)
<sweep>/trials/<trial run>/    each trial's Train run, laid out as above
<name>-<hash>.latest           the latest run of a job started with --fresh (a rerun of the job resumes it)
"""

from __future__ import annotations

from hfray.storage.fs import join

ARTIFACT_DIR = "artifact"
MANIFEST = "hfray_manifest.json"
METRICS_LOG = "hfray_metrics.jsonl"
# A sweep folder: its summary (written last, so it marks a finished sweep) and its trials' Train runs.
SWEEP_SUMMARY = "hfray_sweep.json"
TRIALS_DIR = "trials"
TUNER_STATE = "tuner.pkl"  # Ray Tune's experiment state: an interrupted sweep has it, no summary yet
# A run's learning curve and its diagnosis (hfray.train.tracking.curves).
CURVE_PNG, CURVE_JSON = "learning_curve.png", "learning_curve.json"


def latest_pointer(storage: str, stable_name: str) -> str:
    """The file naming the latest run of a job (or sweep) whose stable name is ``stable_name``."""
    return join(storage, f"{stable_name}.latest")


def run_dir(storage: str, run_name: str) -> str:
    return join(storage, run_name)


def artifact_uri(storage: str, run_name: str) -> str:
    return join(storage, run_name, ARTIFACT_DIR)


def metrics_log_uri(run_dir: str) -> str:
    return join(run_dir, METRICS_LOG)
