"""The project's own transformers model classes, one self-contained file each (they are copied
into the checkpoints that need them and named in ``auto_map``): per-layer expert counts
(`modeling_moe_compress`) and tiered teams of experts (`modeling_tiered_moe`)."""
