"""grpo data on the driver and the workers alike: the prompts (``trl.prompt_column`` renamed to TRL's ``prompt``)
and the columns the rewards read (reference answers), nothing else."""

from __future__ import annotations

from typing import Any

from hfray.config import JobConfig
from hfray.data.splits import load_splits
from hfray.errors import DataError
from hfray.train.recipes.grpo.rewards import check_rewards, reward_columns


def load_grpo_splits(job: JobConfig, check: bool = False) -> dict[str, Any]:
    """{'train', 'validation'}: prompts plus the rewards' columns; ``check``: the rewards against each split
    (columns, functions, reward models), before anything is selected."""
    assert job.trl is not None
    prompt = job.trl.prompt_column
    keep = [prompt, *(c for c in reward_columns(job) if c != prompt)]

    def on_load(ds: Any, field: str) -> Any:
        if prompt not in ds.column_names:
            raise DataError(
                f"{field}: prompt column {prompt!r} not found (have {ds.column_names}); set trl.prompt_column"
            )
        if check:
            check_rewards(job, ds.column_names)
        ds = ds.select_columns(keep)
        return ds.rename_column(prompt, "prompt") if prompt != "prompt" else ds

    splits = load_splits(job.data, on_load)
    return {"train": splits["train"], "validation": splits["validation"]}
