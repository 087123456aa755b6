"""The project's own transformers model classes, one self-contained file each (they are copied
into the checkpoints that need them and named in ``auto_map``): per-layer expert counts
(`modeling_moe_compress`) and tiered teams of experts (`modeling_tiered_moe`)."""

from functools import cache


@cache
def register_model_classes() -> None:
    """Register both model-class files with the Auto classes and the kernels' experts implementation (once)."""
    from ..kernels import experts
    from . import modeling_moe_compress, modeling_tiered_moe

    modeling_moe_compress.register(modeling_moe_compress.CLASSES)
    modeling_moe_compress.register(modeling_tiered_moe.CLASSES)
    experts.register()
