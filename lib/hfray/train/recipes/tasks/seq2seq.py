"""Sequence to sequence (translation, summarization): ``Seq2SeqTrainer`` with ``predict_with_generate``.

Models: any encoder-decoder transformers knows (BART, T5, Marian ... pretrained or from
``model.architecture``); ``model.architecture`` with ``model_type: encoder-decoder`` and ``encoder`` /
``decoder`` sub-configs builds an ``EncoderDecoderModel``; a pretrained *encoder-only* model (e.g.
``builtin:all-MiniLM-L6-v2``) is warm-started as both halves of an ``EncoderDecoderModel``
(``from_encoder_decoder_pretrained``; the decoder's cross-attention is new). Decoder start, pad and
eos ids come from the tokenizer when the model does not bring them (BERT tokenizers: CLS, PAD, SEP).
The job's ``seq2seq.generation`` settings are saved on the model's generation config, so evaluation,
``hfray predict`` and the artifact agree. Metrics: sacreBLEU / chrF and ROUGE on decoded texts.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from hfray.config import JobConfig
from hfray.errors import ModelError
from hfray.model import loading
from hfray.train.arguments import pad_multiple
from hfray.train.recipes.tasks.base import Encoded, TaskSpec, check_vocab, map_split, tokenizer_key
from hfray.train.recipes.tasks.data import row_error

_SEQ2SEQ = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"


def special_ids(tokenizer: Any) -> dict[str, int]:
    """Decoder start, pad and eos ids a tokenizer implies (BERT-style tokenizers have CLS/SEP instead)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids = {"decoder_start_token_id": start, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ModelError(f"model.tokenizer: no token for {missing} (needs bos or cls, pad, eos or sep)")
    return ids


def _mapping(name: str) -> Any:
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, name)


def _architecture_model(job: JobConfig, tokenizer: Any, build: bool) -> Any:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderConfig, EncoderDecoderModel

    arch = dict(job.model.architecture or {})
    if arch.get("model_type") != "encoder-decoder":
        overrides = {**special_ids(tokenizer), "vocab_size": len(tokenizer)}
        config = loading.load_config(job.model, **{k: v for k, v in overrides.items() if k not in arch})
        if config.model_type not in _mapping(_SEQ2SEQ):
            raise ModelError(
                f"model.architecture.model_type: {config.model_type!r} is not an encoder-decoder; e.g. bart, t5"
            )
        check_vocab(job.model, config, tokenizer)
        if getattr(config, "forced_eos_token_id", None) is not None:
            config.forced_eos_token_id = config.eos_token_id  # BART's default is its own vocabulary's eos
        return AutoModelForSeq2SeqLM.from_config(config, **loading.attention_kwargs(job.model)) if build else config
    halves = {}
    for half in ("encoder", "decoder"):
        sub = arch.get(half)
        if not isinstance(sub, dict) or "model_type" not in sub:
            raise ModelError(f"model.architecture.{half}: a config dict with 'model_type' (e.g. bert) is needed")
        sub = {"vocab_size": len(tokenizer), **sub}
        if half == "decoder":
            sub.update(is_decoder=True, add_cross_attention=True)
        halves[half] = AutoConfig.for_model(sub.pop("model_type"), **sub)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(halves["encoder"], halves["decoder"])
    return EncoderDecoderModel(config=config) if build else config


def _pretrained_model(job: JobConfig, build: bool) -> Any:
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    cfg = job.model
    config = loading.load_config(cfg)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code, **loading.attention_kwargs(cfg)}
    if config.model_type in _mapping(_SEQ2SEQ):
        return AutoModelForSeq2SeqLM.from_pretrained(cfg.name_or_path, **kwargs) if build else config
    if config.model_type not in _mapping("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"):
        raise ModelError(
            f"model.name_or_path: {config.model_type!r} is neither an encoder-decoder nor an encoder that can "
            f"warm-start one (e.g. bert)"
        )
    if not build:
        return config
    print(f"[hfray] warm-starting an encoder-decoder from {cfg.name_or_path} (encoder and decoder)", flush=True)
    return EncoderDecoderModel.from_encoder_decoder_pretrained(cfg.name_or_path, cfg.name_or_path)


class Seq2SeqTask(TaskSpec):
    name = "seq2seq"

    def columns(self, job: JobConfig) -> dict[str, str]:
        s = job.seq2seq
        assert s is not None
        return {"seq2seq.source_column": s.source_column, "seq2seq.target_column": s.target_column}

    def check_rows(self, ds: datasets.Dataset, job: JobConfig, field: str) -> None:
        s = job.seq2seq
        assert s is not None
        for key, column in self.columns(job).items():
            for i, value in enumerate(ds[column]):
                if not isinstance(value, str) or not value.strip():
                    raise row_error(field, i, key, column, f"must be non-empty text, got {value!r}")

    def check_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        special_ids(tokenizer)
        if job.model.architecture is not None:
            config = _architecture_model(job, tokenizer, build=False)
        else:
            config = _pretrained_model(job, build=False)
        return {"model_type": config.model_type}

    def build_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> Any:
        if job.model.architecture is not None:
            model = _architecture_model(job, tokenizer, build=True)
        else:
            model = _pretrained_model(job, build=True)
        ids = special_ids(tokenizer)
        for key, value in ids.items():
            # A pretrained seq2seq model brings its own ids; warm-started and new models take the tokenizer's.
            if getattr(model.config, key, None) is None:
                setattr(model.config, key, value)
            if getattr(model.generation_config, key, None) is None:
                setattr(model.generation_config, key, getattr(model.config, key))
        self.prepare_export(model, job)
        model.accepts_loss_kwargs = False  # as in hfray.model.loading: per-batch mean, averaged by DDP
        return model

    def prepare_export(self, model: Any, job: JobConfig) -> None:
        assert job.seq2seq is not None
        g = job.seq2seq.generation
        settings: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "num_beams": g.num_beams, "max_length": None}
        if g.min_new_tokens:
            settings["min_new_tokens"] = g.min_new_tokens
        if g.no_repeat_ngram_size:
            settings["no_repeat_ngram_size"] = g.no_repeat_ngram_size
        if g.num_beams > 1:  # beam-only flags: a greedy config carrying them does not validate on save
            settings.update(length_penalty=g.length_penalty, early_stopping=g.early_stopping)
        model.generation_config.update(**settings)

    def encode(self, splits: datasets.DatasetDict, tokenizer: Any, job: JobConfig, labels: list[str]) -> Encoded:
        s = job.seq2seq
        assert s is not None

        def encode_batch(batch: dict[str, list[Any]]) -> dict[str, Any]:
            sources = [s.source_prefix + text for text in batch[s.source_column]]
            out = tokenizer(sources, truncation=True, max_length=job.data.max_length)
            targets = tokenizer(text_target=batch[s.target_column], truncation=True, max_length=s.max_target_length)
            out["labels"] = targets["input_ids"]
            out.pop("token_type_ids", None)  # BERT tokenizers make them; encoder-decoders do not take them
            return out

        key = tokenizer_key(tokenizer, job, s)
        enc = {name: map_split(ds, encode_batch, key, f"tokenize {name}") for name, ds in splits.items()}
        metric_fn = generation_metrics_fn(tokenizer, job.evaluation.metrics)
        metrics = {"eval": metric_fn, "test": metric_fn}
        return Encoded(enc["train"], {k: v for k, v in enc.items() if k != "train"}, metrics)

    def collator(self, tokenizer: Any, model: Any, job: JobConfig) -> Any:
        from transformers import DataCollatorForSeq2Seq

        multiple = pad_multiple(job)
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, pad_to_multiple_of=multiple)

    def training_args(self, kwargs: dict[str, Any], job: JobConfig) -> Any:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments(**kwargs, predict_with_generate=True)

    def trainer_class(self) -> type:
        from transformers import Seq2SeqTrainer

        return Seq2SeqTrainer

    def pipeline_task(self, job: JobConfig) -> str:
        return "hfray-seq2seq"  # transformers 5 removed text2text/translation/summarization; hfray.artifacts.pipelines

    def manifest_extras(self, job: JobConfig) -> dict[str, Any]:
        assert job.seq2seq is not None
        kwargs = {"source_prefix": job.seq2seq.source_prefix, "max_length": job.data.max_length}
        generation = {"pipeline": job.seq2seq.pipeline, **job.seq2seq.generation.model_dump()}
        return {"pipeline_kwargs": kwargs, "generation": generation}


def generation_metrics_fn(tokenizer: Any, names: list[str]) -> Any:
    """``compute_metrics``: generated ids and label ids -> texts -> sacreBLEU/chrF and ROUGE (those asked for)."""
    from hfray.train.recipes.tasks.metrics import load_task_metric

    bleu = load_task_metric("sacrebleu") if {"bleu", "chrf"} & set(names) else None
    rouge = load_task_metric("rouge") if any(n.startswith("rouge") for n in names) else None

    def compute(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds, refs = np.asarray(preds), np.asarray(eval_pred.label_ids)
        # -100 pads labels (and gathered predictions); the tokenizer cannot decode it.
        preds = np.where(preds < 0, tokenizer.pad_token_id, preds)
        refs = np.where(refs < 0, tokenizer.pad_token_id, refs)
        texts = [t.strip() for t in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        gold = [t.strip() for t in tokenizer.batch_decode(refs, skip_special_tokens=True)]
        results: dict[str, float] = {}
        if bleu is not None:
            results.update(bleu.compute(predictions=texts, references=gold))
        if rouge is not None:
            results.update(rouge.compute(predictions=texts, references=gold))
        lengths = (preds != tokenizer.pad_token_id).sum(-1)
        results["gen_len"] = float(np.mean(lengths)) if len(lengths) else 0.0
        return {k: v for k, v in results.items() if k in names or k == "gen_len"}

    return compute
