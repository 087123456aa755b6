"""The model types with routed experts that transformers ships and moe-compress does not support,
each with the reason, so `compress info` can say it in one line and a test can tell when a
transformers release brings a new one (`tests/test_families.py`)."""

from __future__ import annotations

_TEXT_TOWER = "the text model of a multimodal checkpoint: transformers has no causal LM class that loads it alone"
_BIAS_RENAMED = "its router's correction bias is stored on disk under another module's name, which pruning does not slice yet"
_NOT_YET_VERIFIED = "not yet verified: its tiny test model does not build or run in the layer-wise engine yet"


def _multimodal(text: str) -> str:
    return (f"a multimodal model whose language model is {text}: moe-compress prunes text-only checkpoints, not yet the "
            "language model inside a multimodal one (model.language_model.* beside vision or audio towers)")


# Multimodal models whose language model routes to experts: {model type: its language model's type}.
_MULTIMODAL = {
    "aria": "aria_text", "deepseek_ocr2": "deepseek_ocr2_text", "dots3_note": "dots3_note_text", "ernie4_5_vl_moe": "ernie4_5_vl_moe_text",
    "gemma4": "gemma4_text", "glm4v_moe": "glm4v_moe_text", "glm5_next": "glm5_next_text", "hy_v4_vl": "hy_v4_vl_text",
    "inkling2": "inkling2_text", "inkling2_loop": "inkling2_loop_text", "inkling_mm_model": "inkling_text", "kimi_k25": "deepseek_v3",
    "llama4": "llama4_text", "minimax_m3_vl": "minimax_m3_vl_text", "mistral_large4": "mistral_large4_text",
    "muse_spark": "muse_spark_text", "nemo_speechlm": "nemotron_h", "nemotron_h_omni": "nemotron_h", "qwen3_5_moe": "qwen3_5_moe_text",
    "qwen3_omni_moe": "qwen3_omni_moe_text", "qwen3_omni_moe_thinker": "qwen3_omni_moe_text", "qwen3_vl_moe": "qwen3_vl_moe_text",
    "qwen4_exp": "qwen4_exp_text", "step3p7": "step3p5", "unlimited_ocr": "unlimited_ocr_text",
}

UNSUPPORTED: dict[str, str] = {
    # Not decoder-only causal language models.
    "switch_transformers": "an encoder-decoder (T5-style) model, not a decoder-only causal LM",
    "nllb-moe": "an encoder-decoder translation model, not a decoder-only causal LM",
    "vitpose_backbone": "a vision backbone, not a language model",
    "vitpose": "a pose-estimation vision model, not a language model",
    "dots3_note_vision_encoder": "a vision encoder, not a language model",
    "openai_privacy_filter": "a token classifier without a causal LM head",
    "diffusion_gemma_text": "a diffusion language model, not an autoregressive one",
    "diffusion_gemma": "a diffusion language model, not an autoregressive one",
    **{model_type: _TEXT_TOWER for model_type in (
        "deepseek_ocr2_text", "ernie4_5_vl_moe_text", "glm4v_moe_text", "glm5_next_text", "hy_v4_vl_text", "mistral4",
        "mistral_large4_text", "muse_spark_text", "qwen3_omni_moe_talker_text", "qwen3_omni_moe_text", "qwen3_vl_moe_text",
        "step3p5", "unlimited_ocr_text")},
    # Experts that are not separable MLPs weighted by their router.
    "llama4_text": "the router's score scales each expert's input, not its output",
    "jetmoe": "a mixture of attention heads: attention layers route tokens to experts too",
    "doge": "its experts are rows of a product-key memory, not separate MLPs",
    "deepseek_v4": "hash routing in some layers: a token's experts are fixed by its id",
    "longcat_flash": "zero-computation (identity) experts among the routed ones",
    "zaya": "one expert per token, chosen by an MLP router",
    "beam": "the routed scaling factor is applied after the experts are summed, not in the router's weights",
    # Routing or storage the family definitions cannot express yet.
    "dbrx": "experts stored flat ([experts × ffn, hidden]) outside the common experts interface, and a router that returns "
            "logits only (routing and p-norm renormalisation in the MoE block): not yet described",
    "phimoe": "sparsemixer routing (the second expert chosen after masking the first) has no routing function yet",
    "kolibri1": "routing by the top-k of biased logits with the sigmoid of the chosen ones has no routing function yet",
    "inkling_text": "its router returns more than weights and experts; renamed, FP8-scaled expert tensors on disk",
    "inkling2_text": "scaled scores with a correction bias not yet expressed; renamed, FP8-scaled expert tensors on disk",
    "inkling2_loop_text": "scaled scores with a correction bias not yet expressed; renamed, FP8-scaled expert tensors on disk",
    "minimax_m3_vl_text": "its routing weights match no routing function yet",
    "afmoe": "its router's weight sits one module below the router (router.gate) and takes its bias from the MoE block",
    "laguna": _BIAS_RENAMED,
    "sarvam_moe": _BIAS_RENAMED,
    "hunyuan_v1_moe": "its router's weight sits one module below the router (gate.wg), not yet expressed",
    "nemotron_h": "experts without a gate projection (up and down only) in hybrid Mamba layers, not yet described",
    "gemma4_text": "experts optional per config beside a dense MLP in the same layer, not yet described",
    # Layers the layer-wise engine does not run yet.
    "hy_v4": "hyper-connections: each decoder layer carries several residual streams, the layer-wise engine one",
    "glm_moe_dsa": "its layers pass the sparse-attention indexer's top-k to the next layer, which the layer-wise engine does not carry",
    "lara_mini": "attention projections stored split on disk and fused at load, which the layer-wise engine does not do yet",
    "granitemoe_swa": _NOT_YET_VERIFIED,
    "granitemoehybrid": _NOT_YET_VERIFIED,
    "jamba": _NOT_YET_VERIFIED,
    "bailing_hybrid": _NOT_YET_VERIFIED,
    "kimi_linear": _NOT_YET_VERIFIED,
    "lfm2_moe": _NOT_YET_VERIFIED,
    "qwen4_exp_text": _NOT_YET_VERIFIED,
    "axk1": _NOT_YET_VERIFIED,
    **{model_type: _multimodal(text) for model_type, text in _MULTIMODAL.items()},
}
