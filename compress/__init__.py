"""moe-compress: prune, merge and distill Mixture-of-Experts language models, and prove what quality survives.

The Python API (`compress.api`): ``compress.open_model``, ``compress.profile``, ``compress.prune``, ``compress.merge``,
``compress.convert_tiered``, ``compress.evaluate`` and ``compress.report`` run the same jobs as the command line.

Importing the package is cheap (no torch, no transformers): the command line's ``--help`` and its
errors stay instant, and the API's names load on first use. The project's model classes join
transformers' Auto classes on the first model load, or when `register` is called.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-compress")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_API = ("open_model", "profile", "prune", "merge", "convert_tiered", "evaluate", "report")
__all__ = ["__version__", "register", *_API]


def register() -> None:
    """Let plain ``AutoModelForCausalLM.from_pretrained`` load moe-compress checkpoints (per-layer
    expert counts, tiered teams) without remote code, and make the ``compress_triton`` experts
    implementation available to ``model.set_experts_implementation``. Safe to call repeatedly."""
    from .models import register_model_classes

    register_model_classes()


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
