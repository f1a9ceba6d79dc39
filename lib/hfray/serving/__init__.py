"""Serving hfray artifacts over HTTP on Ray Serve: batched, multiplexed, autoscaled.

- :mod:`~hfray.serving.driver`: ``build_app`` (the import path of ``serve/*.yaml`` is ``hfray.serving:build_app``)
  and :func:`~hfray.serving.driver.serve_artifacts`;
- :mod:`~hfray.serving.config`, :mod:`~hfray.serving.catalog`: the settings, and the model ids a root serves;
- :mod:`~hfray.serving.replica`: everything that runs in Serve replicas (the FastAPI ingress, model hosts).

Import-light: ``hfray --help`` and ``serve run`` import this package before anything else.
"""

from hfray.serving.driver import build_app, serve_artifacts

__all__ = ["build_app", "serve_artifacts"]
