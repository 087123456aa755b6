"""moe-compress: prune, merge and distill Mixture-of-Experts language models, and prove what quality survives."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-compress")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
