"""MXFP4, the expert-weight format of the published gpt-oss checkpoints, and a writer for it.

Layout (``transformers/integrations/mxfp4.py`` and ``openai/gpt-oss/gpt_oss/torch/weights.py``):
a weight in the "out" orientation ``[..., out, in]`` is cut along ``in`` into blocks of 32 values.
Each block is 16 bytes of ``_blocks`` (two FP4 E2M1 codes per byte, the low nibble is the even
element) and one byte of ``_scales`` (E8M0: the block's values are multiplied by 2**(scale-127)).
So ``_blocks`` is ``[..., out, in/32, 16]`` and ``_scales`` ``[..., out, in/32]``, both uint8, and
the expert dimension stays dim 0: slicing experts is byte-exact.

gpt-oss stores ``gate_up_proj`` as ``[E, 2I, H]`` and ``down_proj`` as ``[E, H, I]`` on disk
(rows interleave gate and up); the modules hold the transposes ``[E, H, 2I]`` and ``[E, I, H]``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import CheckpointError
from .dtypes import TORCH_DTYPES
from .files import copy_support_files, read_config, write_config
from .output import atomic_output_dir
from .reader import CheckpointReader
from .writer import DEFAULT_MAX_SHARD_BYTES, ShardedCheckpointWriter, TensorSpec

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK_VALUES = 32
# Rounding midpoints between consecutive FP4 magnitudes (0, .5, 1, 1.5, 2, 3, 4, 6).
_MIDPOINTS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
QUANTIZED_PARAMS = ("gate_up_proj", "down_proj")
# What the published gpt-oss configs leave unquantised.
MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


_BYTE_VALUES = torch.tensor([[FP4_VALUES[byte & 0x0F], FP4_VALUES[byte >> 4]] for byte in range(256)])  # [256, 2]
# The four values of every pair of bytes, indexed by the pair read as one uint16 (in this machine's
# byte order): a 1 MiB table, one lookup per two bytes.
_PAIR_BYTES = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.uint8).view(-1, 2).long()
_PAIR_VALUES = torch.cat([_BYTE_VALUES[_PAIR_BYTES[:, 0]], _BYTE_VALUES[_PAIR_BYTES[:, 1]]], dim=1)  # [65536, 4]


@functools.cache
def _pair_values(device: torch.device) -> torch.Tensor:
    return _PAIR_VALUES.to(device)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``_blocks [..., G, 16]`` and ``_scales [..., G]`` → values ``[..., G*32]`` (the "out" orientation).

    Exact in any dtype with at least bf16's exponent range (an FP4 value times a power of two has
    two significant bits). One table lookup per pair of bytes gives their four values; the E8M0 scale
    2**(s-127) is assembled directly as float32 exponent bits."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK_VALUES // 2:
        raise CheckpointError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match")
    pairs = blocks.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF  # [..., G, 8]
    values = torch.nn.functional.embedding(pairs, _pair_values(blocks.device)).view(*scales.shape, BLOCK_VALUES)
    scale = (scales.to(torch.int32) << 23).view(torch.float32)  # 2**(s-127); s = 0 gives 0 (a denormal 2**-127)
    values.mul_(scale[..., None])
    return values.flatten(-2).to(dtype)


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``[..., N]`` (N a multiple of 32) → (``_blocks [..., N/32, 16]``, ``_scales [..., N/32]``).

    Each block gets the smallest power-of-two scale that brings its largest magnitude within 6
    (the largest FP4 value); values round to the nearest FP4 code.
    """
    if weight.shape[-1] % BLOCK_VALUES:
        raise CheckpointError(f"MXFP4 needs the input dimension to be a multiple of 32, got {weight.shape[-1]}")
    values = weight.float().unflatten(-1, (-1, BLOCK_VALUES))  # [..., G, 32]
    amax = values.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / 6.0)), torch.zeros_like(amax)).clamp(-127, 127)
    scaled = values / torch.ldexp(torch.ones_like(amax), exponent.to(torch.int32))[..., None]
    magnitude_code = torch.bucketize(scaled.abs().clamp(max=6.0).contiguous(), _MIDPOINTS.to(scaled.device))  # any device
    codes = magnitude_code | ((scaled < 0) & (magnitude_code > 0)).to(torch.int64) << 3
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exponent + 127).to(torch.uint8)


def write_mxfp4_checkpoint(source: str | Path, target: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                           overwrite: bool = False) -> Path:
    """Write a copy of a gpt-oss checkpoint with its experts in the published MXFP4 layout.

    The source holds plain fused expert tensors (what ``save_pretrained`` writes for a dequantised
    or freshly built ``GptOssForCausalLM``); everything but ``gate_up_proj``/``down_proj`` is copied
    unchanged and ``quantization_config`` is added to config.json, as in openai/gpt-oss-20b.
    """
    reader = CheckpointReader(source)
    config = read_config(source)
    if config.get("model_type") != "gpt_oss":
        raise CheckpointError(f"MXFP4 writing is for gpt-oss checkpoints; {source} is {config.get('model_type')!r}")
    plan = []  # (output spec, how to compute it)
    for key in reader.keys():
        # gpt-oss's fused expert tensors are `model.layers.N.mlp.experts.NAME` (the family's key
        # rules are not needed: the families read MXFP4 through this module)
        module, _, name = key.rpartition(".")
        entry = reader.entries[key]
        if module.endswith(".mlp.experts") and name in QUANTIZED_PARAMS:
            experts, in_dim, out_dim = entry.shape
            groups = in_dim // BLOCK_VALUES
            plan.append((TensorSpec(key + "_blocks", torch.uint8, (experts, out_dim, groups, 16)), key, 0))
            plan.append((TensorSpec(key + "_scales", torch.uint8, (experts, out_dim, groups)), key, 1))
        elif module.endswith(".mlp.experts") and name.endswith(("_blocks", "_scales")):
            raise CheckpointError(f"{source} is already MXFP4 ({key})")
        else:
            plan.append((TensorSpec(key, TORCH_DTYPES[entry.dtype], entry.shape), key, None))
    config["quantization_config"] = {"modules_to_not_convert": MODULES_NOT_CONVERTED, "quant_method": "mxfp4"}
    with atomic_output_dir(target, overwrite=overwrite) as staging:
        with ShardedCheckpointWriter(staging, [spec for spec, _, _ in plan], max_shard_bytes) as writer:
            quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for spec, key, part in plan:
                if part is None:
                    writer.write(spec.name, reader.read(key))
                    continue
                if key not in quantized:
                    quantized = {key: quantize(reader.read(key).transpose(1, 2))}
                writer.write(spec.name, quantized[key][part])
        write_config(staging, config)
        copy_support_files(source, staging)
    return Path(target)
