"""PEFT adapters: the peft: section, every method on tiny models, and a LoRA run on Ray Train (2 workers)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_BERT, tiny_job
from hfray.config import JobConfig
from hfray.errors import ConfigError
from hfray.model import peft as peft_build
from hfray.model.builtin import resolve_model

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}


def _job(tmp_path: Path, data_files: dict[str, Path], **sections: Any) -> JobConfig:
    return JobConfig.from_dict(tiny_job(tmp_path, data_files, **sections))


@pytest.fixture(scope="module")
def pretrained_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier saved as if pretrained: LoRA needs real (frozen) base weights to adapt."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("pretrained-bert")
    source = resolve_model("builtin:all-MiniLM-L6-v2")
    arch = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    config = AutoConfig.for_model("bert", **arch, num_labels=2, id2label={0: "neg", 1: "pos"})
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- schema


def test_qlora_on_cpu_names_peft_method(tmp_path, data_files):
    with pytest.raises(ConfigError) as err:
        _job(tmp_path, data_files, peft={"method": "qlora"})
    text = str(err.value)
    assert "peft.method" in text and "CUDA" in text and "bitsandbytes" in text
    assert "model.name_or_path" in text  # qlora over a model built from a config is refused too


def test_peft_fields_must_fit_the_method(tmp_path, data_files):
    with pytest.raises(ConfigError) as err:
        _job(tmp_path, data_files, peft={"method": "prompt", "r": 4, "merge": True})
    text = str(err.value)
    assert "peft.r (only for lora/qlora)" in text
    with pytest.raises(ConfigError, match="peft.rank: unknown key Allowed here: method, r, alpha"):
        _job(tmp_path, data_files, peft={"rank": 4})
    with pytest.raises(ConfigError, match="pre-trains every weight"):
        JobConfig.from_dict(
            {
                "name": "x",
                "task": "causal-lm",
                "data": {"train": "t.txt"},
                "peft": {},
                "model": {"architecture": TINY_LLAMA, "tokenizer": "t"},
                "lm": {"pipeline": "datasets"},
            }
        )


def test_sweep_over_peft_rank_validates_edges(tmp_path, data_files):
    from hfray.tune.space import check_space

    sweep = {
        "parameters": {
            "peft.r": {"type": "choice", "values": [4, 16]},
            "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        },
        "num_samples": 2,
        "metric": "eval_accuracy",
    }
    job = _job(tmp_path, data_files, peft={"method": "lora"}, sweep=sweep)
    edges = check_space(job)
    assert [e.peft.r for e in edges] == [4, 16, 8, 8]  # the r edges, then the learning-rate edges at r=8
    bad = copy.deepcopy(sweep)
    bad["parameters"]["peft.r"]["values"] = [0, 8]
    with pytest.raises(ConfigError, match=r"sweep.parameters.peft.r"):
        check_space(_job(tmp_path, data_files, peft={"method": "lora"}, sweep=bad))


# ----------------------------------------------------------------------------- every method on tiny models


@pytest.mark.parametrize(
    ("arch", "peft", "expect_targets"),
    [
        (TINY_BERT, {"method": "lora", "r": 4}, ["query", "value"]),  # PEFT's per-architecture default
        (TINY_BERT, {"method": "ia3"}, ["key", "output.dense", "value"]),
        (TINY_BERT, {"method": "prompt", "num_virtual_tokens": 4}, []),
        (TINY_LLAMA, {"method": "lora", "target_modules": "all-linear"}, None),
        (TINY_LLAMA, {"method": "prefix", "num_virtual_tokens": 4}, []),
    ],
)
def test_each_method_wraps_and_trains_only_its_parameters(tmp_path, data_files, arch, peft, expect_targets):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    model_section = {"architecture": dict(arch), "tokenizer": "builtin:all-MiniLM-L6-v2"}
    job = _job(tmp_path, data_files, peft=peft, model=model_section)
    config = AutoConfig.for_model(**arch, vocab_size=64, num_labels=2)
    auto = AutoModelForCausalLM if arch is TINY_LLAMA else AutoModelForSequenceClassification
    model, info = peft_build.apply_peft(auto.from_config(config), job)
    assert 0 < info["trainable_params"] < info["all_params"]
    assert info["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if expect_targets is not None:
        assert info["target_modules"] == expect_targets
    out = model(input_ids=torch.randint(0, 64, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.long))
    out.logits.sum().backward()  # gradients reach the adapter
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_model_type_needs_target_modules(tmp_path, data_files):
    job = _job(tmp_path, data_files, peft={"method": "lora"})
    with pytest.raises(ConfigError, match="peft.target_modules.*no default target modules for model type 'mybert'"):
        peft_build.check_peft(job, "mybert")


# ----------------------------------------------------------------------------- LoRA on Ray Train


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lora_on_ray_trains_only_adapter_and_head_and_reloads(ray_cluster, tmp_path, data_files, pretrained_bert):
    from transformers import pipeline

    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.run import run_training

    raw = tiny_job(
        tmp_path,
        data_files,
        model={"name_or_path": str(pretrained_bert), "architecture": None, "tokenizer": None},
        peft={"method": "lora", "r": 4, "alpha": 8, "merge": True},
        training={"learning_rate": 5e-3, "max_steps": 16, "eval_steps": 8},
    )
    summary = run_training(JobConfig.from_dict(raw))
    artifact = Path(summary.artifact)
    manifest = summary.manifest
    info = manifest["peft"]
    # The trainable count is printed and recorded: LoRA on query/value plus the classifier head, nothing else.
    assert info["target_modules"] == ["query", "value"]
    assert info["trainable_params"] < 0.2 * info["all_params"]
    # PEFT format: adapter config + weights (LoRA matrices and the head), no full model at the top level.
    assert (artifact / "adapter_config.json").is_file() and not (artifact / "model.safetensors").exists()
    from safetensors.torch import load_file

    saved = load_file(str(artifact / "adapter_model.safetensors"))
    assert saved and all("lora_" in k or "classifier" in k for k in saved)

    # Base weights before (the pretrained folder) and after (the merged export): identical except where
    # LoRA was merged in (query, value) and the trained head.
    before, after = _state(pretrained_bert), _state(artifact / "merged")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "training changed nothing"
    assert all(".query." in k or ".value." in k or k.startswith("classifier") for k in changed), changed
    assert any(".query.weight" in k for k in changed) and "classifier.weight" in changed

    # The adapter reloads (base + adapter) and predicts exactly as the merged model and the trained one did.
    texts = ["great superb film", "awful dull plot", "the movie scene"]
    adapter_pipe = load_artifact_pipeline(str(artifact))
    merged_pipe = pipeline("text-classification", model=str(artifact / "merged"))
    a, m = adapter_pipe(texts, top_k=None), merged_pipe(texts, top_k=None)
    for ra, rm in zip(a, m, strict=True):
        sa, sm = {d["label"]: d["score"] for d in ra}, {d["label"]: d["score"] for d in rm}
        assert sa.keys() == {"neg", "pos"} and all(abs(sa[k] - sm[k]) < 1e-5 for k in sa)
    # hfray serve's replica loads the adapter artifact the same way (base + adapter, merged) and scores alike.
    from hfray.serving.replica.models import LoadedModel

    served = LoadedModel(str(artifact), "cpu", torch.float32, max_length=16).predict(texts, [2] * len(texts))
    for rs, ra in zip(served, a, strict=True):
        sa = {d["label"]: d["score"] for d in ra}
        assert all(abs(d["score"] - sa[d["label"]]) < 1e-5 for d in rs)
    import csv

    with open(data_files["validation"]) as f:
        rows = list(csv.DictReader(f))
    preds = adapter_pipe([r["text"] for r in rows])
    accuracy = sum(p["label"] == r["label"] for p, r in zip(preds, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(manifest["metrics"]["eval_accuracy"], abs=1e-9)
