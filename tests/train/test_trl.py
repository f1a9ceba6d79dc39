"""TRL on Ray Train: sft and dpo on a tiny llama built from a config, 2 workers, a few steps each."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_peft import TINY_LLAMA

from conftest import NEGATIVE, NEUTRAL, POSITIVE, check_manifest, merge_sections, synthetic_rows
from hfray.config import JobConfig
from hfray.errors import HfrayError

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE tokenizer with ChatML special tokens and chat template (trained in ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = POSITIVE + NEGATIVE + NEUTRAL + ["user", "assistant", "system", "positive", "negative", "sentiment"]
    corpus = [" ".join(random.Random(i).sample(words, 8)) for i in range(500)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    path = tmp_path_factory.mktemp("chat-tokenizer")
    fast.save_pretrained(path)
    return path


def _answer(label: str) -> str:
    return "positive" if label == "pos" else "negative"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {
            "conversation": [
                {"role": "user", "content": r["text"]},
                {"role": "assistant", "content": _answer(r["label"])},
            ]
        }
        for r in synthetic_rows(n, seed)
    ]


def dpo_rows(n: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for r in synthetic_rows(n, seed):
        good = _answer(r["label"])
        bad = "negative" if good == "positive" else "positive"
        out.append({"question": r["text"] + " sentiment", "good": " " + good, "bad": " " + bad})
    return out


def trl_job(tmp_path: Path, tokenizer: Path, task: str, train: Path, validation: Path, **sections: Any) -> dict:
    job: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "model": {"architecture": dict(TINY_LLAMA), "tokenizer": str(tokenizer)},
        "data": {"train": str(train), "validation": str(validation), "max_length": 64},
        "training": {
            "learning_rate": 3e-3,
            "max_steps": 10,
            "per_device_train_batch_size": 8,
            "eval_strategy": "steps",
            "eval_steps": 5,
            "logging_steps": 1,
        },
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(tmp_path / "runs"), "num_to_keep": 1, "max_failures": 0},
    }
    return merge_sections(job, sections)


def sft_trainer(tmp_path: Path, raw: dict, out: str) -> tuple[JobConfig, Any, Any, Any]:
    """The SFT worker's build sequence in this process (no Ray): job -> process settings -> tokenizer -> seed 0 ->
    model (with the job's adapter, if any) -> arguments -> trainer. Returns the job, tokenizer, model and trainer."""
    from transformers import set_seed

    from hfray.train.process import compile_settings
    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, peft, trl_arguments

    job = JobConfig.from_dict(raw)
    compile_settings(job)  # as each worker does before it builds the Trainer
    tokenizer = load_chat_tokenizer(job)
    set_seed(0)
    model, _ = peft.apply_peft(build_causal_lm(job, tokenizer), job)
    args = trl_arguments(job, str(tmp_path / out), use_gpu=False)
    return job, tokenizer, model, build_trainer(job, model, tokenizer, args, load_trl_splits(job), [])


def _losses(run_dir: str, key: str = "train_loss") -> list[float]:
    lines = Path(run_dir, "hfray_metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines if key in json.loads(line)]


def test_sft_chat_packing_on_ray_lowers_loss_and_generates(ray_cluster, tmp_path, chat_tokenizer):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.run import run_training

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(192, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(32, 2))
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl={"messages_column": "conversation", "packing": True})
    summary = run_training(JobConfig.from_dict(raw))
    evals = _losses(summary.run_dir, "eval_loss")
    assert len(evals) == 2 and evals[1] < evals[0]  # held-out loss fell between the two evaluations
    history = json.loads(Path(summary.checkpoints[-1], "trainer_state.json").read_text())["log_history"]
    train_losses = [e["loss"] for e in history if "loss" in e]
    assert train_losses[-1] < train_losses[0] * 0.9
    m = summary.manifest
    check_manifest(m)
    assert m["task"] == "text-generation" and m["training_task"] == "sft" and m["peft"] is None
    assert m["throughput"]["tokens_this_attempt"] > 0 and m["throughput"]["world_size"] == 2
    # what the run resolved: transformers' sdpa on CPU (varlen is the GPU default), no Liger, not compiled
    assert m["model"]["attention"] == "sdpa" and not m["model"]["liger_kernel"] and not m["model"]["torch_compile"]
    pipe = load_artifact_pipeline(summary.artifact)
    prompt = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "great movie"}], tokenize=False, add_generation_prompt=True
    )
    out = pipe(prompt, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert out.startswith(prompt) and len(out) > len(prompt)


def test_sft_packing_fills_the_sequences_the_trainer_gets(tmp_path, chat_tokenizer):
    """``trl.packing``: the SFT trainer hfray builds trains on sequences of several conversations, up to max_length.

    The Ray run above passes ``packing: true`` but cannot see whether it packed; here hfray's own SFT arguments and
    trainer are built in-process (no training) and the dataset the trainer will iterate is measured.
    """
    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, trl_arguments

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(96, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl={"messages_column": "conversation", "packing": True})
    job = JobConfig.from_dict(raw)
    tokenizer = load_chat_tokenizer(job)
    splits = load_trl_splits(job)
    args = trl_arguments(job, str(tmp_path / "hf"), use_gpu=False)
    trainer = build_trainer(job, build_causal_lm(job, tokenizer), tokenizer, args, splits, [])
    chats = [tokenizer.apply_chat_template(r["conversation"], tokenize=True, return_dict=True) for r in sft_rows(96, 1)]
    single = [len(chat["input_ids"]) for chat in chats]
    packed = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert max(packed) <= job.data.max_length < sum(single)
    assert sum(packed) / len(packed) > 1.5 * (sum(single) / len(single)), (packed, single)
    assert sum(packed) >= sum(single)  # every conversation's tokens are in, none cut off


def test_dpo_lora_reference_is_the_base_and_one_adapter_trains(tmp_path, chat_tokenizer):
    """hfray's DPO trainer with a fresh LoRA: no second ("ref") adapter, the reference log-probs TRL computes are
    the base model's, and they equal the policy's before the first step (a fresh LoRA is the identity)."""
    import torch

    from hfray.train.recipes.trl.data import load_chat_tokenizer, load_trl_splits
    from hfray.train.recipes.trl.worker import build_causal_lm, build_trainer, peft, trl_arguments

    train = write_jsonl(tmp_path / "dpo_train.jsonl", dpo_rows(16, 1))
    val = write_jsonl(tmp_path / "dpo_val.jsonl", dpo_rows(8, 2))
    trl = {"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad"}
    raw = trl_job(tmp_path, chat_tokenizer, "dpo", train, val, trl=trl, peft={"method": "lora", "r": 8})
    job = JobConfig.from_dict(raw)
    tokenizer = load_chat_tokenizer(job)
    model, _ = peft.apply_peft(build_causal_lm(job, tokenizer), job)
    args = trl_arguments(job, str(tmp_path / "hf"), use_gpu=False)
    trainer = build_trainer(job, model, tokenizer, args, load_trl_splits(job), [])
    assert list(trainer.model.peft_config) == ["default"]
    with torch.no_grad():  # one LoRA weight off zero: the policy moves, the reference (base) must not
        next(p for n, p in trainer.model.named_parameters() if "lora_B" in n).add_(0.5)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        policy = trainer.model(**ids).logits
        with trainer.model.disable_adapter():
            base = trainer.model(**ids).logits
            base_ref = trainer.compute_ref_log_probs(trainer.model, batch)
    assert not torch.allclose(policy, base)  # the moved adapter changes the policy
    ref = trainer.compute_ref_log_probs(trainer.model, batch)  # what TRL's loss uses, adapter enabled around it
    assert all(torch.allclose(r, b) for r, b in zip(ref, base_ref, strict=True))


@pytest.mark.slow  # ~1-2 min on 2 cores: the default suite keeps the SFT and LoRA runs on Ray (CI budget)
def test_dpo_lora_on_ray_lowers_loss_and_exports_adapter(ray_cluster, tmp_path, chat_tokenizer):
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.train.run import run_training

    train = write_jsonl(tmp_path / "dpo_train.jsonl", dpo_rows(128, 1))
    val = write_jsonl(tmp_path / "dpo_val.jsonl", dpo_rows(32, 2))
    raw = trl_job(
        tmp_path,
        chat_tokenizer,
        "dpo",
        train,
        val,
        trl={"prompt_column": "question", "chosen_column": "good", "rejected_column": "bad", "beta": 0.5},
        peft={"method": "lora", "r": 8, "target_modules": "all-linear"},
        training={"learning_rate": 1e-2, "max_steps": 8, "eval_steps": 4},
    )
    summary = run_training(JobConfig.from_dict(raw))
    evals = _losses(summary.run_dir, "eval_loss")
    assert evals[0] < 0.6931 and evals[-1] < evals[0]  # below log(2), where DPO starts, and falling
    accuracy = _losses(summary.run_dir, "eval_rewards/accuracies")
    assert accuracy[-1] > 0.5
    m = summary.manifest
    check_manifest(m)
    assert m["training_task"] == "dpo" and m["peft"]["method"] == "lora"
    assert 0 < m["peft"]["trainable_params"] < m["peft"]["all_params"]
    artifact = Path(summary.artifact)
    assert (artifact / "adapter_config.json").is_file() and (artifact / "base" / "model.safetensors").is_file()
    pipe = load_artifact_pipeline(summary.artifact)  # base (built from a config, shipped in base/) + adapter
    assert pipe("great superb movie sentiment", max_new_tokens=2, do_sample=False)[0]["generated_text"]


def test_sft_missing_columns_and_chat_template_fail_before_ray(tmp_path, chat_tokenizer):
    from hfray.train.recipes.trl.driver import preflight

    train = write_jsonl(tmp_path / "t.jsonl", sft_rows(8, 1))
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, train, trl={"format": "prompt-completion"})
    with pytest.raises(HfrayError, match=r"data.train: columns \['prompt', 'completion'\] not found"):
        preflight(JobConfig.from_dict(raw))
    raw = trl_job(tmp_path, "builtin:all-MiniLM-L6-v2", "sft", train, train, trl={"messages_column": "conversation"})
    with pytest.raises(HfrayError, match="trl.chat_template: the data is chat turns but the tokenizer"):
        preflight(JobConfig.from_dict(raw))


@pytest.mark.slow
@pytest.mark.parametrize("job_file", ["jobs/smollm2_sft_lora.yaml", "jobs/smollm2_dpo_lora.yaml"])
def test_shipped_smollm2_job_trains_and_its_adapter_generates(ray_cluster, tmp_path, job_file):
    """The real SmolLM2-135M-Instruct (converted from the pip-shipped GGUF) under LoRA SFT / DPO on 2 workers."""
    from hfray.artifacts.loading import load_artifact_pipeline
    from hfray.config import load_job
    from hfray.train.run import run_training

    root = Path(__file__).resolve().parents[2]
    summary = run_training(load_job(root / job_file, [f"storage.path={tmp_path}"]))
    evals = _losses(summary.run_dir, "eval_loss")
    assert len(evals) == 2 and evals[1] < evals[0]
    info = summary.manifest["peft"]
    assert info["target_modules"] == ["q_proj", "v_proj"] and info["trainable_params"] < 0.02 * info["all_params"]
    pipe = load_artifact_pipeline(summary.artifact)
    prompt = pipe.tokenizer.apply_chat_template(
        [
            {
                "role": "user",
                "content": "Is this movie review fresh (positive) or rotten (negative)? Answer with one "
                "word.\n\nA triumph: moving, funny and beautifully acted.",
            }
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    answer = pipe(prompt, max_new_tokens=3, do_sample=False)[0]["generated_text"][len(prompt) :]
    assert answer.strip()


def test_attn_implementation_reaches_the_model_keeps_packed_losses_and_gpu_kernels_are_refused_on_cpu(
    tmp_path, chat_tokenizer
):
    """``model.attn_implementation`` picks transformers' attention kernel. Packed SFT flattens a batch into one row
    (TRL's padding-free packing): the kernel must still keep each conversation to itself, so eager and transformers'
    default (sdpa) give the same loss on the same packed batch and weights. flex_attention (no backward on CPU) and
    flash attention (a GPU package) are refused for a CPU job before any worker starts, naming the key."""
    import torch

    from hfray.errors import ConfigError
    from hfray.train.arguments import check_training_arguments

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(48, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    losses = {}
    for impl in (None, "eager"):
        packed = {"messages_column": "conversation", "packing": True}
        raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=packed)
        raw["model"]["attn_implementation"] = impl
        _, _, model, trainer = sft_trainer(tmp_path, raw, "hf")
        assert model.config._attn_implementation == (impl or "sdpa")
        batch = next(iter(trainer.get_train_dataloader()))
        rows, starts = batch["input_ids"].shape[0], int((batch["position_ids"] == 0).sum())
        assert rows > 1 and starts > rows and "attention_mask" not in batch  # packed rows, documents by position
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k != "seq_lengths"}
            losses[impl] = model(**inputs, use_cache=False).loss.item()  # as TRL's compute_loss calls it
    assert losses["eager"] == pytest.approx(losses[None], rel=1e-4), losses

    for impl, needs in (("flex_attention", "GPUs only"), ("flash_attention_2", "GPUs only")):
        raw["model"]["attn_implementation"] = impl
        with pytest.raises(ConfigError, match=f"model.attn_implementation: .*{needs}"):
            check_training_arguments(JobConfig.from_dict(raw))
    raw["model"]["attn_implementation"] = "flash"
    with pytest.raises(HfrayError, match="model.attn_implementation"):
        JobConfig.from_dict(raw)


def test_packed_sft_keeps_rows_with_the_flattened_batchs_loss_and_counts_every_rows_tokens(tmp_path, chat_tokenizer):
    """Packed SFT without FlashAttention: hfray's trainer collates TRL's packed rows as rows (documents told apart by
    position ids, ``hfray.train.recipes.trl.rows``) instead of TRL's one flattened row, whose dense mask grows with the
    square of the batch. Same examples, same weights: the loss equals the flattened batch's, and a training step
    counts every row's tokens in TRL's ``num_tokens``."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from hfray.train.recipes.trl.data import load_trl_splits
    from hfray.train.recipes.trl.worker import build_trainer, trl_arguments

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(96, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl={"messages_column": "conversation", "packing": True})
    job, tokenizer, model, trainer = sft_trainer(tmp_path, raw, "hf")
    examples = [trainer.train_dataset[i] for i in range(4)]
    rows = trainer.data_collator(examples)
    flat = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)(examples)
    assert rows["input_ids"].shape[0] == 4 and flat["input_ids"].shape[0] == 1
    assert int((rows["labels"] != -100).sum()) == int((flat["labels"] != -100).sum())
    keys = ("input_ids", "labels", "position_ids")
    with torch.no_grad():
        by_rows = model(**{k: rows[k] for k in keys}, use_cache=False).loss.item()
        by_flat = model(**{k: flat[k] for k in keys}, use_cache=False).loss.item()
    assert by_rows == pytest.approx(by_flat, rel=1e-5)
    # With a document's start unmasked or the rows' documents attending each other, the loss would differ:
    leaky = dict(rows, attention_mask=torch.ones_like(rows["input_ids"]))
    with torch.no_grad():
        assert model(**{k: leaky[k] for k in (*keys, "attention_mask")}, use_cache=False).loss.item() != pytest.approx(
            by_flat, rel=1e-5
        )

    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer.compute_loss(trainer.model, batch)
    trainer.log({})  # trl.deferred_metrics (the default): the step's metrics are read at the next log
    counted = trainer.state.log_history[-1]["num_tokens"]
    assert counted == batch["position_ids"].numel() == 4 * batch["position_ids"].size(1)
    raw["trl"]["deferred_metrics"] = False  # TRL's own compute_loss: the rows' count added by rows.RowTokens
    _, _, _, trainer = sft_trainer(tmp_path, raw, "hf-trl-metrics")
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer._prepare_inputs(trainer.data_collator(examples)))
    assert trainer._metrics["train"]["num_tokens"][-1] == counted
    raw["trl"].pop("deferred_metrics")

    raw["trl"]["packed_layout"] = "flat"  # the opt-out: TRL's own flattened batch
    job = JobConfig.from_dict(raw)
    args = trl_arguments(job, str(tmp_path / "hf"), False)
    trainer = build_trainer(job, model, tokenizer, args, load_trl_splits(job), [])
    assert trainer.data_collator(examples)["input_ids"].shape[0] == 1


def test_packed_rows_under_torch_compile_have_one_shape_and_train_with_the_eager_losses(tmp_path, chat_tokenizer):
    """``training.torch_compile`` on packed SFT rows: every batch is padded to the packed length (one shape, so the
    compiled step is not compiled again for a shorter batch), and the compiled model trains with eager's losses:
    documents stay apart under compile too (transformers reads them from the position ids in the graph). By default
    each decoder layer is compiled on its own (``training.compile_regions``), whole with it off: same losses."""
    import torch._dynamo

    train = write_jsonl(tmp_path / "sft_train.jsonl", sft_rows(48, 1))
    val = write_jsonl(tmp_path / "sft_val.jsonl", sft_rows(8, 2))
    losses = {}
    for compiled in (False, True, "whole"):
        packed = {"messages_column": "conversation", "packing": True}
        steps = {"max_steps": 4, "logging_steps": 1, "torch_compile": bool(compiled)}
        steps |= {"compile_regions": False} if compiled == "whole" else {}
        if compiled:  # Dynamo's graphs and AOTAutograd's backward, without Inductor's C++ build (~30 s on 2 CPUs)
            steps["extra_args"] = {"torch_compile_backend": "aot_eager"}
        raw = trl_job(tmp_path, chat_tokenizer, "sft", train, val, trl=packed, training=steps)
        job, _, _, trainer = sft_trainer(tmp_path, raw, f"hf{compiled}")
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        width = batch["input_ids"].shape[1]  # eager: the batch's longest row, shorter than the packed length here
        assert width == job.data.max_length if compiled else width < job.data.max_length, width
        torch._dynamo.utils.counters.clear()
        trainer.train()
        losses[compiled] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == bool(compiled)  # ran compiled
        # regional: the trained model's layers are compiled modules, each layer's own; whole: the model is one
        layers = trainer.model_wrapped.model.layers if compiled is True else None
        assert layers is None or all(type(layer).__name__ == "OptimizedModule" for layer in layers), layers
        assert (type(trainer.model_wrapped).__name__ == "OptimizedModule") == (compiled == "whole")
    assert len(losses[True]) == 4 and losses[True][-1] < losses[True][0], losses
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses
    assert losses["whole"] == pytest.approx(losses[False], rel=1e-3), losses
