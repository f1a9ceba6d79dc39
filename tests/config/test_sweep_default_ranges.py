"""Search-space keys named without a range (``{}``) get the documented default range."""

from __future__ import annotations

import pytest

from hfray.config import JobConfig
from hfray.errors import ConfigError


def _job(model: dict, **extra: object) -> dict:
    return {
        "name": "defaults",
        "model": model,
        "data": {"train": "train.csv"},
        "sweep": {
            "parameters": {
                "training.learning_rate": {},
                "training.warmup_steps": None,
                "training.weight_decay": {},
                "training.per_device_train_batch_size": {"type": "choice", "values": [16, 32]},
            }
        },
        **extra,
    }


@pytest.mark.parametrize(
    ("model", "extra", "low", "high"),
    [
        ({"name_or_path": "builtin:all-MiniLM-L6-v2"}, {}, 1e-5, 1e-4),
        ({"architecture": {"model_type": "bert"}, "tokenizer": "builtin:all-MiniLM-L6-v2"}, {}, 1e-4, 3e-3),
        ({"name_or_path": "builtin:all-MiniLM-L6-v2"}, {"peft": {"method": "lora"}}, 5e-5, 1e-3),
    ],
)
def test_empty_parameters_get_the_default_range_of_their_key_and_model_family(model, extra, low, high):
    params = JobConfig.from_dict(_job(model, **extra)).sweep.parameters
    lr = params["training.learning_rate"]
    assert (lr.type, lr.low, lr.high) == ("loguniform", low, high)
    assert (params["training.warmup_steps"].low, params["training.warmup_steps"].high) == (0.0, 0.2)
    assert params["training.weight_decay"].values == [0.0, 0.01, 0.1]
    assert params["training.per_device_train_batch_size"].values == [16, 32]  # given ranges are kept


def test_a_key_without_a_default_range_is_an_error_naming_it():
    raw = _job({"name_or_path": "builtin:all-MiniLM-L6-v2"})
    raw["sweep"]["parameters"]["training.num_train_epochs"] = {}
    with pytest.raises(ConfigError) as err:
        JobConfig.from_dict(raw)
    assert "training.num_train_epochs" in str(err.value)
