"""The project's own transformers model classes, one self-contained file each (they are copied
into the checkpoints that need them and named in ``auto_map``): per-layer expert counts
(`modeling_moe_compress`) and tiered teams of experts (`modeling_tiered_moe`)."""

from functools import cache


@cache
def register_model_classes(model_type: str | None = None) -> None:
    """Register both model-class files' classes (tiered where a team router can reproduce the
    family's routing) with the Auto classes: of every family (`families/definitions`), or of the
    family `model_type` belongs to only (what one command loads: deriving a family's classes
    imports its transformers modeling module, about 0.1 s each); and the kernels' experts
    implementation."""
    from ..families import all_families
    from ..families.derived import split_model_type
    from ..kernels import experts
    from . import modeling_moe_compress, modeling_tiered_moe

    wanted = split_model_type(model_type)[0]
    for family in all_families().values():
        for base in family.model_types:
            if wanted is not None and base != wanted:
                continue
            modeling_moe_compress.register({base: modeling_moe_compress.classes_for(base)})
            if family.routing["function"] in modeling_tiered_moe.TEAM_ROUTING:
                modeling_moe_compress.register({base: modeling_tiered_moe.classes_for(base)})
    experts.register()
