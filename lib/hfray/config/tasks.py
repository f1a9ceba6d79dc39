"""Job-file sections of the fine-tuning tasks beyond text classification.

``token_classification``, ``question_answering``, ``seq2seq`` and ``image_classification`` each name their data
columns and the task's own settings. ``JobConfig`` (:mod:`hfray.config.job`) embeds them, fills each task's evaluation
defaults (:func:`evaluation_defaults`) and holds the rules that tie a task to its section.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hfray.config.evaluation import CLASSIFICATION_METRICS
from hfray.config.section import Section

FINETUNE_TASKS = ("token-classification", "question-answering", "seq2seq", "image-classification")
# The metrics each task reports at every evaluation (as eval_<name>); evaluation.metrics picks among them.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "token-classification": ("f1", "precision", "recall", "accuracy"),  # seqeval: entity-level, token accuracy
    "question-answering": ("exact_match", "f1"),  # SQuAD v1.1: percentages, as the official script
    "seq2seq": ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"),  # sacreBLEU 0-100, ROUGE 0-1
    "image-classification": CLASSIFICATION_METRICS,  # scikit-learn, as text classification
}
_DEFAULT_EVALUATION = {
    "token-classification": {"metrics": ["f1", "precision", "recall", "accuracy"], "metric_for_best_model": "f1"},
    "question-answering": {"metrics": ["exact_match", "f1"], "metric_for_best_model": "f1"},
    "seq2seq": {"metrics": ["bleu", "rougeL"], "metric_for_best_model": "bleu"},
    "image-classification": {"metrics": ["accuracy", "f1_macro"], "metric_for_best_model": "f1_macro"},
}
# The job-file key of each task's section.
SECTION_OF = {
    "token-classification": "token_classification",
    "question-answering": "question_answering",
    "seq2seq": "seq2seq",
    "image-classification": "image_classification",
}


class TokenClassificationConfig(Section):
    """Rows of words with one tag each (NER-style, e.g. B-PER I-PER O)."""

    tokens_column: str = Field("tokens", description="Column holding a list of words per row.")
    tags_column: str = Field(
        "tags", description="Column holding one tag per word: strings, or ints with data.labels (or ClassLabel names)."
    )
    label_all_subwords: bool = Field(
        False, description="False: only a word's first sub-token carries its tag (the rest are ignored by the loss)."
    )
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = Field(
        "simple", description="How hfray predict / serve group sub-tokens into entities (transformers.pipeline)."
    )


class QuestionAnsweringConfig(Section):
    """Extractive QA, SQuAD-style: answers is {'text': [...], 'answer_start': [...]} (character offsets)."""

    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    doc_stride: int = Field(32, ge=0, description="Tokens shared by consecutive windows of a long context.")
    max_answer_length: int = Field(30, ge=1, description="Longest answer span, in tokens, at prediction.")
    n_best_size: int = Field(20, ge=1, description="Start and end candidates tried per window.")


class GenerationSettings(Section):
    """Saved on the model's generation config: evaluation (predict_with_generate), predict and serve use it."""

    max_new_tokens: int = Field(64, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    num_beams: int = Field(1, ge=1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(0, ge=0)
    early_stopping: bool = False


class Seq2SeqConfig(Section):
    """Source text to target text (translation, summarization) with an encoder-decoder model."""

    source_column: str = "source"
    target_column: str = "target"
    source_prefix: str = Field("", description="Prepended to every source, e.g. 'translate English to Spanish: '.")
    max_target_length: int = Field(128, ge=2, le=32768, description="Target tokens kept for training labels.")
    pipeline: Literal["translation", "summarization", "text2text-generation"] = Field(
        "translation", description="The transformers.pipeline the artifact is served with."
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings)


class ImageAugmentation(Section):
    """Random changes to each training image (never to evaluation images), before the image processor runs."""

    crop_scale_min: float = Field(
        1.0, gt=0, le=1, description="Random crop keeping at least this fraction of the area, resized back; 1: off."
    )
    rotation_degrees: float = Field(0.0, ge=0, le=180, description="Random rotation within +-this many degrees.")
    horizontal_flip: bool = Field(False, description="Mirror half of the images (not for digits or text).")
    brightness: float = Field(0.0, ge=0, lt=1, description="Random brightness factor in [1-x, 1+x].")
    contrast: float = Field(0.0, ge=0, lt=1, description="Random contrast factor in [1-x, 1+x].")


class ImageClassificationConfig(Section):
    """Images with one label each (data.label_column): image folders, Arrow/Parquet/JSON with an image column."""

    image_column: str = Field(
        "image", description="Column holding images (datasets Image, file paths, or PNG/JPEG bytes)."
    )
    image_processor: str | None = Field(
        None,
        description="Image processor dir or Hub id; default: model.name_or_path's, or for model.architecture a "
        "ViTImageProcessor at architecture.image_size (mean and std 0.5).",
    )
    augmentation: ImageAugmentation = Field(default_factory=ImageAugmentation)


def evaluation_defaults(raw: Any) -> Any:
    """A raw job dict with its task's evaluation defaults under what the job sets itself."""
    if not isinstance(raw, dict) or raw.get("task") not in _DEFAULT_EVALUATION:
        return raw
    evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
    return {**raw, "evaluation": {**_DEFAULT_EVALUATION[raw["task"]], **evaluation}}
