"""Token classification (NER-style): one tag per word, entity-level F1 with seqeval.

Words are tokenized with ``is_split_into_words``; a word's first sub-token carries its tag and the
other sub-tokens are ignored by the loss (-100), unless ``label_all_subwords`` (then B-X continues as
I-X), as in the Hugging Face token-classification example. Evaluation maps the argmax of each
labelled position back to tag names and reports seqeval's precision, recall, F1 and accuracy.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from hfray.config import JobConfig
from hfray.errors import DataError
from hfray.model import loading
from hfray.train.arguments import pad_multiple
from hfray.train.recipes.tasks.base import Encoded, TaskSpec, check_fast_tokenizer, map_split, tokenizer_key
from hfray.train.recipes.tasks.data import row_error


def _class_label_names(ds: datasets.Dataset, column: str) -> list[str] | None:
    feature = ds.features.get(column)
    inner = getattr(feature, "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


class TokenClassificationTask(TaskSpec):
    name = "token-classification"
    auto_model = "AutoModelForTokenClassification"
    mapping = "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"

    def columns(self, job: JobConfig) -> dict[str, str]:
        s = job.token_classification
        assert s is not None
        return {
            "token_classification.tokens_column": s.tokens_column,
            "token_classification.tags_column": s.tags_column,
        }

    def check_rows(self, ds: datasets.Dataset, job: JobConfig, field: str) -> None:
        s = job.token_classification
        assert s is not None
        tok_key, tag_key = "token_classification.tokens_column", "token_classification.tags_column"
        for i, (words, tags) in enumerate(zip(ds[s.tokens_column], ds[s.tags_column], strict=True)):
            if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
                raise row_error(field, i, tok_key, s.tokens_column, f"must be a non-empty list of words, got {words!r}")
            if not isinstance(tags, list) or not all(isinstance(t, (str, int)) for t in tags):
                raise row_error(
                    field, i, tag_key, s.tags_column, f"must be a list of tags (strings or ints), got {tags!r}"
                )
            if len(tags) != len(words):
                raise row_error(field, i, tag_key, s.tags_column, f"has {len(tags)} tags for {len(words)} words")

    def labels(self, splits: datasets.DatasetDict, job: JobConfig) -> list[str]:
        """Tag names in id order: data.labels, else the column's ClassLabel names, else sorted from train."""
        s = job.token_classification
        assert s is not None
        names = job.data.labels or _class_label_names(splits["train"], s.tags_column)
        for split, ds in splits.items():
            found = {t for tags in ds[s.tags_column] for t in tags}
            ints = sorted(t for t in found if isinstance(t, int))
            if ints and names is None:
                raise DataError(
                    f"data.{split}: token_classification.tags_column {s.tags_column!r} holds integer tags: "
                    f"give their names in id order as data.labels (e.g. [O, B-PER, I-PER])"
                )
            if ints and not 0 <= ints[0] <= ints[-1] < len(names or []):
                raise DataError(f"data.{split}: tag ids {ints[0]}..{ints[-1]} do not fit data.labels {names}")
            unknown = sorted(str(t) for t in found if isinstance(t, str) and names is not None and t not in names)
            if unknown:
                raise DataError(f"data.{split}: tags {unknown[:10]} are not in data.labels {names}")
            if names is None:
                names = sorted(str(t) for t in found)
        assert names is not None
        if len(names) < 2:
            raise DataError(f"token_classification.tags_column {s.tags_column!r}: need at least 2 tags, found {names}")
        return list(names)

    def config_overrides(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        return loading.classification_overrides(labels, tokenizer)

    def check_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        check_fast_tokenizer(tokenizer, self.name, "word ids (which sub-token belongs to which word)")
        return super().check_model(job, tokenizer, labels)

    def encode(self, splits: datasets.DatasetDict, tokenizer: Any, job: JobConfig, labels: list[str]) -> Encoded:
        s = job.token_classification
        assert s is not None
        label2id = {name: i for i, name in enumerate(labels)}
        # label_all_subwords: the continuation of a B-X word is I-X (when that tag exists).
        inside = {i: label2id.get("I-" + n[2:], i) for i, n in enumerate(labels) if n.startswith("B-")}

        def encode_batch(batch: dict[str, list[Any]]) -> dict[str, Any]:
            out = tokenizer(
                batch[s.tokens_column], is_split_into_words=True, truncation=True, max_length=job.data.max_length
            )
            out["labels"] = []
            for row, tags in enumerate(batch[s.tags_column]):
                ids = [t if isinstance(t, int) else label2id[t] for t in tags]
                previous, row_labels = None, []
                for word in out.word_ids(row):
                    if word is None:
                        row_labels.append(-100)
                    elif word != previous:
                        row_labels.append(ids[word])
                    else:
                        row_labels.append(inside.get(ids[word], ids[word]) if s.label_all_subwords else -100)
                    previous = word
                out["labels"].append(row_labels)
            return out

        key = tokenizer_key(tokenizer, job, s) + f"|{labels}"
        enc = {name: map_split(ds, encode_batch, key, f"tokenize {name}") for name, ds in splits.items()}
        metrics = {"eval": seqeval_metrics_fn(labels)}
        if "test" in enc:
            metrics["test"] = metrics["eval"]
        return Encoded(enc["train"], {k: v for k, v in enc.items() if k != "train"}, metrics)

    def collator(self, tokenizer: Any, model: Any, job: JobConfig) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_multiple(job))

    def pipeline_task(self, job: JobConfig) -> str:
        return "token-classification"

    def manifest_extras(self, job: JobConfig) -> dict[str, Any]:
        assert job.token_classification is not None
        return {"pipeline_kwargs": {"aggregation_strategy": job.token_classification.aggregation_strategy}}


def seqeval_metrics_fn(labels: list[str]) -> Any:
    """``compute_metrics``: tags of the labelled positions (first sub-tokens) -> seqeval scores."""
    from hfray.train.recipes.tasks.metrics import load_task_metric

    seqeval = load_task_metric("seqeval")

    def compute(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions, references = np.asarray(logits).argmax(-1), np.asarray(eval_pred.label_ids)
        preds, refs = [], []
        for pred_row, ref_row in zip(predictions, references, strict=True):
            keep = ref_row != -100
            preds.append([labels[p] for p in pred_row[keep]])
            refs.append([labels[r] for r in ref_row[keep]])
        return seqeval.compute(predictions=preds, references=refs)

    return compute
