"""The names transformers gives a model's tensors on disk, from its own conversion mapping.

Some model types rename tensors between the checkpoint and the module (MiMo-V2-Flash stores
``self_attn.attention_sink_bias`` for the module's ``self_attn.sinks``); transformers renames them
at load and back at save (`WeightRenaming.reverse_transform`). Reading a module's tensor from a
checkpoint tries its module name first, then the name transformers' save would give it.
"""

from __future__ import annotations

from functools import cache


@cache
def _save_renamings(model_type: str) -> tuple:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    mapping = get_checkpoint_conversion_mapping(model_type) or []
    # Plain renamings only: fused-expert converters are the family's layouts, prefix changes wrap whole models.
    return tuple(rule.reverse_transform() for rule in mapping if type(rule) is WeightRenaming)


def saved_name(model_type: str, module_key: str) -> str:
    """The key transformers' save_pretrained writes for the tensor a model of `model_type` names `module_key`."""
    for renaming in _save_renamings(model_type):
        module_key, _ = renaming.rename_source_key(module_key)
    return module_key
