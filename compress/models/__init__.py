"""The project's own transformers model classes, one self-contained file each (they are copied
into the checkpoints that need them and named in ``auto_map``): per-layer expert counts
(`modeling_moe_compress`) and tiered teams of experts (`modeling_tiered_moe`)."""

from functools import cache


@cache
def register_model_classes() -> None:
    """Register both model-class files' classes of every family (`families/definitions`; tiered
    where a team router can reproduce the family's routing) with the Auto classes, and the kernels'
    experts implementation (once)."""
    from ..families import all_families
    from ..kernels import experts
    from . import modeling_moe_compress, modeling_tiered_moe

    for family in all_families().values():
        for base in family.model_types:
            modeling_moe_compress.register({base: modeling_moe_compress.classes_for(base)})
            if family.routing["function"] in modeling_tiered_moe.TEAM_ROUTING:
                modeling_moe_compress.register({base: modeling_tiered_moe.classes_for(base)})
    experts.register()
