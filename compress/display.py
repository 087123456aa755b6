"""Text the commands print: sizes and counts for people, and the `compress info` description."""

from __future__ import annotations


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] → "0-2, 5"."""
    ranges, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            ranges.append(f"{start}-{layer}" if layer != start else str(layer))
            start = None
    return ", ".join(ranges)


def render_info(info) -> str:
    """The `compress info` description of a `model_info.ModelInfo`."""
    counts = sorted(set(info.experts_per_layer.values()))
    experts = f"{counts[0]} per MoE layer" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} per MoE layer (non-uniform)"
    p = info.parameters
    dtypes = ", ".join(f"{dtype} x{count}" for dtype, count in info.tensor_dtypes.items())
    shared = (f"{info.shared_experts_per_layer} per MoE layer ({human_count(p.shared_experts)} parameters)"
              if info.shared_experts_per_layer else "none")
    lines = [
        f"{info.name}  ({info.family}, {', '.join(info.architectures) or info.model_type})",
        f"  path        {info.path}",
        f"  layers      {info.num_layers}; MoE layers: {layer_ranges(info.moe_layers)} ({len(info.moe_layers)})",
        f"  experts     {experts}, top-{info.top_k} per token",
        f"  shared      {shared}",
        f"  parameters  {human_count(p.total)} total, {human_count(p.active)} active "
        f"({human_count(p.active_excluding_embeddings)} without input embeddings), {human_count(p.routed_experts)} in routed experts",
        f"  on disk     {human_bytes(info.checkpoint_bytes)} in {info.shards} shard{'s' if info.shards > 1 else ''}; "
        f"expert keys: {info.key_layout}; MXFP4: {'yes' if info.mxfp4 else 'no'}; tensors: {dtypes}",
    ]
    return "\n".join(lines)
