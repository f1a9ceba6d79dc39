"""``transformers.pipeline`` tasks for extractive QA and seq2seq artifacts.

transformers 5 removed its ``question-answering``, ``translation``, ``summarization`` and
``text2text-generation`` pipelines. hfray registers two pipelines of its own in transformers'
``PIPELINE_REGISTRY`` (the documented way to add a pipeline), so artifacts of these tasks still load
with ``transformers.pipeline(task, model=artifact)`` once this module is imported (``hfray predict``
and :func:`hfray.artifacts.loading.load_artifact_pipeline` import it):

* ``hfray-question-answering``: ``pipe({"question": ..., "context": ...})`` -> ``{"answer", "score",
  "start", "end"}`` (character offsets); long contexts are cut into overlapping windows exactly as in
  training, and spans are chosen by :func:`hfray.artifacts.qa_postprocess.best_answers`, as in evaluation.
* ``hfray-seq2seq``: ``pipe("source text")`` -> ``{"generated_text"}`` with the model's generation config
  (the job's ``seq2seq.generation``), the job's ``source_prefix`` prepended.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from hfray.artifacts.qa_postprocess import best_answers

QA_TASK = "hfray-question-answering"
SEQ2SEQ_TASK = "hfray-seq2seq"


class ExtractiveQAPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(
        self,
        max_length: int | None = None,
        doc_stride: int | None = None,
        max_answer_length: int | None = None,
        n_best_size: int | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        pre = {k: v for k, v in {"max_length": max_length, "doc_stride": doc_stride}.items() if v is not None}
        post = {"max_answer_length": max_answer_length, "n_best_size": n_best_size}
        return pre, {}, {k: v for k, v in post.items() if v is not None}

    def preprocess(self, inputs: dict[str, str], max_length: int = 384, doc_stride: int = 128) -> dict[str, Any]:
        if not isinstance(inputs, dict) or not {"question", "context"} <= set(inputs):
            raise ValueError("question answering takes {'question': str, 'context': str}")
        enc = self.tokenizer(
            inputs["question"].lstrip(),
            inputs["context"],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length",
            return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping").tolist()
        enc.pop("overflow_to_sample_mapping")
        context_offsets = [
            [o if enc.sequence_ids(w)[k] == 1 else None for k, o in enumerate(window)]
            for w, window in enumerate(offsets)
        ]
        return {"model_inputs": dict(enc), "offsets": context_offsets, "context": inputs["context"]}

    def _forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        names = self.tokenizer.model_input_names
        out = self.model(**{k: v for k, v in batch["model_inputs"].items() if k in names})
        return {
            "start": out.start_logits,
            "end": out.end_logits,
            "offsets": batch["offsets"],
            "context": batch["context"],
        }

    def postprocess(
        self, outputs: dict[str, Any], max_answer_length: int = 30, n_best_size: int = 20
    ) -> dict[str, Any]:
        windows = len(outputs["offsets"])
        found = best_answers(
            outputs["start"].float().cpu().numpy(),
            outputs["end"].float().cpu().numpy(),
            outputs["offsets"],
            [0] * windows,
            [outputs["context"]],
            n_best_size,
            max_answer_length,
        )
        return found[0]


class Seq2SeqGenerationPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(
        self, source_prefix: str | None = None, max_length: int | None = None, **generate_kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        pre = {k: v for k, v in {"source_prefix": source_prefix, "max_length": max_length}.items() if v is not None}
        return pre, generate_kwargs, {}

    def preprocess(self, text: str, source_prefix: str = "", max_length: int = 512) -> dict[str, Any]:
        enc = self.tokenizer(source_prefix + text, truncation=True, max_length=max_length, return_tensors="pt")
        enc.pop("token_type_ids", None)  # BERT tokenizers make them; encoder-decoders do not take them
        return dict(enc)

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs: Any) -> Any:
        names = self.tokenizer.model_input_names
        inputs = {k: v for k, v in model_inputs.items() if k in names}
        return self.model.generate(**inputs, **generate_kwargs)

    def postprocess(self, generated: Any) -> dict[str, str]:
        return {"generated_text": self.tokenizer.decode(generated[0], skip_special_tokens=True).strip()}


PIPELINE_REGISTRY.register_pipeline(
    QA_TASK, pipeline_class=ExtractiveQAPipeline, pt_model=AutoModelForQuestionAnswering, type="text"
)
PIPELINE_REGISTRY.register_pipeline(
    SEQ2SEQ_TASK, pipeline_class=Seq2SeqGenerationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
)
