"""The fused kernels as a transformers experts implementation: ``compress_triton``.

``model.set_experts_implementation("compress_triton")`` (after ``import compress``) runs every
MoE layer of stock transformers models and of the project's own classes (pruned to any expert
count, tiered teams) through `fused_moe.fused_experts`. Layouts the kernels do not cover (other
activations, post-expert norms), CPU tensors without ``TRITON_INTERPRET=1`` and machines without
Triton fall back to the torch reference, which computes the same thing.
"""

from __future__ import annotations

import os

from .reference import combine_expert_outputs, routed_expert_outputs

IMPLEMENTATION = "compress_triton"


def kernel_layout(experts) -> int | None:
    """`fused_moe.STANDARD` / `GPT_OSS` when the kernels cover this experts module, else None."""
    if getattr(experts, "has_post_expert_norm", False) or not getattr(experts, "has_gate", False):
        return None
    if experts.is_transposed and not experts.is_concatenated and experts.has_bias and hasattr(experts, "limit"):
        return 1  # gpt-oss: interleaved, transposed, clamped SwiGLU
    if not experts.is_transposed and experts.is_concatenated and getattr(experts.config, "hidden_act", None) == "silu":
        return 0
    return None


def _triton_runs_here(device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def triton_experts_forward(experts, hidden_states, top_k_index, top_k_weights):
    layout = kernel_layout(experts)
    if layout is None or not _triton_runs_here(hidden_states.device):
        outputs = routed_expert_outputs(experts, hidden_states, top_k_index)
        return combine_expert_outputs(outputs, top_k_weights, hidden_states.dtype)
    from .fused_moe import fused_experts

    return fused_experts(
        hidden_states, top_k_index, top_k_weights, experts.gate_up_proj, experts.down_proj,
        getattr(experts, "gate_up_proj_bias", None) if experts.has_bias else None,
        getattr(experts, "down_proj_bias", None) if experts.has_bias else None,
        layout, alpha=getattr(experts, "alpha", 1.702), limit=getattr(experts, "limit", 7.0),
    )


def register() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, triton_experts_forward)
