"""Extractive question answering, SQuAD v1.1-style: the answer is a span of the context.

As in the Hugging Face question-answering example: question and context are tokenized together
(``truncation="only_second"``); a context longer than ``data.max_length`` becomes several windows
that overlap by ``question_answering.doc_stride`` tokens (``return_overflowing_tokens``). A window
that does not contain the answer is labelled with the CLS position. At evaluation the start/end
logits of all windows of a question go through :func:`hfray.artifacts.qa_postprocess.best_answers`
(n-best starts and ends, valid spans only) and the chosen spans are scored by SQuAD EM/F1.
"""

from __future__ import annotations

from typing import Any

import datasets

from hfray.artifacts.qa_postprocess import best_answers
from hfray.config import JobConfig
from hfray.errors import ConfigError, Problem
from hfray.train.recipes.tasks.base import Encoded, TaskSpec, check_fast_tokenizer, map_split, tokenizer_key
from hfray.train.recipes.tasks.data import row_error


def _answer_problem(answers: Any, context: str) -> str | None:
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list):
        return f"must be a mapping {{'text': [...], 'answer_start': [...]}}, got {answers!r}"
    texts, starts = answers["text"], answers.get("answer_start")
    if not isinstance(starts, list) or len(starts) != len(texts) or not texts:
        return f"needs as many 'answer_start' as 'text' entries (at least one), got {answers!r}"
    for text, start in zip(texts, starts, strict=True):
        if not isinstance(text, str) or not text or not isinstance(start, int):
            return f"'text' must be non-empty strings and 'answer_start' ints, got {answers!r}"
        if context[start : start + len(text)] != text:
            return f"answer {text!r} is not at character {start} of the context"
    return None


class QuestionAnsweringTask(TaskSpec):
    name = "question-answering"
    auto_model = "AutoModelForQuestionAnswering"
    mapping = "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"

    def columns(self, job: JobConfig) -> dict[str, str]:
        s = job.question_answering
        assert s is not None
        return {
            "question_answering.question_column": s.question_column,
            "question_answering.context_column": s.context_column,
            "question_answering.answers_column": s.answers_column,
        }

    def check_rows(self, ds: datasets.Dataset, job: JobConfig, field: str) -> None:
        s = job.question_answering
        assert s is not None
        rows = zip(ds[s.question_column], ds[s.context_column], ds[s.answers_column], strict=True)
        for i, (question, context, answers) in enumerate(rows):
            for key, column, value in (
                ("question", s.question_column, question),
                ("context", s.context_column, context),
            ):
                if not isinstance(value, str) or not value.strip():
                    raise row_error(
                        field, i, f"question_answering.{key}_column", column, f"must be text, got {value!r}"
                    )
            problem = _answer_problem(answers, context)
            if problem:
                raise row_error(field, i, "question_answering.answers_column", s.answers_column, problem)

    def check_model(self, job: JobConfig, tokenizer: Any, labels: list[str]) -> dict[str, Any]:
        check_fast_tokenizer(tokenizer, self.name, "character offsets of tokens (answer spans)")
        s = job.question_answering
        assert s is not None
        if s.doc_stride >= job.data.max_length // 2:
            raise ConfigError(
                [
                    Problem(
                        "question_answering.doc_stride",
                        f"must be below half of data.max_length ({job.data.max_length})",
                    )
                ]
            )
        return super().check_model(job, tokenizer, labels)

    def encode(self, splits: datasets.DatasetDict, tokenizer: Any, job: JobConfig, labels: list[str]) -> Encoded:
        s = job.question_answering
        assert s is not None
        key = tokenizer_key(tokenizer, job, s)
        train = map_split(splits["train"], window_encoder(tokenizer, job, False), key, "windows train")
        evals, metrics = {}, {}
        for name, prefix in (("validation", "eval"), ("test", "test")):
            if name in splits:
                evals[name] = map_split(splits[name], window_encoder(tokenizer, job, True), key, f"windows {name}")
                metrics[prefix] = squad_metrics_fn(splits[name], evals[name], job)
        return Encoded(train, evals, metrics)

    def pipeline_task(self, job: JobConfig) -> str:
        return "hfray-question-answering"  # transformers 5 removed its own; see hfray.artifacts.pipelines

    def manifest_extras(self, job: JobConfig) -> dict[str, Any]:
        s = job.question_answering
        assert s is not None
        kwargs = {
            "max_length": job.data.max_length,
            "doc_stride": s.doc_stride,
            "max_answer_length": s.max_answer_length,
        }
        return {"pipeline_kwargs": kwargs}


def window_encoder(tokenizer: Any, job: JobConfig, keep_offsets: bool) -> Any:
    """Batched map function: examples -> windows with start/end positions (+ offsets and example ids)."""
    s = job.question_answering
    assert s is not None
    pad_right = tokenizer.padding_side == "right"
    context_index = 1 if pad_right else 0

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        questions = [q.lstrip() for q in batch[s.question_column]]  # leading spaces waste window room
        first, second = (questions, batch[s.context_column]) if pad_right else (batch[s.context_column], questions)
        out = tokenizer(
            first,
            second,
            truncation="only_second" if pad_right else "only_first",
            max_length=job.data.max_length,
            stride=s.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length",
        )
        origin = out.pop("overflow_to_sample_mapping")
        out["start_positions"], out["end_positions"], ids = [], [], []
        for w, offsets in enumerate(out["offset_mapping"]):
            seq_ids = out.sequence_ids(w)
            answers = batch[s.answers_column][origin[w]]
            start, end = _span(offsets, seq_ids, context_index, answers, out["input_ids"][w], tokenizer)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            ids.append(origin[w])
            if keep_offsets:  # only context tokens can start or end an answer
                out["offset_mapping"][w] = [o if seq_ids[k] == context_index else None for k, o in enumerate(offsets)]
        if keep_offsets:
            out["example_id"] = ids
        else:
            out.pop("offset_mapping")
        return out

    return encode


def _span(offsets: list, seq_ids: list, ctx: int, answers: dict, input_ids: list, tokenizer: Any) -> tuple[int, int]:
    """Token positions of the first answer in this window, or the CLS position when it is not inside."""
    cls = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    first = seq_ids.index(ctx)
    last = len(seq_ids) - 1 - seq_ids[::-1].index(ctx)
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return cls, cls
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def squad_metrics_fn(examples: datasets.Dataset, windows: datasets.Dataset, job: JobConfig) -> Any:
    """``compute_metrics`` for one split: start/end logits of its windows -> best spans -> SQuAD EM/F1."""
    from hfray.train.recipes.tasks.metrics import load_task_metric

    s = job.question_answering
    assert s is not None
    squad = load_task_metric("squad")
    contexts, answers = examples[s.context_column], [a["text"] for a in examples[s.answers_column]]
    offsets, example_ids = windows["offset_mapping"], windows["example_id"]

    def compute(eval_pred: Any) -> dict[str, float]:
        start_logits, end_logits = eval_pred.predictions[:2]
        found = best_answers(
            start_logits, end_logits, offsets, example_ids, contexts, s.n_best_size, s.max_answer_length
        )
        return squad.compute(predictions=[f["answer"] for f in found], references=answers)

    return compute
