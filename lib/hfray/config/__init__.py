"""The job file: one pydantic v2 model per section, every problem reported at once.

Nothing here runs anything: the package is the schema that the driver validates before Ray starts and that
every Ray process re-validates on arrival (a job crosses Ray boundaries as ``job.to_dict()``). One module per
section (``model``, ``data``, ``training`` ...), the :class:`~hfray.config.section.Section` base on its own,
:class:`~hfray.config.job.JobConfig` tying them together, :mod:`~hfray.config.loading` reading YAML files.
"""

from hfray.config.data import DataConfig
from hfray.config.evaluation import CLASSIFICATION_METRICS, EvaluationConfig
from hfray.config.job import LOSS_ONLY_TASKS, TASKS, JobConfig
from hfray.config.lm import LM_TASKS, LMConfig, TokenizerTrainingConfig
from hfray.config.loading import apply_overrides, load_job, parse_overrides, read_yaml
from hfray.config.model import ModelConfig
from hfray.config.peft import PeftSection
from hfray.config.resources import ClusterConfig, ResourcesConfig
from hfray.config.section import Section
from hfray.config.steps import steps_per_epoch, total_steps
from hfray.config.storage import StorageConfig
from hfray.config.sweep import SweepConfig
from hfray.config.tasks import FINETUNE_TASKS
from hfray.config.tracking import TrackingConfig
from hfray.config.training import TrainingConfig
from hfray.config.trl import TRL_TASKS, TrlSection

__all__ = [
    "CLASSIFICATION_METRICS",
    "FINETUNE_TASKS",
    "LM_TASKS",
    "LOSS_ONLY_TASKS",
    "TASKS",
    "TRL_TASKS",
    "ClusterConfig",
    "DataConfig",
    "EvaluationConfig",
    "JobConfig",
    "LMConfig",
    "ModelConfig",
    "PeftSection",
    "ResourcesConfig",
    "Section",
    "StorageConfig",
    "SweepConfig",
    "TokenizerTrainingConfig",
    "TrackingConfig",
    "TrainingConfig",
    "TrlSection",
    "apply_overrides",
    "load_job",
    "parse_overrides",
    "read_yaml",
    "steps_per_epoch",
    "total_steps",
]
