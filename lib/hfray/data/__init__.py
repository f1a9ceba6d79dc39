"""Reading and preparing data, on the driver (checks before Ray starts) and on every worker (the same again).

Import-light on purpose: Ray Data's tasks import :mod:`hfray.data.stream` and :mod:`hfray.data.lm` in fresh
processes, and must not pay for ``datasets`` or transformers through this package.
"""
