"""Shared fixtures: tiny random MoE checkpoints of every supported family, built offline from the
real transformers config classes and saved with `save_pretrained`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Kernel tests run in Triton's interpreter on CPU tensors; Triton reads this when it is first
# imported (its own jit helpers), so it is set before anything can import it. GPU tests run in a
# fresh process without it.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["MOE_COMPRESS_CACHE"] = tempfile.mkdtemp(prefix="moe-compress-cache-")  # never the user's cache

import pytest
import torch
import transformers

import compress

atexit.register(shutil.rmtree, os.environ["MOE_COMPRESS_CACHE"], ignore_errors=True)
transformers.logging.set_verbosity_error()
compress.register()  # tests load derived checkpoints with plain AutoModelForCausalLM

COMMON = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)
GPT_OSS_ROPE = {"rope_type": "yarn", "factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 64, "rope_theta": 150000.0}


def tiny_config(family: str, **overrides):
    """The smallest working config of each family (see shared reference §3), 6 experts, top-2."""
    c = {**COMMON, **overrides}
    if family == "gpt_oss":
        return transformers.GptOssConfig(**{"intermediate_size": 16, "num_local_experts": 6, "num_experts_per_tok": 2,
                                            "head_dim": 16, "sliding_window": 4, "rope_parameters": GPT_OSS_ROPE, **c})
    if family == "mixtral":
        return transformers.MixtralConfig(**{"intermediate_size": 16, "num_local_experts": 6, "num_experts_per_tok": 2, **c})
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**{"intermediate_size": 32, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
                                              "num_experts": 6, "num_experts_per_tok": 2, "norm_topk_prob": False, **c})
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**{"intermediate_size": 32, "moe_intermediate_size": 16, "num_experts": 6,
                                              "num_experts_per_tok": 2, "head_dim": 16, "norm_topk_prob": True, **c})
    if family == "olmoe":
        return transformers.OlmoeConfig(**{"intermediate_size": 16, "num_experts": 6, "num_experts_per_tok": 2, **c})
    if family == "deepseek_v3":
        # 3 layers with the first dense; 2 groups of 3 experts, best group only: group routing matters.
        return transformers.DeepseekV3Config(**{
            "num_hidden_layers": 3, "intermediate_size": 32, "moe_intermediate_size": 16, "n_routed_experts": 6,
            "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1, "n_shared_experts": 1,
            "kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
            "num_key_value_heads": 2, **{k: v for k, v in c.items() if k != "num_hidden_layers"}})
    return _generic_tiny_config(family, **overrides)


# Config fields the generic tiny config sets wherever the family's config class has them.
_TINY_FIELDS = dict(
    intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=24, head_dim=16,
    n_shared_experts=1, num_shared_experts=1, moe_num_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1,
    routed_scaling_factor=1.5, norm_topk_prob=True, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
    block_size=8, sliding_window=4,
)
_TINY_OVERRIDES = {
    "mimo_v2_flash": {"num_key_value_heads": 1},  # its attention fails a shape check with two at this size
    "deepseek_v2": {"topk_method": "group_limited_greedy"},  # its group-limited routing, not the default greedy one
    "flint": {"mlp_only_layers": [0]},  # its first layer dense, as the defaults' first two
    "granitemoeshared": {"shared_intermediate_size": 24},  # its shared MLP (none by default)
}
_TINY_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _generic_tiny_config(model_type: str, **overrides):
    """Three layers of the model type's own config class: 6 experts, top-2, and its defaults shrunk
    (two routing groups where it has groups, the first layer dense where it has dense layers, every
    kind of layer of its `layer_types` in turn: linear and full attention, sliding windows)."""
    defaults = transformers.AutoConfig.for_model(model_type).to_dict()
    fields = {**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 2}  # multi-head latent attention needs as many as heads
    fields.update({name: 6 for name in _TINY_EXPERT_COUNTS if name in defaults})
    fields.update({name: 2 for name in ("num_experts_per_tok", "moe_topk", "moe_k") if name in defaults})
    fields.update({name: value for name, value in _TINY_FIELDS.items() if name in defaults or name == "intermediate_size"})
    layers = fields["num_hidden_layers"]
    if isinstance(defaults.get("layer_types"), list):
        kinds = list(dict.fromkeys(defaults["layer_types"]))
        fields["layer_types"] = [kinds[i % len(kinds)] for i in range(layers)]
    if isinstance(defaults.get("mlp_layer_types"), list):  # a dense first layer where the family has dense layers
        fields["mlp_layer_types"] = (["dense"] if "dense" in defaults["mlp_layer_types"] else ["sparse"]) + ["sparse"] * (layers - 1)
    return transformers.AutoConfig.for_model(model_type, **{**fields, **_TINY_OVERRIDES.get(model_type, {}), **overrides})


# Model types, one or more per family definition (`compress/families/definitions/`).
FAMILIES = ("gpt_oss", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3",
            "minimax", "glm4_moe", "glm4_moe_lite", "deepseek_v32", "dots1", "dots3_note_text", "solar_open",
            "mimo_v2_flash", "sarvam_mla", "axk2", "deepseek_v2", "cohere2_moe", "flint", "aria_text",
            "granitemoe", "granitemoeshared", "exaone_moe", "minimax_m2", "hy_v3", "ernie4_5_moe",
            "qwen3_next", "qwen3_5_moe_text", "mellum", "flex_olmo")
# What the tiny configs above are, stated independently of the code under test: the decoder
# layers with routed experts, the shared experts per MoE layer, and the model types whose tiny
# config routes over two groups of three experts (the best group only).
_FIRST_DENSE = ("deepseek_v3", "glm4_moe", "glm4_moe_lite", "deepseek_v32", "dots1", "dots3_note_text",
                "mimo_v2_flash", "sarvam_mla", "axk2", "deepseek_v2", "flint", "exaone_moe", "hy_v3", "ernie4_5_moe")
_TWO_LAYERS = ("gpt_oss", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
MOE_LAYERS = {family: [1, 2] if family in _FIRST_DENSE else [0, 1] if family in _TWO_LAYERS else [0, 1, 2] for family in FAMILIES}
SHARED_EXPERTS = {family: 0 for family in FAMILIES} | {
    family: 1 for family in ("qwen2_moe", "deepseek_v3", "glm4_moe", "glm4_moe_lite", "deepseek_v32", "dots1",
                             "dots3_note_text", "solar_open", "sarvam_mla", "axk2", "qwen3_next", "qwen3_5_moe_text",
                             "deepseek_v2", "cohere2_moe", "flint", "aria_text", "exaone_moe", "hy_v3",
                             "granitemoeshared", "ernie4_5_moe")}
GROUP_LIMITED = ("deepseek_v3", "glm4_moe", "glm4_moe_lite", "deepseek_v32", "dots1", "dots3_note_text", "solar_open",
                 "mimo_v2_flash", "sarvam_mla", "axk2", "deepseek_v2", "exaone_moe")
# The key layout save_pretrained writes: fused expert tensors (Aria's under its own names), else one key per expert.
SAVED_LAYOUT = {family: "per_expert" for family in FAMILIES} | {"gpt_oss": "fused", "aria_text": "fused_fc", "granitemoe": "fused_granite",
                                                                   "granitemoeshared": "fused_granite"}
# Tiered conversion refuses group-limited routing and routers a team router cannot reproduce.
NO_TIERED = (*GROUP_LIMITED, "cohere2_moe", "flint", "granitemoe", "granitemoeshared", "minimax_m2", "hy_v3", "ernie4_5_moe")


def saved_state_dict(model) -> dict:
    """The model's tensors as one safetensors file of module names holds them: a tied output layer
    is left out (the embedding is stored), as save_pretrained does."""
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    output = next(name for name, module in model.named_modules() if module is model.get_output_embeddings()) if tied else None
    return {key: value.contiguous() for key, value in model.state_dict().items() if key != f"{output}.weight"}


def build_tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()
    with torch.no_grad():  # random router biases, so routing does not depend on weights alone
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.uniform_(-0.1, 0.1)
    return model


# Model types published as block-scaled FP8 checkpoints (DeepSeek-V3/R1 and Kimi-K2, GLM-4.5-FP8,
# Qwen3-30B-A3B-FP8, MiniMax-M2): the FP8 layout of the test matrix.
FP8_FAMILIES = ("deepseek_v3", "glm4_moe", "qwen3_moe", "minimax_m2")
FP8_BLOCK = 8  # 128 in published checkpoints; every linear side of the tiny configs divides by 8
FP8_MAX = 448.0  # the largest float8_e4m3fn value


def write_fp8_checkpoint(source, target):
    """The save_pretrained checkpoint `source` as DeepSeek-V3's FP8 checkpoints store theirs: each
    linear weight (not the embeddings, norms, routers or output layer) in float8_e4m3fn with one
    float32 multiplier per FP8_BLOCK² block beside it (``weight_scale_inv`` = block max / 448), and
    ``quantization_config`` in config.json. Written here from the format's definition, independently
    of the project's and transformers' own quantisers."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    source, target = Path(source), Path(target)
    target.mkdir(parents=True)
    tensors = {}
    for path in sorted(source.iterdir()):
        if path.suffix == ".safetensors":
            tensors.update(load_file(path))
        elif path.name != "model.safetensors.index.json":
            shutil.copy(path, target / path.name)
    out = {}
    for key, value in tensors.items():
        rows, cols = value.shape if value.dim() == 2 else (0, 0)
        linear = (key.endswith(".weight") and rows and rows % FP8_BLOCK == 0 and cols % FP8_BLOCK == 0
                  and not any(word in key for word in ("embed", "norm", "lm_head")) and not key.endswith(".gate.weight"))
        if not linear:
            out[key] = value
            continue
        blocks = value.float().reshape(rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
        multiplier = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
        out[key] = (blocks / multiplier[:, None, :, None]).reshape(rows, cols).to(torch.float8_e4m3fn)
        out[key + "_scale_inv"] = multiplier
    save_file(out, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def load_fp8_reference(directory):
    """An FP8 checkpoint as transformers loads it without a GPU: dequantised, in float32."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, quantization_config=transformers.FineGrainedFP8Config(dequantize=True)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """{family: (model, directory)}: saved with save_pretrained in small shards (multi-file + index)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for family in FAMILIES:
        model = build_tiny_model(family)
        directory = root / family
        model.save_pretrained(directory, max_shard_size="40KB")
        out[family] = (model, directory)
    return out


def cli_error(capsys, *argv) -> str:
    """Run `compress ARGV` in-process; it must fail with exit 2 and one `error: ...` line, returned."""
    from compress.cli import main

    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def glob_loaded_weight_files(directory) -> list[str]:
    """The files a loader that globs ``*.safetensors`` takes as weights (vLLM and SGLang without an
    index, mlx-lm and llama.cpp's converter by name), checked to be exactly the checkpoint's shards:
    the files its index names (or the one ``model.safetensors``), none holding anything but weights."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    directory = Path(directory)
    globbed = sorted(path.name for path in directory.glob("*.safetensors"))
    index = directory / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    assert globbed == shards, f"{directory}: a *.safetensors glob takes {globbed}, the checkpoint's weights are {shards}"
    for name in globbed:
        with safe_open(directory / name, "pt") as handle:
            assert "routing_stats" not in (handle.metadata() or {}), f"{name} holds routing statistics, not weights"
    return globbed
