"""moe-compress: prune, merge and distill Mixture-of-Experts language models, and prove what quality survives."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-compress")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"


def _register_model_classes() -> None:
    # Non-uniform pruned and tiered checkpoints use the project's own model classes; registering
    # them lets plain `AutoModelForCausalLM.from_pretrained` load such checkpoints once compress is imported.
    from .kernels import experts
    from .models import modeling_moe_compress, modeling_tiered_moe

    modeling_moe_compress.register(modeling_moe_compress.CLASSES)
    modeling_moe_compress.register(modeling_tiered_moe.CLASSES)
    experts.register()  # the "compress_triton" experts implementation


_register_model_classes()
