"""Block-scaled FP8 weights (DeepSeek-V3/R1, Kimi-K2, GLM-4.5, Qwen3 and MiniMax-M2 "-FP8" checkpoints).

Such a checkpoint stores a linear layer's ``weight`` as ``float8_e4m3fn`` and beside it
``weight_scale_inv``, one float32 multiplier per block of the weight (``weight_block_size`` in the
config's ``quantization_config``, 128×128 in every published one): value = stored · multiplier of
its block. Pruning copies both tensors byte for byte; anything that computes with the values (the
layer-wise engine, merging, compensation) dequantises through transformers' own conversion op,
and what merging or compensation changes is quantised again the way transformers saves FP8
(per-block absolute maximum mapped to the format's largest value).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..errors import CheckpointError

SCALE_SUFFIX = "_scale_inv"  # weight → weight_scale_inv
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8(config: dict) -> bool:
    return (config.get("quantization_config") or {}).get("quant_method") == "fp8"


def scale_key(key: str) -> str:
    return key + SCALE_SUFFIX


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`weight` (FP8, [..., rows, cols]) times its block multipliers `scale_inv` ([..., rows/bm, cols/bn]), in `dtype`."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    return Fp8Dequantize(None)._dequantize_one(weight, scale_inv, output_dtype=dtype)


def quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, float32 block multipliers) of `weight` [rows, cols] in blocks of `block`, as transformers saves FP8."""
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    settings = SimpleNamespace(quantization_config=SimpleNamespace(weight_block_size=tuple(block), scale_fmt=None))
    out = Fp8Quantize(settings)._quantize_one("weight", weight)
    return out["weight"], out["weight" + SCALE_SUFFIX]


def read_values(reader, key: str, experts: list[int] | None = None, dim: int = 0) -> torch.Tensor:
    """Tensor `key` of `reader` (rows `experts` along `dim` when given) as values: dequantised to
    float32 when the checkpoint holds block multipliers for it, else as stored."""
    def read(name: str) -> torch.Tensor:
        return reader.read(name) if experts is None else reader.read_experts(name, experts, dim)

    tensor = read(key)
    if scale_key(key) in reader:
        return dequantize(tensor, read(scale_key(key)))
    if tensor.dtype in FP8_DTYPES:
        raise CheckpointError(f"{key} is stored in {tensor.dtype} without {scale_key(key)}: moe-compress reads FP8 weights "
                              "with per-block multipliers (quant_method \"fp8\") only")
    return tensor
