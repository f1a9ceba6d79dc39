"""Benchmark: hfray's training throughput against the plain HF Trainer and torchrun, same work, one run.

Workloads (``--workloads``): ``mlm`` BERT-base masked-LM pre-training, ``mbert`` the same with ModernBERT-base's
shape (22 layers, 768 wide, alternating local/global attention; the same vocabulary), ``clm`` GPT-2-small causal-LM
pre-training, ``llama`` a Llama-shaped causal LM (SmolLM2-135M's shape) pre-training, ``cls`` BERT-base
sequence-classification fine-tuning, ``sft`` LoRA SFT (r 16, all linear layers) of the SmolLM2-135M shape on
packed text, ``dpo`` LoRA DPO (same LoRA) of that shape on fixed-length preference pairs (``--batch`` = pairs,
``--seq`` = prompt + completion; ``bench/throughput_dpo.py`` says how its tokens and FLOPs are counted); all from
configs (random weights), sequence ``--seq`` tokens, ``--batch`` samples per GPU, bf16 on GPU. Runners per workload
and GPU count N (``--gpus``):

* ``bare`` (N = 1): ``bench/throughput_bare.py``, the model's training step alone (fused AdamW, bf16 autocast,
  ``torch.compile``, random tokens on the device; no Trainer, no Ray, no data): the ceiling. ``--bare-variants
  eager`` adds the uncompiled step;
* ``plain``: ``bench/throughput_plain.py`` in one process (N = 1) or under ``torchrun --nproc_per_node N``
  (``sft``: TRL's own ``SFTTrainer`` with the same LoRA and packing; ``dpo``: TRL's own ``DPOTrainer``);
* ``hfray``: ``hfray train JOB cluster.address=...`` (a subprocess, as a user submits it) on a Ray cluster
  that is already running, N workers x 1 GPU, hfray's defaults; ``--hfray-variants`` adds, for N = 1, ``hf``
  (hfray with the plain script's settings: in-memory data, full MLM head, no dataloader workers),
  ``compile`` (``training.torch_compile=true``), ``exact`` (``lm.masking=exact``), ``nodrop`` (dropout 0 in the
  architecture), ``datasets`` (``lm.pipeline=datasets``), ``noliger`` (``training.liger_kernel=false``),
  ``flex`` / ``varlen`` / ``eager`` (``model.attn_implementation``), ``flat`` (``trl.packed_layout``), ``bf16``
  (``training.precision=bf16``: autocast on CPU too), ``cudnn`` / ``nocudnn`` (``training.cudnn_attention``),
  ``keepmask`` (``training.drop_unpadded_masks=false``),
  ``ragged`` (``dpo``: pairs of random lengths; rows of other runners are of fixed-length pairs; ``cls``: rows of
  10-140 words, the others' 143: compare ragged rows with each other), ``shared`` (the bench's "shared" cases run on
  one storage path in turn: a later one starts on the compile cache an earlier one left, e.g.
  ``cudagraphs-whole-shared,shared``: a short classification run after a compiled one) and ``profile``
  (``HFRAY_STEP_PROFILE``: ms per step by phase in the row's ``step_profile``; the GPU is synchronised at each phase,
  so read its throughput as profiled, not steady), joined with ``-`` to compose (``compile-exact-nodrop``).

Measured the same way everywhere (``hfray.train.callbacks.throughput.ThroughputCallback``): steady-state samples/s and
tokens/s (after a tenth of the steps, at most 30; evaluation/save intervals left out), MFU (formula in that
module; the MLM head counted at masked positions only, for every runner), peak CUDA memory per GPU, scaling efficiency
(N-GPU throughput / N x 1-GPU throughput of the same runner), and overhead: submit -> first step, and wall
minus steady-state training time. Writes ``throughput.json`` and ``throughput.md`` under ``--out``.

    python bench/throughput_bench.py --out bench/results/throughput_gpu            # GPU machine, ~8 min
    python bench/throughput_bench.py --workloads llama,sft --seq 1024 --batch 32 --gpus 1 --out $OUT/dec
    bash bench/gpu_speed18.sh                       # GPU machine, one call: dpo, sft (and llama) bare/plain/hfray
    python bench/throughput_bench.py --smoke --out /tmp/tp                          # CPU smoke (the test's mode)
    python bench/throughput_bench.py --cpu --workloads cls --runners plain,hfray --out /tmp/tpc  # CPU, real size

``--cpu``: real sizes on the CPU. ``cls`` then fine-tunes the pretrained all-MiniLM-L6-v2 (``builtin:``, its own
tokenizer) instead of a BERT-base config; ``--gpus`` counts processes: hfray's Ray Train workers, each with the
machine's cores / N CPUs (torch threads), and for N > 1 the plain script under ``torchrun`` (which sets
``OMP_NUM_THREADS=1``); ``--batch`` is the global batch (N processes x batch / N). N = 1: one process, all cores.

Data: a synthetic corpus (Zipf-distributed pseudo-words, seeded) and tokenizers trained on it with hfray's
own tokenizer training (WordPiece for BERT, byte-level BPE for GPT-2), so it runs offline. The models keep
BERT-base's / GPT-2's vocabulary sizes (30,522 / 50,257) whatever the synthetic tokenizers reach.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.append(str(Path(__file__).resolve().parent))
import throughput_dpo  # noqa: E402
from bench_common import SMOLLM2_135M_SHAPE  # noqa: E402  (sibling modules, not a package)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASE = {
    "mlm": {
        "model_type": "bert",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "vocab_size": 30522,
    },
    "clm": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
}
# ModernBERT-base's shape with the bench's BERT vocabulary; pad id 0 (its own default is past this vocabulary)
BASE["mbert"] = {
    "model_type": "modernbert",
    "hidden_size": 768,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "intermediate_size": 1152,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
    "pad_token_id": 0,
}
BASE["cls"] = BASE["mlm"]
BASE["llama"] = {**SMOLLM2_135M_SHAPE, "vocab_size": 49152}
BASE["sft"] = BASE["dpo"] = BASE["llama"]
TINY = {
    "mlm": {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    },
    "clm": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},
}
TINY["mbert"] = {
    "model_type": "modernbert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "global_attn_every_n_layers": 2,
    "local_attention": 16,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
}
TINY["cls"] = TINY["mlm"]
TINY["llama"] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}
TINY["sft"] = TINY["dpo"] = TINY["llama"]
TASKS = {"mlm": "masked-lm", "clm": "causal-lm", "llama": "causal-lm", "cls": "text-classification", "sft": "sft"}
TASKS["dpo"] = "dpo"
TASKS["mbert"] = "masked-lm"
CPU_MODELS = {"cls": "builtin:all-MiniLM-L6-v2"}  # --cpu: a real pretrained model of CPU size
# as bench/throughput_bare.py and the plain runner's LoraConfig: one computation (PEFT's default dropout 0; before
# 2026-12-05 hfray's rows had hfray's default 0.05: a dropout on each of the 210 adapted layers' inputs; theirs none)
LORA = {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


# ----------------------------------------------------------------------------- data


def _lexicon(n: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def write_corpus(work: Path, docs: int, seed: int = 0) -> dict[str, str]:
    """Train/validation text (one document per line) and a 2-class CSV whose label is a keyword group."""
    rng = random.Random(seed)
    lexicon = _lexicon(20000, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]  # Zipf, as natural text

    def doc(n_words: int) -> list[str]:
        return rng.choices(lexicon, weights, k=n_words)

    work.mkdir(parents=True, exist_ok=True)
    paths = {"train": work / "train.txt", "validation": work / "valid.txt"}
    for split, n in (("train", docs), ("validation", max(8, docs // 50))):
        paths[split].write_text("\n".join(" ".join(doc(rng.randint(80, 400))) for _ in range(n)) + "\n")
    groups = {"pos": lexicon[-40:-20], "neg": lexicon[-20:]}
    splits = [("train_csv", docs, 140), ("validation_csv", max(16, docs // 20), 140)]
    # Rows of 10-140 words (``cls`` variant ``ragged``): batches then pad to many lengths. Written after the others,
    # so those stay what they were for a seed.
    splits += [("train_ragged_csv", docs, 0), ("validation_ragged_csv", max(16, docs // 20), 0)]
    for split, n, length in splits:
        rows = []
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            words = doc(length or rng.randint(10, 140)) + rng.sample(groups[label], 3)
            rng.shuffle(words)
            rows.append(f"{' '.join(words)},{label}")
        paths[split] = work / f"{split}.csv"
        paths[split].write_text("text,label\n" + "\n".join(rows) + "\n")
    return {k: str(v) for k, v in paths.items()}


def tokenizer_of(workload: str) -> str:
    return {"mlm": "bert", "mbert": "bert", "cls": "bert", "clm": "gpt2"}.get(workload, "llama")


def train_tokenizers(work: Path, data: dict[str, str], smoke: bool, names: set[str] | None = None) -> dict[str, str]:
    """hfray's own tokenizer training: WordPiece for BERT workloads, byte-level BPE for GPT-2 (only ``names``)."""
    from hfray.config import JobConfig
    from hfray.data.tokenizer_training import train_tokenizer

    out = {}
    for name, kind, task, algorithm, vocab in (
        ("bert", "bert", "masked-lm", "wordpiece", 30522),
        ("gpt2", "gpt2", "causal-lm", "bpe", 50257),
        ("llama", "gpt2", "causal-lm", "bpe", 49152),  # byte-level BPE within SmolLM2's vocabulary size
    ):
        if names is not None and name not in names:
            continue
        path = work / f"tokenizer-{name}"
        job = JobConfig.from_dict(
            {
                "name": f"tok-{name}",
                "task": task,
                "tokenizer": {"algorithm": algorithm, "vocab_size": 2000 if smoke else vocab, "min_frequency": 1},
                "model": {"architecture": {"model_type": kind}, "tokenizer": str(path)},
                "data": {"train": data["train"]},
                "lm": {"pipeline": "datasets"},
            }
        )
        train_tokenizer(job)
        out[name] = str(path)
    return out


# ----------------------------------------------------------------------------- runners


def spec_for(workload: str, args: argparse.Namespace, data: dict[str, str], tokenizers: dict[str, str]) -> dict:
    arch = (TINY if args.smoke else BASE)[workload]
    spec = {
        "workload": workload,
        "architecture": arch,
        "data": data,
        "steps": args.steps,
        "batch": args.batch,
        "seq": args.seq,
        "tokenizer": tokenizers.get(tokenizer_of(workload)),
    }
    pretrained = CPU_MODELS.get(workload) if getattr(args, "cpu", False) else None
    if pretrained:  # a real model and its own tokenizer (hfray resolves builtin: names; the plain script too)
        from hfray.model.builtin import resolve_model

        spec.update(model=pretrained, tokenizer=resolve_model(pretrained), architecture=None)
    return {**spec, "cpu": getattr(args, "cpu", False)}


def hfray_job(spec: dict[str, Any], n: int, gpu: bool, storage: Path, variant: str) -> dict[str, Any]:
    workload, steps = spec["workload"], spec["steps"]
    job: dict[str, Any] = {
        "name": f"bench-{workload}-{n}-{variant}",
        "task": TASKS[workload],
        "model": {"architecture": spec["architecture"], "tokenizer": spec["tokenizer"]},
        "training": {
            "max_steps": steps,
            "per_device_train_batch_size": spec["batch"] // n if spec.get("cpu") else spec["batch"],
            "learning_rate": 1e-4,
            "eval_strategy": "steps",
            "eval_steps": steps,
            "logging_steps": 50,
        },
        "resources": {"num_workers": n, **_worker_resources(spec, n, gpu)},
        "storage": {"path": str(storage), "num_to_keep": 1, "max_failures": 0},
        # hfray's tracking defaults where their packages are installed (the GPU machine's bundle has no MLflow
        # and no matplotlib: there only TensorBoard logs, which the plain runner does not do at all).
        "tracking": {"mlflow": _installed("mlflow"), "learning_curve": _installed("matplotlib")},
    }
    if spec.get("model"):
        job["model"] = {"name_or_path": spec["model"]}
    if workload == "cls":
        ragged = "_ragged" if "ragged" in variant.split("-") else ""  # rows of many lengths: compare with each other
        job["data"] = {
            "train": spec["data"][f"train{ragged}_csv"],
            "validation": spec["data"][f"validation{ragged}_csv"],
            "max_length": spec["seq"],
        }
        job["evaluation"] = {"metrics": ["accuracy"], "metric_for_best_model": "accuracy"}
    elif workload == "sft":  # LoRA SFT on the CSV's text column, packed into seq-token rows (TRL's BFD packing)
        job["data"] = {
            "train": spec["data"]["train_csv"],
            "validation": spec["data"]["validation_csv"],
            "max_length": spec["seq"],
            "max_eval_samples": 16,
        }
        job["trl"] = {"format": "text", "packing": True}
        job["peft"] = dict(LORA)
    elif workload == "dpo":  # fixed-length preference pairs (bench/throughput_dpo.py), the same LoRA
        job.update(throughput_dpo.hfray_sections(spec, LORA, ragged="ragged" in variant.split("-")))
    else:
        job["data"] = {"train": spec["data"]["train"], "validation": spec["data"]["validation"], "max_eval_samples": 16}
        job["lm"] = {"block_size": spec["seq"], "tokenize_num_cpus": 1 if gpu else 0.25}
    parts = set(variant.split("-"))  # variants compose: "compile-exact-nodrop"
    if "hf" in parts:  # the plain script's settings: what is left is Ray Train's own cost
        job["training"].update(dataloader_num_workers=0, group_by_length=False)
        if workload not in ("cls", "sft", "dpo"):
            job["lm"].update(pipeline="datasets", mlm_loss_on_masked_only=False)
    if "compile" in parts:
        job["training"]["torch_compile"] = True
    if "cudagraphs" in parts:  # compiled, each region's kernels replayed as CUDA graphs (packed LoRA SFT's default)
        job["training"].update(torch_compile=True, cuda_graphs=True)
    if "whole" in parts:  # training.compile_regions: false: one graph of the whole model (fewer wrappers a step)
        job["training"]["compile_regions"] = False
    if "regions" in parts:  # training.compile_regions: true: each layer once (masked-LM's encoder: whole by default)
        job["training"]["compile_regions"] = True
    if "nographs" in parts:  # training.cuda_graphs' opt-out: compiled, kernel by kernel
        job["training"]["cuda_graphs"] = False
    if "nocompile" in parts:  # the opt-out (packed LoRA SFT on varlen compiles by default)
        job["training"]["torch_compile"] = False
    if "keepmask" in parts:  # every batch keeps its attention mask (default: eager cls drops an all-ones one)
        job["training"]["drop_unpadded_masks"] = False
    if "cudnn" in parts or "nocudnn" in parts:  # sdpa's cuDNN attention asked for / refused (default: compiled only)
        job["training"]["cudnn_attention"] = "cudnn" in parts
    if "exact" in parts and workload in ("mlm", "mbert"):  # a fixed masked count: static shapes
        job["lm"]["masking"] = "exact"
    if "nodrop" in parts:  # no dropout: what pre-training recipes such as ModernBERT's use
        job["model"]["architecture"] = {**spec["architecture"], "hidden_dropout_prob": 0.0}
        job["model"]["architecture"]["attention_probs_dropout_prob"] = 0.0
    if "bf16" in parts:  # bf16 autocast (CPU too: AVX512-BF16 / AMX hosts); the default on GPU
        job["training"]["precision"] = "bf16"
    if "noliger" in parts:  # the opt-out of the Liger kernels (default on for full-parameter SFT jobs on GPUs)
        job["training"]["liger_kernel"] = False
    if "syncs" in parts and "trl" in job:  # TRL's own compute_loss: its per-step host syncs (trl.deferred_metrics)
        job["trl"]["deferred_metrics"] = False
    if "liger" in parts:  # Liger's kernels asked for (off by default for LoRA SFT and DPO)
        job["training"]["liger_kernel"] = True
    if "loradrop" in parts and "peft" in job:  # hfray's default LoRA dropout (0.05) instead of the runners' shared 0
        job["peft"].pop("dropout")
    if "full" in parts:  # full-parameter SFT/DPO: no PEFT adapter (DPO's reference is then a frozen copy)
        job.pop("peft", None)
    if "flex" in parts:  # FlexAttention: a packed SFT batch (one flattened row) attended per document
        job["model"]["attn_implementation"] = "flex_attention"
    if "sdpa" in parts:  # transformers' default kernel, named (packed SFT on GPUs defaults to varlen)
        job["model"]["attn_implementation"] = "sdpa"
    if "varlen" in parts:  # PyTorch's FlashAttention varlen kernel: a packed SFT batch as TRL's one flattened row
        job["model"]["attn_implementation"] = "varlen"
    if "eager" in parts:  # transformers' eager attention (the reference kernel)
        job["model"]["attn_implementation"] = "eager"
    if "flat" in parts and "trl" in job:  # packed SFT as TRL collates it: one flattened row per batch
        job["trl"]["packed_layout"] = "flat"
    if "noshuffle" in parts and "lm" in job:  # no local shuffle buffer in the Ray Data stream
        job["lm"]["local_shuffle_buffer_size"] = 0
    for part in parts:  # "prefetchN": N collated batches ready ahead of the step (lm.prefetch_batches)
        if part.startswith("prefetch") and part[8:].isdigit() and "lm" in job:
            job["lm"]["prefetch_batches"] = int(part[8:])
    if "datasets" in parts and "lm" in job:  # no Ray Data stream: packed in memory by `datasets`
        job["lm"]["pipeline"] = "datasets"
    return job


def _worker_resources(spec: dict[str, Any], n: int, gpu: bool) -> dict[str, Any]:
    """A GPU each; --cpu: the machine's cores shared out (torch threads = the worker's CPUs); smoke: half a CPU."""
    if gpu:
        return {"gpus_per_worker": 1}
    if spec.get("cpu"):
        return {"cpus_per_worker": max(1, (os.cpu_count() or 1) // n)}
    return {"cpus_per_worker": 0.5}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_plain(spec: dict[str, Any], n: int, out: Path) -> dict[str, Any]:
    spec_file, result_file = out / "spec.json", out / "result.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, str(HERE / "throughput_plain.py")]
    if n > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", cmd[1]]
    # One process that sees several GPUs makes the HF Trainer wrap the model in nn.DataParallel over all of
    # them (the first 2-GPU run measured that by mistake: 335 samples/s). N GPUs means exactly N visible.
    gpus = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n))}
    return _timed(cmd + ["--spec", str(spec_file), "--out", str(result_file)], out, lambda: result_file, gpus)


def run_bare(spec: dict[str, Any], out: Path, variant: str) -> dict[str, Any]:
    """``bench/throughput_bare.py``: the model's bare step on one device (compiled, or ``eager``)."""
    spec_file, result_file = out / "spec.json", out / "result.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, str(HERE / "throughput_bare.py"), "--spec", str(spec_file), "--out", str(result_file)]
    parts = set(variant.split("-"))
    cmd += ["--eager"] if "eager" in parts else []
    cmd += ["--graphs"] if "graphs" in parts else []
    cmd += ["--trl-head"] if "trlhead" in parts else []
    cmd += ["--torch-profile", str(out / "torch_profile")] if "tprofile" in parts else []
    row = _timed(cmd, out, lambda: result_file, {"CUDA_VISIBLE_DEVICES": "0"})
    return _with_torch_profile(row, out / "torch_profile")


def _with_torch_profile(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The row plus the device profile's headline (``hfray.train.callbacks.torch_profile``), where one was taken."""
    summary = folder / "summary.json"
    if summary.is_file():
        record = json.loads(summary.read_text())
        row["torch_profile"] = {k: v for k, v in record.items() if not k.startswith("top_")}
    return row


def run_hfray(spec: dict[str, Any], n: int, gpu: bool, address: str, out: Path, variant: str) -> dict[str, Any]:
    # A run left by an earlier, interrupted bench in the same folder would be read as this one's result.
    shutil.rmtree(out / "runs", ignore_errors=True)
    # "shared": one storage path for every "shared" case of the bench (cases/shared-store): a case runs on the compile
    # cache the earlier ones left there (a re-run's or a sweep's later trial's start), the rest start cold
    storage = out.parent / "shared-store" if "shared" in variant.split("-") else out / "runs"
    job = hfray_job(spec, n, gpu, storage, variant)
    job_file = out / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "hfray", "train", str(job_file), f"cluster.address={address}", "--fresh"]

    def manifest() -> Path:
        return next(storage.glob(f"{job['name']}-*/artifact/hfray_manifest.json"))

    profile = out / "step_profile.jsonl"
    profile.unlink(missing_ok=True)
    env = {"HFRAY_STEP_PROFILE": str(profile)} if "profile" in variant.split("-") else {}
    shutil.rmtree(out / "torch_profile", ignore_errors=True)
    if "tprofile" in variant.split("-"):  # rank 0's device profile of 5 steady steps (no per-phase syncs)
        env["HFRAY_TORCH_PROFILE"] = str(out / "torch_profile")
    row = _with_torch_profile(_timed(cmd, out, manifest, env), out / "torch_profile")
    if "error" not in row:  # the run's last evaluation: variants that change the numerics are compared on it
        metrics = json.loads(manifest().read_text()).get("metrics") or {}
        row.update({k: metrics[k] for k in ("eval_loss", "eval_accuracy") if k in metrics})
    if profile.is_file():  # ms per step by phase (synchronised: that run's throughput is not the steady one)
        row["step_profile"] = json.loads(profile.read_text().splitlines()[-1])["ms_per_step"]
    return row


def _timed(cmd: list[str], out: Path, result_path: Any, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    submitted = time.time()
    with (out / "log.txt").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)
    ended = time.time()
    if proc.returncode != 0:
        tail = (out / "log.txt").read_text()[-3000:]
        return {"error": f"exit {proc.returncode}", "log_tail": tail}
    raw = json.loads(Path(result_path()).read_text())
    tp = raw.get("throughput")  # an hfray manifest; the plain script's result is the summary itself
    t = raw if tp is None else tp.get("steady_state", tp)
    return _row(t, raw, submitted, ended)


def _row(t: dict[str, Any], raw: dict[str, Any], submitted: float, ended: float) -> dict[str, Any]:
    steady = (t.get("steady_step_seconds") or 0) * (raw.get("global_step") or t.get("steps") or 0)
    peaks = t.get("peak_memory_bytes_per_rank") or []
    return {
        "samples_per_second": t.get("samples_per_second"),
        "tokens_per_second": t.get("tokens_per_second"),
        "mfu": t.get("mfu"),
        "peak_memory_gib_per_gpu": round(max(peaks) / 2**30, 2) if peaks else None,
        "submit_to_first_step_s": round(t["first_step_at"] - submitted, 1) if t.get("first_step_at") else None,
        "wall_s": round(ended - submitted, 1),
        "overhead_s": round(ended - submitted - steady, 1),
        "steady_steps": t.get("steady_steps"),
        "median_step_s": t.get("steady_step_seconds_median"),  # against the mean's rate: a one-off in the window?
        "slowest_steps": t.get("slowest_steps"),
        "device": t.get("device"),
        "parameters": raw.get("parameters") or (raw.get("model") or {}).get("parameters"),
        "flops_per_token": t.get("flops_per_token"),
    }


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    import ray
    import torch
    import transformers

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "gpus": gpus,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """vs the plain 1-GPU run of the workload, and scaling efficiency within a runner."""

    def key(r: dict[str, Any]) -> tuple[str, str, int]:
        return r["workload"], r["runner"], r["gpus"]

    index = {key(r): r for r in rows}
    for r in rows:
        base = index.get((r["workload"], "plain", 1), {}).get("samples_per_second")
        bare = index.get((r["workload"], "bare", 1), {}).get("samples_per_second")
        one = index.get((r["workload"], r["runner"], 1), {}).get("samples_per_second")
        sps = r.get("samples_per_second")
        r["vs_plain_1gpu"] = round(sps / base, 3) if sps and base else None
        r["vs_bare_1gpu"] = round(sps / bare, 3) if sps and bare else None
        r["scaling_efficiency"] = round(sps / (r["gpus"] * one), 3) if sps and one and r["gpus"] > 1 else None


def markdown(result: dict[str, Any]) -> str:
    cols = [
        ("workload", "workload"),
        ("runner", "runner"),
        ("gpus", "GPUs"),
        ("samples_per_second", "samples/s"),
        ("tokens_per_second", "tokens/s"),
        ("mfu", "MFU"),
        ("peak_memory_gib_per_gpu", "peak GiB/GPU"),
        ("vs_plain_1gpu", "vs plain 1 GPU"),
        ("vs_bare_1gpu", "vs bare 1 GPU"),
        ("scaling_efficiency", "scaling eff."),
        ("submit_to_first_step_s", "submit->1st step s"),
        ("overhead_s", "wall - steady s"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = []
        for k, _ in cols:
            v = r.get(k, r.get("error") if k == "samples_per_second" else None)
            cells.append(f"{v:,.4g}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    head = (
        f"Machine: {', '.join(m['gpus']) or 'CPU only'}, {m['cpus']} CPUs; torch {m['torch']} (CUDA {m['cuda']}), "
        f"transformers {m['transformers']}, Ray {m['ray']}, Python {m['python']}; {m['date']}.\n"
        f"Settings: {json.dumps(result['settings'])}\n"
    )
    return head + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU: checks the bench still runs")
    parser.add_argument("--cpu", action="store_true", help="real sizes on CPU (cls: pretrained MiniLM-L6; see above)")
    parser.add_argument("--workloads", default="mlm,clm,cls")
    parser.add_argument("--gpus", default=None, help="GPU (or, with --smoke, CPU worker) counts; default 1,2")
    parser.add_argument("--runners", default="bare,plain,hfray")
    parser.add_argument(
        "--bare-variants",
        default="",
        help="extra bare runs: eager, graphs (CUDA graphs), tprofile, trlhead (dpo: TRL's fused head)",
    )
    parser.add_argument(
        "--hfray-variants",
        default="",
        help="extra 1-GPU hfray runs, e.g. hf,compile,exact,compile-exact-nodrop,full,liger,cudagraphs,nographs",
    )
    parser.add_argument("--no-hfray-default", action="store_true", help="the --hfray-variants runs only")
    parser.add_argument("--no-bare-default", action="store_true", help="the --bare-variants runs only")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--docs", type=int, default=None, help="documents in the synthetic corpus")
    parser.add_argument("--address", default=None, help="a running Ray cluster; default: start one")
    args = parser.parse_args()
    args.steps = args.steps or (12 if args.smoke else 300)
    args.batch = args.batch or (4 if args.smoke else 32 if args.cpu else 64)
    args.seq = min(args.seq, 32) if args.smoke else args.seq
    run(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cpu_mode = args.smoke or getattr(args, "cpu", False)
    gpu = torch.cuda.is_available() and not cpu_mode
    counts = [int(n) for n in (args.gpus or ("1,2" if torch.cuda.device_count() > 1 or cpu_mode else "1")).split(",")]
    work = args.out / "work"
    data = write_corpus(work, args.docs or (60 if args.smoke else 4000))
    own = {w for w in args.workloads.split(",") if not (getattr(args, "cpu", False) and w in CPU_MODELS)}
    tokenizers = train_tokenizers(work, data, args.smoke, {tokenizer_of(w) for w in own})
    if "dpo" in args.workloads.split(","):  # preference pairs of seq tokens a sequence, one epoch of the run
        rows = max(64, min(2048, args.steps * args.batch))
        data.update(throughput_dpo.write_preferences(work, tokenizers["llama"], args.seq, rows))
    address = args.address or _start_cluster()
    result: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": [],
    }
    result["settings"]["out"] = str(args.out)
    for workload in args.workloads.split(","):
        spec = spec_for(workload, args, data, tokenizers)
        for n in counts:
            cases = []
            if "bare" in args.runners and n == 1:  # one device: the ceiling the other runners are held to
                bare_variants = [v for v in getattr(args, "bare_variants", "").split(",") if v]
                plain_bare = [] if getattr(args, "no_bare_default", False) else ["default"]
                cases += [("bare", v) for v in [*plain_bare, *bare_variants]]
            cases += [("plain", "default")] if "plain" in args.runners else []
            if "hfray" in args.runners:
                every_n = n == 1 or getattr(args, "cpu", False)  # --cpu: the variants for each layout
                variants = [] if getattr(args, "no_hfray_default", False) else ["default"]
                variants += [v for v in args.hfray_variants.split(",") if v] if every_n else []
                cases += [("hfray", v) for v in variants]
            for runner, variant in cases:
                out = args.out / "cases" / f"{workload}-{runner}-{variant}-{n}"
                out.mkdir(parents=True, exist_ok=True)
                if runner == "bare":
                    row = run_bare(spec, out, variant)
                elif runner == "plain":  # --cpu, N > 1: torchrun's N x 1 thread, the global batch split as hfray's
                    row = run_plain({**spec, "batch": spec["batch"] // n} if spec["cpu"] else spec, n, out)
                else:
                    row = run_hfray(spec, n, gpu, address, out, variant)
                name = runner if variant == "default" else f"{runner}-{variant}"
                result["rows"].append({"workload": workload, "runner": name, "gpus": n, **row})
                print(json.dumps(result["rows"][-1]), flush=True)
                add_ratios(result["rows"])
                _write(result, args.out)
    return result


def _write(result: dict[str, Any], out: Path) -> None:
    (out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "throughput.md").write_text(markdown(result))


def _start_cluster() -> str:
    from hfray.cluster.connect import start_local_cluster

    return start_local_cluster(None, None, configure_logging=False, log_to_driver=False)


if __name__ == "__main__":
    main()
