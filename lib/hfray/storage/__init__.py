"""Where runs live and how hfray reads and writes there: a local directory shared by the nodes, or an object store.

- :mod:`~hfray.storage.fs`: files and folders by path or URI (``s3://bucket/prefix``), through pyarrow, the
  filesystem layer Ray Train itself uses;
- :mod:`~hfray.storage.layout`: the names of what a run and a sweep leave under ``storage.path``;
- :mod:`~hfray.storage.endpoint`: S3-compatible endpoints, and the settings every Ray process of a job shares.

Usable in every process (driver, Train controller, workers, Serve replicas); imports no other hfray layer.
"""
