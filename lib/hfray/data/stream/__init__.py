"""The Ray Data pipeline of pre-training jobs: corpus -> tokenized, packed blocks -> a stream per worker.

Three places run it, one module each:

- :mod:`~hfray.data.stream.driver` describes the pipeline lazily: read (``read_text``, ``read_parquet``,
  ``read_csv``, ``read_json``; ``builtin:``/Hub corpora via ``from_huggingface``), split off held-out text by
  hash, tokenize and pack. Nothing runs until training starts, except the held-out set, which is small and
  materialized once so every worker evaluates on the same blocks.
- :mod:`~hfray.data.stream.ray_tasks` is what Ray Data's ``map_batches`` CPU tasks run (fresh processes: the
  module stays import-light, no ``datasets`` and, with the driver's verified Rust tokenizer, no transformers).
- :mod:`~hfray.data.stream.worker` wraps ``ray.train.get_dataset_shard("train")`` on each Ray Train worker: Ray
  Train splits the stream across workers (``streaming_split``, equal shares), so each worker trains on its own
  disjoint part and the corpus never has to fit in one worker's memory.
"""


def quiet_progress() -> None:
    """Ray Data's progress bars redraw through Ray's log forwarding: one line per refresh per worker."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
