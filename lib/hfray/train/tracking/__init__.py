"""Dashboards of runs: TensorBoard and MLflow (logged from the Train controller), learning curves (driver).

One MLflow run per hfray run: a resumed or resubmitted job continues the MLflow run tagged with its run name.
The controller side is :mod:`hfray.train.controller`; the CLI draws progress on the driver from the reports.
"""
