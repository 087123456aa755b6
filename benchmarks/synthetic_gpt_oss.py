"""Synthetic gpt-oss checkpoints with the published tensor names, shapes, dtypes and MXFP4 layout.

gpt-oss-20b (32 experts, 24 layers) and gpt-oss-120b (128 experts, 36 layers) share every shape
but the expert count and depth. Weights are random but finite and of realistic magnitude (bf16
values of a few hundredths; MXFP4 scales around 2⁻⁷), so calibration computes real numbers at
real cost; the demo model's tokenizer stands in for o200k (its ids are a subset of the vocabulary).
Used by `prune_io.py` and `calibration_scale.py`; build in a child process so the measured
processes start clean.

    python benchmarks/synthetic_gpt_oss.py DIR --layers 24 --experts 32
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

HIDDEN, INTERMEDIATE, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2880, 2880, 201088, 64, 8, 64
GROUPS = HIDDEN // 32  # MXFP4: 32 values per block, 16 bytes each


def specs(layers: int, experts: int) -> list:
    import torch

    from compress.checkpoint.writer import TensorSpec

    bf16, u8 = torch.bfloat16, torch.uint8
    out = [TensorSpec("model.embed_tokens.weight", bf16, (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            TensorSpec(p + "input_layernorm.weight", bf16, (HIDDEN,)),
            TensorSpec(p + "post_attention_layernorm.weight", bf16, (HIDDEN,)),
            TensorSpec(p + "self_attn.q_proj.weight", bf16, (HEADS * HEAD_DIM, HIDDEN)),
            TensorSpec(p + "self_attn.q_proj.bias", bf16, (HEADS * HEAD_DIM,)),
            TensorSpec(p + "self_attn.k_proj.weight", bf16, (KV_HEADS * HEAD_DIM, HIDDEN)),
            TensorSpec(p + "self_attn.k_proj.bias", bf16, (KV_HEADS * HEAD_DIM,)),
            TensorSpec(p + "self_attn.v_proj.weight", bf16, (KV_HEADS * HEAD_DIM, HIDDEN)),
            TensorSpec(p + "self_attn.v_proj.bias", bf16, (KV_HEADS * HEAD_DIM,)),
            TensorSpec(p + "self_attn.o_proj.weight", bf16, (HIDDEN, HEADS * HEAD_DIM)),
            TensorSpec(p + "self_attn.o_proj.bias", bf16, (HIDDEN,)),
            TensorSpec(p + "self_attn.sinks", bf16, (HEADS,)),
            TensorSpec(p + "mlp.router.weight", bf16, (experts, HIDDEN)),
            TensorSpec(p + "mlp.router.bias", bf16, (experts,)),
            TensorSpec(p + "mlp.experts.gate_up_proj_blocks", u8, (experts, 2 * INTERMEDIATE, GROUPS, 16)),
            TensorSpec(p + "mlp.experts.gate_up_proj_scales", u8, (experts, 2 * INTERMEDIATE, GROUPS)),
            TensorSpec(p + "mlp.experts.gate_up_proj_bias", bf16, (experts, 2 * INTERMEDIATE)),
            TensorSpec(p + "mlp.experts.down_proj_blocks", u8, (experts, HIDDEN, INTERMEDIATE // 32, 16)),
            TensorSpec(p + "mlp.experts.down_proj_scales", u8, (experts, HIDDEN, INTERMEDIATE // 32)),
            TensorSpec(p + "mlp.experts.down_proj_bias", bf16, (experts, HIDDEN)),
        ]
    out += [TensorSpec("model.norm.weight", bf16, (HIDDEN,)), TensorSpec("lm_head.weight", bf16, (VOCAB, HIDDEN))]
    return out


def config(layers: int, experts: int) -> dict:
    """The published gpt-oss config.json (20b with 32 experts, 120b with 128), cut to `layers`."""
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "pad_token_id": 199999, "experts_per_token": 4, "num_experts_per_tok": 4,
        "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
        "max_position_embeddings": 131072, "num_attention_heads": HEADS, "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS, "num_local_experts": experts, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                                 "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": VOCAB,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    }


def build(directory: Path, layers: int, experts: int, max_shard_bytes: int = 4 * 2**30) -> dict:
    """Write the checkpoint (and the demo tokenizer) into `directory`; {"largest": bytes, "total": bytes}."""
    import torch

    from compress.checkpoint.files import write_config
    from compress.checkpoint.writer import ShardedCheckpointWriter
    from compress.resolve import demo_model_path

    planned = specs(layers, experts)
    generator = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    with ShardedCheckpointWriter(directory, planned, max_shard_bytes=max_shard_bytes) as writer:
        for spec in planned:
            if spec.dtype == torch.bfloat16:
                tensor = (torch.randn(spec.shape, generator=generator) * 0.02).to(torch.bfloat16)
                if spec.name.endswith("layernorm.weight") or spec.name.endswith("norm.weight"):
                    tensor = torch.ones(spec.shape, dtype=torch.bfloat16)
            elif spec.name.endswith("_scales"):  # MXFP4 exponents around 2^-7 (bias 127)
                tensor = torch.randint(117, 123, spec.shape, dtype=torch.uint8, generator=generator)
            else:
                tensor = torch.randint(0, 256, spec.shape, dtype=torch.uint8, generator=generator)
            writer.write(spec.name, tensor)
            del tensor
    write_config(directory, config(layers, experts))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(demo_model_path() / name, directory / name)
    sizes = [spec.nbytes for spec in planned]
    return {"largest": max(sizes), "total": sum(sizes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--experts", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(build(args.directory, args.layers, args.experts)))


if __name__ == "__main__":
    main()
