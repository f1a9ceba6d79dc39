"""hfray: distributed training, sweeps and serving of Hugging Face models on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hfray")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
