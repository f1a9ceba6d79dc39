"""What a run leaves behind, and how it is loaded again.

- :mod:`~hfray.artifacts.checkpoints`: which rank uploads which file of a checkpoint (Ray Train workers);
- :mod:`~hfray.artifacts.manifest`: ``hfray_manifest.json``, one schema with a version for every task;
- :mod:`~hfray.artifacts.export`: the slim artifact (model or adapter + tokenizer + manifest);
- :mod:`~hfray.artifacts.adapters`: PEFT adapter artifacts (``base/``, ``merged/``) and loading any artifact's model;
- :mod:`~hfray.artifacts.loading`, :mod:`~hfray.artifacts.pipelines`, :mod:`~hfray.artifacts.predict`: an artifact
  as a ``transformers.pipeline`` (``hfray predict``, Serve replicas);
- :mod:`~hfray.artifacts.metrics_log`, :mod:`~hfray.artifacts.runs`: a run's metrics log, and the runs under a
  storage root (``hfray runs``).
"""
