"""moe-compress: prune, merge and distill Mixture-of-Experts language models, and prove what quality survives.

Importing the package is cheap (no torch, no transformers): the command line's ``--help`` and its
errors stay instant. The project's model classes join transformers' Auto classes on the first
model load, or when `register` is called.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-compress")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"


def register() -> None:
    """Let plain ``AutoModelForCausalLM.from_pretrained`` load moe-compress checkpoints (per-layer
    expert counts, tiered teams) without remote code, and make the ``compress_triton`` experts
    implementation available to ``model.set_experts_implementation``. Safe to call repeatedly."""
    from .models import register_model_classes

    register_model_classes()
