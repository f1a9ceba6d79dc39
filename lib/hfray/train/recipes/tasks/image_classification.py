"""Image classification: one label per image, any ``AutoModelForImageClassification`` (ViT, ConvNeXt, ...).

The model's image processor (``AutoImageProcessor``; for a model built from ``model.architecture``, a
``ViTImageProcessor`` at the config's ``image_size``) resizes and normalises; training images first go through
the job's ``image_classification.augmentation`` (PIL). Images are decoded batch by batch as the Trainer asks for
them (``Dataset.with_transform``), never all at once. Accuracy and macro-F1 (scikit-learn) at every evaluation;
the artifact loads with ``transformers.pipeline("image-classification", model=ARTIFACT)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np

from hfray.config import JobConfig
from hfray.data.images import augmenter, check_images, open_image, undecoded
from hfray.errors import DataError, ModelError
from hfray.model import loading
from hfray.train.recipes.tasks.base import Encoded, TaskSpec, check_head

IMAGE_KEY = "image_classification.image_column"
DEFAULT_IMAGE_SIZE = 224  # ViTConfig's


def classification_scores(names: list[str]) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` reporting ``names`` ('accuracy', 'f1_macro', 'precision_macro' ...) with scikit-learn."""

    def compute(eval_pred: Any) -> dict[str, float]:
        from sklearn import metrics

        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions, references = np.asarray(logits).argmax(-1), np.asarray(eval_pred.label_ids)
        results = {}
        for name in names:
            base, _, average = name.partition("_")
            if base == "accuracy":
                results[name] = float(metrics.accuracy_score(references, predictions))
            else:
                score = getattr(metrics, f"{base}_score")
                results[name] = float(score(references, predictions, average=average, zero_division=0))
        return results

    return compute


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long),
    }


class ImageClassificationTask(TaskSpec):
    name = "image-classification"
    auto_model = "AutoModelForImageClassification"
    mapping = "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"

    # ------------------------------------------------------------------ data
    def columns(self, job: JobConfig) -> dict[str, str]:
        assert job.image_classification is not None
        return {IMAGE_KEY: job.image_classification.image_column, "data.label_column": job.data.label_column}

    def on_load(self, ds: datasets.Dataset, job: JobConfig, field: str) -> datasets.Dataset:
        assert job.image_classification is not None
        return undecoded(ds, job.image_classification.image_column, IMAGE_KEY, field)

    def check_rows(self, ds: datasets.Dataset, job: JobConfig, field: str) -> None:
        assert job.image_classification is not None
        column = job.data.label_column
        missing = [i for i, label in enumerate(ds[column]) if label is None or label == ""]
        if missing:
            raise DataError(f"{field} row {missing[0]}: data.label_column {column!r} is empty")
        check_images(ds, job.image_classification.image_column, IMAGE_KEY, field)

    def labels(self, splits: datasets.DatasetDict, job: JobConfig) -> list[str]:
        """data.labels, else the column's ClassLabel names, else the sorted label values of train."""
        column = job.data.label_column
        feature = splits["train"].features[column]
        names = job.data.labels or (list(feature.names) if isinstance(feature, datasets.ClassLabel) else None)
        if names is None:
            names = sorted({str(v) for v in splits["train"][column]})
        for split, ds in splits.items():
            unknown = sorted({label_name(v, ds.features[column], names) for v in ds[column]} - set(names))
            if unknown:
                raise DataError(f"data.{split}: labels {unknown[:10]} are not in the labels {names[:20]}")
        if len(names) < 2:
            raise DataError(f"data.label_column {column!r}: need at least 2 labels, found {names}")
        return names

    # ------------------------------------------------------------------ model
    def load_processor(self, job: JobConfig) -> Any:
        from transformers import AutoImageProcessor, ViTImageProcessor

        s, cfg = job.image_classification, job.model
        assert s is not None
        if s.image_processor is None and cfg.architecture is not None:
            size = int(cfg.architecture.get("image_size", DEFAULT_IMAGE_SIZE))
            return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        source = loading.absolute_model_source(s.image_processor or cfg.name_or_path)
        field = "image_classification.image_processor" if s.image_processor else "model.name_or_path"
        try:
            return AutoImageProcessor.from_pretrained(source, revision=cfg.revision)
        except Exception as exc:
            local = source.startswith(("/", ".", "~")) or os.path.isdir(source)  # type: ignore[union-attr]
            hint = "" if local else " (this machine may be offline: use a local dir, or model.architecture)"
            raise ModelError(f"{field}: no image processor at {source!r}{hint}: {type(exc).__name__}") from None

    def config_overrides(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        return {
            "problem_type": "single_label_classification",  # as text classification's: no second trace when compiled
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }

    def check_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        config = loading.load_config(job.model, **self.config_overrides(job, tokenizer, labels))
        check_head(job.model, config, self.mapping, self.name)
        return {"model_type": config.model_type}

    # ------------------------------------------------------------------ training
    def encode(self, splits: datasets.DatasetDict, tokenizer: Any, job: JobConfig, labels: list[str]) -> Encoded:
        s = job.image_classification
        assert s is not None
        ids = {name: i for i, name in enumerate(labels)}
        augment = augmenter(**s.augmentation.to_dict())

        def transform(train: bool, feature: Any) -> Callable[[dict[str, list[Any]]], dict[str, Any]]:
            def apply(batch: dict[str, list[Any]]) -> dict[str, Any]:
                images = [open_image(v).convert("RGB") for v in batch[s.image_column]]
                if train:
                    images = [augment(image) for image in images]
                pixels = tokenizer(images=images, return_tensors="pt")["pixel_values"]
                targets = [ids[label_name(v, feature, labels)] for v in batch[job.data.label_column]]
                return {"pixel_values": list(pixels), "labels": targets}

            return apply

        enc = {
            name: ds.with_transform(transform(name == "train", ds.features[job.data.label_column]))
            for name, ds in splits.items()
        }
        scores = classification_scores(job.evaluation.metrics)
        metrics = {"eval": scores, **({"test": scores} if "test" in enc else {})}
        return Encoded(enc["train"], {k: v for k, v in enc.items() if k != "train"}, metrics)

    def collator(self, tokenizer: Any, model: Any, job: JobConfig) -> Any:
        return collate

    def training_args(self, kwargs: dict[str, Any], job: JobConfig) -> Any:
        from transformers import TrainingArguments

        # The image column feeds the transform: the Trainer must not drop it for not being a forward argument.
        return TrainingArguments(**{**kwargs, "remove_unused_columns": False})

    # ------------------------------------------------------------------ artifact
    def pipeline_task(self, job: JobConfig) -> str:
        return "image-classification"


def label_name(value: Any, feature: Any, names: list[str]) -> str:
    """A label value as its name: a ClassLabel id by the column's names, anything else as text."""
    if isinstance(feature, datasets.ClassLabel) and isinstance(value, int):
        return feature.names[value]
    return str(value)
