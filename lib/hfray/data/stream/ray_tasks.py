"""What Ray Data's ``map_batches`` tasks run: the hash split of held-out text, and tokenize-and-pack.

Each task runs in a Ray worker process of its own that unpickles these functions by module: keep the imports
light (no ``datasets``; transformers only when the driver could not verify the Rust tokenizer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from hfray import timeline
from hfray.data import lm as lm_data
from hfray.data.lm import IDS, TEXT

_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_in_task(path: str, backend: Any = None) -> Any:
    """One tokenizer per Ray worker process: tasks reuse processes, loading is not free.

    ``backend`` (an ObjectRef of :func:`lm_data.backend_tokenizer_spec`, which the driver verified) gives the Rust
    tokenizer without importing transformers; None loads the HF tokenizer from ``path``.
    """
    if path not in _TOKENIZERS:
        timeline.mark_process_start("data_task")
        timeline.mark("data_task_start", "data_task")
        if backend is not None:
            _TOKENIZERS[path] = lm_data.BackendTokenizer(**ray.get(backend))
        else:
            from transformers import AutoTokenizer

            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
        timeline.mark("data_task_tokenizer_loaded", "data_task")
    return _TOKENIZERS[path]


def keep_split_batch(batch: Any, held_out: bool, fraction: float, seed: int) -> Any:
    """pyarrow batch -> the rows of one side of the hash split."""
    import pyarrow as pa

    mask = lm_data.in_validation(batch.column(TEXT).to_pylist(), fraction, seed)
    return batch.filter(pa.array(mask if held_out else ~mask))


def pack_batch(
    batch: Any, tokenizer_path: str, task: str, block_size: int, backend: Any = None
) -> dict[str, np.ndarray]:
    """pyarrow batch of texts -> packed blocks (fewer rows; the batch's tail shorter than a block is dropped)."""
    tokenizer = _tokenizer_in_task(tokenizer_path, backend)
    return {IDS: lm_data.pack_texts(batch.column(TEXT).to_pylist(), tokenizer, task, block_size)}
