"""The metrics of the fine-tuning tasks, as ``evaluate.Metric`` classes that work offline.

``evaluate.load("seqeval" | "squad" | "sacrebleu" | "rouge")`` fetches each metric's script from the
Hugging Face Hub, which fails offline. These classes compute the same results with the packages those
scripts call (pinned in pyproject.toml): ``seqeval`` (entity-level P/R/F1 on IOB tags, token accuracy),
the SQuAD v1.1 evaluation (exact match and token F1 after the official normalisation, in percent),
``sacrebleu`` (corpus BLEU and chrF, 0-100) and ``rouge_score`` (mean F-measure, 0-1, stemmed).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import datasets
import evaluate

_TEXT = datasets.Value("string")


def _info(name: str, citation: str, features: datasets.Features) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=f"{name}, as evaluate-metric/{name.lower()} computes it (no Hub access needed)",
        citation=citation,
        inputs_description="see the class docstring",
        features=features,
    )


class Seqeval(evaluate.Metric):
    """predictions, references: one list of tags (IOB strings) per sequence."""

    def _info(self) -> evaluate.MetricInfo:
        seq = datasets.Sequence(_TEXT)
        return _info("seqeval", "Nakayama, seqeval, 2018", datasets.Features({"predictions": seq, "references": seq}))

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        refs, preds = [list(r) for r in references], [list(p) for p in predictions]
        return {
            "precision": float(precision_score(refs, preds, zero_division=0)),
            "recall": float(recall_score(refs, preds, zero_division=0)),
            "f1": float(f1_score(refs, preds, zero_division=0)),
            "accuracy": float(accuracy_score(refs, preds)),
        }


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


class Squad(evaluate.Metric):
    """predictions: predicted answer texts; references: the list of acceptable answers of each question."""

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features({"predictions": _TEXT, "references": datasets.Sequence(_TEXT)})
        return _info("squad", "Rajpurkar et al., SQuAD: 100,000+ Questions, EMNLP 2016", features)

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        em = f1 = 0.0
        for pred, truths in zip(predictions, references, strict=True):
            em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
            f1 += max(_token_f1(pred, t) for t in truths)
        n = max(len(predictions), 1)
        return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


class SacreBleu(evaluate.Metric):
    """predictions: generated texts; references: one reference text each. Corpus BLEU and chrF (0-100)."""

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features({"predictions": _TEXT, "references": _TEXT})
        return _info("sacrebleu", "Post, A Call for Clarity in Reporting BLEU Scores, WMT 2018", features)

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        import sacrebleu

        refs = [list(references)]
        return {
            "bleu": float(sacrebleu.corpus_bleu(list(predictions), refs).score),
            "chrf": float(sacrebleu.corpus_chrf(list(predictions), refs).score),
        }


class Rouge(evaluate.Metric):
    """predictions: generated texts; references: one reference each. Mean F-measure (0-1), Porter-stemmed."""

    KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

    def _info(self) -> evaluate.MetricInfo:
        features = datasets.Features({"predictions": _TEXT, "references": _TEXT})
        return _info("rouge", "Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004", features)

    def _compute(self, predictions: Any, references: Any) -> dict[str, float]:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(self.KEYS), use_stemmer=True)
        totals = dict.fromkeys(self.KEYS, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            for key, score in scorer.score(ref, pred).items():
                totals[key] += score.fmeasure
        n = max(len(predictions), 1)
        return {key: value / n for key, value in totals.items()}


def load_task_metric(name: str) -> evaluate.EvaluationModule:
    metrics = {"seqeval": Seqeval, "squad": Squad, "sacrebleu": SacreBleu, "rouge": Rouge}
    return metrics[name](keep_in_memory=True)
