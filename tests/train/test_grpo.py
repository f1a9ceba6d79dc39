"""GRPO on Ray Train: a tiny llama learns from rule-based rewards on 2 workers; rewards are checked before Ray."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_peft import TINY_LLAMA

from conftest import check_manifest, merge_sections
from hfray.config import JobConfig
from hfray.errors import ConfigError

DIGITS = ["<pad>", "<eos>", "<unk>", "+", "-", "=", *[str(i) for i in range(10)]]


@pytest.fixture(scope="module")
def digit_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer over digits and '+ - =': a tiny model's samples then vary enough to learn from."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(DIGITS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    path = tmp_path_factory.mktemp("digit-tokenizer")
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hfray text-classification artifact (labels fresh, rotten): a tiny BERT built from a config, saved with the
    MiniLM tokenizer and hfray's manifest, as ``hfray train`` exports one."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hfray.artifacts.manifest import build_manifest, write_manifest
    from hfray.model.builtin import resolve_model

    torch.manual_seed(0)
    labels = ["fresh", "rotten"]
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=30522,
        id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("classifier")
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("builtin:all-MiniLM-L6-v2")).save_pretrained(path)
    job = {"task": "text-classification", "name": "critic"}
    write_manifest(str(path), build_manifest(task="text-classification", job=job, run_name="critic", metrics={},
                                             best={}, labels=labels))  # fmt: skip
    return path


def good_reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    return [float(len(c)) for c in completions]


def no_kwargs(prompts: list[Any], completions: list[str]) -> list[float]:
    return [0.0 for _ in completions]


def needs_scale(prompts: list[Any], completions: list[str], scale: float, **kwargs: Any) -> list[float]:
    return [scale for _ in completions]


NOT_A_FUNCTION = 3


def sums(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs = [(rng.randint(0, 4), rng.randint(0, 4)) for _ in range(n)]
    return [{"question": f"{a} + {b} =", "answer": str(a + b)} for a, b in pairs]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_job(tmp_path: Path, tokenizer: Path | str, **sections: Any) -> dict[str, Any]:
    train = write_jsonl(tmp_path / "train.jsonl", sums(256, 1))
    val = write_jsonl(tmp_path / "val.jsonl", sums(8, 2))
    job: dict[str, Any] = {
        "name": "tiny-grpo",
        "task": "grpo",
        "model": {"architecture": dict(TINY_LLAMA), "tokenizer": str(tokenizer)},
        "data": {"train": str(train), "validation": str(val), "max_length": 32},
        "trl": {
            "prompt_column": "question",
            "num_generations": 8,
            "max_completion_length": 8,
            "beta": 0.05,
            "rewards": [
                {"kind": "numeric_match", "column": "answer"},
                {"kind": "length", "target": 2, "name": "short"},
            ],
        },
        "training": {
            "learning_rate": 3e-3,
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8,
            "eval_strategy": "steps",
            "eval_steps": 15,
            "logging_steps": 5,
            "extra_args": {"eval_on_start": True},
        },
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0},
        "tracking": {"mlflow": False, "progress_bar": False},
    }
    return merge_sections(job, sections)


def _log(run_dir: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(run_dir, "hfray_metrics.jsonl").read_text().splitlines()]


# Both slow: Ray workers importing trl take minutes on 2 cores; the 2-worker case is the must-show run.
@pytest.mark.parametrize(
    "workers",
    [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)],
)
def test_grpo_on_ray_raises_mean_reward_and_generates(ray_cluster, tmp_path, digit_tokenizer, classifier, workers):
    """Rule-based rewards (numeric match, a length penalty) and a reward model (a classifier artifact, weighted
    lightly) on a real Ray Train run: the mean reward of sampled completions rises."""
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.run import run_training

    critic = {"kind": "model", "artifact": str(classifier), "label": "fresh", "weight": 0.1}
    raw = grpo_job(tmp_path, digit_tokenizer, resources={"num_workers": workers})
    raw["trl"]["rewards"].append(critic)
    if workers == 1:
        raw["training"].update(per_device_train_batch_size=16, per_device_eval_batch_size=16)
    summary = run_training(JobConfig.from_dict(raw))
    evals = [r for r in _log(summary.run_dir) if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 15, 30]
    # The summed reward of sampled completions rose: the policy learnt to stop after ~2 tokens.
    assert evals[-1]["eval_reward"] > evals[0]["eval_reward"] + 0.3, [r["eval_reward"] for r in evals]
    assert evals[-1]["eval_rewards/short/mean"] > evals[0]["eval_rewards/short/mean"]
    assert evals[-1]["eval_completions/mean_length"] < evals[0]["eval_completions/mean_length"]
    assert 0 < evals[-1]["eval_rewards/model/mean"] < 1  # the classifier's probability of 'fresh'
    for key in ("eval_reward_std", "eval_kl", "eval_rewards/numeric_match/mean", "train_reward"):
        assert key in evals[-1]
    curve = json.loads(Path(summary.run_dir, "learning_curve.json").read_text())
    assert curve["metric"] == "eval_reward" and Path(summary.run_dir, "learning_curve.png").stat().st_size > 0
    m = summary.manifest
    check_manifest(m)
    assert m["task"] == "text-generation" and m["training_task"] == "grpo"
    assert m["throughput"]["world_size"] == workers and m["throughput"]["tokens_this_attempt"] > 0
    assert m["best"]["metric"] == "reward"
    pipe = load_artifact_pipeline(summary.artifact)
    out = pipe("1 + 2 =", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert out.startswith("1 + 2 =")


def test_rewards_score_completions(tmp_path, classifier):
    """Each rule-based kind, a function by import path and the reward model, on text and chat completions."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfray.train.recipes.grpo.rewards import build_rewards

    rewards = [
        {"kind": "exact_match", "column": "answer", "pattern": "<answer>(.*?)</answer>"},
        {"kind": "numeric_match", "column": "answer", "weight": 2.0},
        {"kind": "regex", "pattern": r"<answer>\d+</answer>"},
        {"kind": "length", "target": 2},
        {"kind": "function", "function": "test_grpo:good_reward"},
        {"kind": "model", "artifact": str(classifier), "label": "fresh"},
    ]
    job = JobConfig.from_dict(grpo_job(tmp_path, "t", trl={"rewards": rewards}))
    funcs, weights = build_rewards(job)
    assert [f.__name__ for f in funcs] == ["exact_match", "numeric_match", "regex", "length", "function", "model"]
    assert weights == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    completions = ["so <answer>12</answer>", [{"role": "assistant", "content": "it is 12.0"}], "<answer>7</answer>"]
    columns = {"answer": ["12", "12", "8"], "completion_ids": [[1] * 5, [1] * 2, [1] * 3]}
    scores = [f(prompts=["p"] * 3, completions=completions, **columns) for f in funcs]
    assert scores[:5] == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [-1.5, 0.0, -0.5], [22.0, 10.0, 18.0]]
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tokens = AutoTokenizer.from_pretrained(classifier)(["so <answer>12</answer>", "it is 12.0"], return_tensors="pt",
                                                       padding=True)  # fmt: skip
    with torch.no_grad():
        expected = model(**tokens).logits.softmax(-1)[:, 0].tolist()
    assert scores[5][:2] == pytest.approx(expected, abs=1e-5)


SCHEMA_ERRORS = [
    ({"rewards": [{"kind": "regex"}]}, "trl.rewards.0: kind 'regex' needs ['pattern']"),
    ({"rewards": [{"kind": "length", "target": 3, "column": "a"}]}, "does not use ['column']"),
    ({"rewards": [{"kind": "numeric_match", "column": "a", "pattern": r"\d+"}]}, "needs a group"),
    ({"rewards": [{"kind": "function", "function": "nocolon"}]}, "expected 'package.module:function'"),
    ({"rewards": [{"kind": "bleu"}]}, "trl.rewards.0.kind"),
    ({"rewards": []}, "trl.rewards: grpo needs at least one reward"),
    ({"num_generations": 3}, "must be a multiple of trl.num_generations (3)"),
]


@pytest.mark.parametrize(("trl", "message"), SCHEMA_ERRORS)
def test_reward_spec_errors_in_the_job_file(tmp_path, trl, message):
    with pytest.raises(ConfigError) as err:
        JobConfig.from_dict(grpo_job(tmp_path, "t", trl=trl))
    assert message in str(err.value)


def test_grpo_keys_refused_on_other_tasks_and_sft_run_names_unchanged(tmp_path):
    from hfray.config import load_job

    root = Path(__file__).resolve().parents[2]
    # The run names of the shipped sft/dpo jobs, pinned after the 2026-12-04 merges (sections left unset stopped
    # counting); grpo's keys at their defaults must not rename them again.
    assert load_job(root / "jobs/smollm2_sft_lora.yaml").run_name == "smollm2-sft-lora-26f807c4"
    assert load_job(root / "jobs/smollm2_dpo_lora.yaml").run_name == "smollm2-dpo-lora-f1a90e07"
    raw = grpo_job(tmp_path, "t", task="sft")
    raw["task"], raw["evaluation"] = "sft", {}
    with pytest.raises(ConfigError, match=r"trl.num_generations: grpo only(.|\n)*trl.rewards: grpo only"):
        JobConfig.from_dict(raw)


PREFLIGHT_ERRORS = [
    ({"kind": "exact_match", "column": "solution"}, "trl.rewards.0.column: column 'solution' not in the data"),
    ({"kind": "function", "function": "no_such_module_x:f"}, "module 'no_such_module_x' cannot be imported"),
    ({"kind": "function", "function": "test_grpo:missing"}, "module 'test_grpo' has no function 'missing'"),
    ({"kind": "function", "function": "test_grpo:NOT_A_FUNCTION"}, "is a int, not a function"),
    ({"kind": "function", "function": "test_grpo:no_kwargs"}, "no **kwargs; a reward function is (prompts"),
    ({"kind": "function", "function": "test_grpo:needs_scale"}, "requires ['scale'], which hfray does not pass"),
    ({"kind": "model", "artifact": "/no/such/artifact", "label": "x"}, "not an hfray artifact"),
    ({"kind": "model", "artifact": "CLASSIFIER", "label": "great"}, "trl.rewards.0.label: 'great' is not a label"),
]


@pytest.mark.parametrize(("reward", "message"), PREFLIGHT_ERRORS)
def test_reward_errors_before_ray(tmp_path, digit_tokenizer, classifier, reward, message):
    from hfray.train.run import preflight

    reward = {k: str(classifier) if v == "CLASSIFIER" else v for k, v in reward.items()}
    job = JobConfig.from_dict(grpo_job(tmp_path, digit_tokenizer, trl={"rewards": [reward]}))
    with pytest.raises(ConfigError) as err:
        preflight(job)
    assert message in str(err.value)


def test_builtin_arithmetic_is_seeded_and_answers_hold():
    import re

    from hfray.data.builtin import load_builtin_dataset

    a, b = (load_builtin_dataset("builtin:arithmetic", "data.train") for _ in range(2))
    assert len(a) == 2000 and a[:50] == b[:50]
    for row in a.select(range(200)):
        question = row["prompt"][0]["content"]
        x, y = (int(n) for n in re.findall(r"\d+", question)[:2])
        assert int(row["answer"]) in {x + y, x - y, x * y} and "<answer></answer>" in question


@pytest.mark.slow  # SmolLM2-135M samples 16 completions per step on CPU: minutes on 2 cores
def test_shipped_grpo_job_trains_and_its_adapter_generates(ray_cluster, tmp_path):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.config import load_job
    from hfray.train.run import run_training

    root = Path(__file__).resolve().parents[2]
    overrides = ["training.max_steps=4", "training.eval_steps=2", "trl.max_completion_length=32",
                 "training.per_device_train_batch_size=8", "training.per_device_eval_batch_size=8",
                 "data.max_eval_samples=8", f"storage.path={tmp_path}"]  # fmt: skip
    summary = run_training(load_job(root / "jobs/grpo_arithmetic.yaml", overrides))
    evals = [r for r in _log(summary.run_dir) if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and "eval_rewards/format/mean" in evals[-1]
    assert summary.manifest["peft"]["method"] == "lora"
    pipe = load_artifact_pipeline(summary.artifact)
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Ana has 3 apples and buys 4 more. How many apples does Ana have now?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"][len(prompt) :].strip()


def test_learning_curve_draws_reward_spread_kl_and_length(tmp_path):
    """A grpo log gets a third panel (KL, completion length); a classification log keeps two."""
    import struct

    from hfray.train.tracking.curves import diagnose, plot

    def width(records: list[dict[str, Any]], key: str) -> int:
        path = tmp_path / f"{key}.png"
        plot(records, key, "t", diagnose(records), str(path))
        return struct.unpack(">I", path.read_bytes()[16:20])[0]  # the PNG header's width

    grpo = [
        {"step": s, "eval_loss": 0.5, "eval_reward": -2 + s / 10, "eval_reward_std": 1.0, "eval_kl": s / 100,
         "eval_completions/mean_length": 6 - s / 10, "train_reward": -2 + s / 12}
        for s in (0, 15, 30)
    ]  # fmt: skip
    classification = [{"step": s, "eval_loss": 1 - s / 100, "eval_f1_macro": s / 100} for s in (5, 10)]
    assert width(grpo, "eval_reward") > width(classification, "eval_f1_macro")
