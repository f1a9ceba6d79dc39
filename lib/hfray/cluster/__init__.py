"""Ray clusters and the processes hfray starts on them.

- :mod:`~hfray.cluster.connect`: the driver attaches to a cluster (or starts a local one) and checks a job fits;
- :mod:`~hfray.cluster.local`: a multi-node cluster on one machine, for development and tests (``hfray cluster``);
- :mod:`~hfray.cluster.start_gate`: on a running cluster, workers start while the driver checks the job.
"""
