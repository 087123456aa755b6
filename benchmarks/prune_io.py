"""Streaming prune of a gpt-oss-20b-shaped MXFP4 checkpoint: peak memory and time versus copying.

Builds a synthetic checkpoint with the real gpt-oss-20b tensor names, shapes and dtypes (MXFP4
``_blocks``/``_scales`` experts, bf16 everything else, random bytes) for `--layers` decoder
layers, sharded, then in separate processes, each measured with its own peak RSS:

* baseline: plain copying of exactly the bytes the pruned checkpoint keeps (positional reads of
  the kept ranges, written to one file);
* `compress prune --plan` keeping `--keep` of 32 experts per layer (the whole CLI: config,
  headers, meta-model parameter counts, streaming write, provenance).

Prints both, the RSS goal (1.5 × the largest tensor + 0.5 GB) and the time ratio (goal ≤ 2).

    python benchmarks/prune_io.py [--layers 4 --keep 16 --workdir /tmp/prune_io]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, INTERMEDIATE, EXPERTS, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2880, 2880, 32, 201088, 64, 8, 64
GROUPS = HIDDEN // 32  # MXFP4: 32 values per block, 16 bytes each


def gpt_oss_20b_specs(layers: int) -> list:
    import torch

    from compress.checkpoint.writer import TensorSpec

    bf16, u8 = torch.bfloat16, torch.uint8
    specs = [TensorSpec("model.embed_tokens.weight", bf16, (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
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
            TensorSpec(p + "mlp.router.weight", bf16, (EXPERTS, HIDDEN)),
            TensorSpec(p + "mlp.router.bias", bf16, (EXPERTS,)),
            TensorSpec(p + "mlp.experts.gate_up_proj_blocks", u8, (EXPERTS, 2 * INTERMEDIATE, GROUPS, 16)),
            TensorSpec(p + "mlp.experts.gate_up_proj_scales", u8, (EXPERTS, 2 * INTERMEDIATE, GROUPS)),
            TensorSpec(p + "mlp.experts.gate_up_proj_bias", bf16, (EXPERTS, 2 * INTERMEDIATE)),
            TensorSpec(p + "mlp.experts.down_proj_blocks", u8, (EXPERTS, HIDDEN, INTERMEDIATE // 32, 16)),
            TensorSpec(p + "mlp.experts.down_proj_scales", u8, (EXPERTS, HIDDEN, INTERMEDIATE // 32)),
            TensorSpec(p + "mlp.experts.down_proj_bias", bf16, (EXPERTS, HIDDEN)),
        ]
    specs += [TensorSpec("model.norm.weight", bf16, (HIDDEN,)), TensorSpec("lm_head.weight", bf16, (VOCAB, HIDDEN))]
    return specs


def gpt_oss_20b_config(layers: int) -> dict:
    """openai/gpt-oss-20b's config.json, cut to `layers` decoder layers."""
    return {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "pad_token_id": 199999, "experts_per_token": 4, "num_experts_per_tok": 4,
        "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
        "max_position_embeddings": 131072, "num_attention_heads": HEADS, "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS, "num_local_experts": EXPERTS, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                                 "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": VOCAB,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
    }


def build_checkpoint(directory: Path, layers: int) -> None:
    import torch

    from compress.checkpoint.files import write_config
    from compress.checkpoint.writer import ShardedCheckpointWriter

    specs = gpt_oss_20b_specs(layers)
    generator = torch.Generator().manual_seed(0)
    with ShardedCheckpointWriter(directory, specs, max_shard_bytes=2 * 2**30) as writer:
        for spec in specs:
            raw = torch.randint(0, 256, (spec.nbytes,), dtype=torch.uint8, generator=generator)
            if spec.dtype == torch.bfloat16:  # finite values: clear the top exponent bit of every bf16
                raw.view(torch.int16).bitwise_and_(0x3FFF)
            writer.write(spec.name, raw.view(spec.dtype).view(spec.shape))
    write_config(directory, gpt_oss_20b_config(layers))


def run_measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of a child process.

    A child's peak RSS includes what it inherited at fork, so this orchestrating process never
    imports torch or builds tensors itself: everything heavy runs in children."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} failed")
    return seconds, usage.ru_maxrss * 1024


COPY_SCRIPT = """
import json, os, sys
from compress.checkpoint.reader import CheckpointReader
from compress.families import get_family
from compress.pruning.apply import plan_tensors
from compress.pruning.plan import PrunePlan
source, plan_file, target = sys.argv[1:4]
reader = CheckpointReader(source)
tensors = plan_tensors(reader, get_family("gpt_oss"), PrunePlan.load(plan_file), 10**6)
with open(target, "wb") as out:
    for copy in tensors.copies:  # the same kept byte ranges, straight from file to file
        entry = reader.entries[copy.key]
        fd = os.open(os.path.join(source, entry.file), os.O_RDONLY)
        rows = copy.experts if copy.experts is not None else [None]
        row_bytes = entry.nbytes // entry.shape[0]
        for expert in rows:
            offset, length = (entry.offset, entry.nbytes) if expert is None else (entry.offset + expert * row_bytes, row_bytes)
            while length:
                chunk = os.pread(fd, min(length, 1 << 26), offset)
                out.write(chunk)
                offset += len(chunk)
                length -= len(chunk)
        os.close(fd)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--keep", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/prune_io")
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # internal: build the checkpoint in a child
    args = parser.parse_args()
    if args.build:
        build_checkpoint(Path(args.build), args.layers)
        sizes = [spec.nbytes for spec in gpt_oss_20b_specs(args.layers)]
        print(json.dumps({"largest": max(sizes), "total": sum(sizes)}))
        return
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    source = work / "gpt-oss-20b-synthetic"
    source.mkdir(parents=True)
    built = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--build", str(source)],
                           capture_output=True, text=True, check=True)
    sizes = json.loads(built.stdout.strip().splitlines()[-1])
    largest, source_bytes = sizes["largest"], sizes["total"]

    kept = {layer: list(range(0, EXPERTS, EXPERTS // args.keep))[: args.keep] for layer in range(args.layers)}
    plan = {"format": "moe-compress prune plan", "format_version": 1, "top_k": 4, "layers": {str(k): v for k, v in kept.items()},
            "source": {"model": "synthetic", "fingerprint": None, "family": "gpt_oss", "num_experts": EXPERTS, "top_k": 4},
            "provenance": {"criterion": "plan"}}
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(plan))
    # Make the plan's fingerprint match the synthetic model, as --plan-only would.
    fingerprint = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers import AutoConfig; "
         "from compress.model_info import meta_model, model_fingerprint;"
         "print(model_fingerprint(meta_model(AutoConfig.from_pretrained(sys.argv[1]))))", str(source)],
        capture_output=True, text=True, check=True).stdout.strip()
    plan["source"]["fingerprint"] = fingerprint
    plan_file.write_text(json.dumps(plan))

    subprocess.run(["cat", *map(str, source.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    copy_seconds, copy_rss = run_measured([sys.executable, "-c", COPY_SCRIPT, str(source), str(plan_file), str(work / "copy.bin")])
    kept_bytes = (work / "copy.bin").stat().st_size
    prune_seconds, prune_rss = run_measured([sys.executable, "-m", "compress", "prune", "--model", str(source), "--plan", str(plan_file),
                                             "--out", str(work / "pruned"), "--quiet"])
    goal = 1.5 * largest + 0.5e9
    print(f"synthetic gpt-oss-20b, {args.layers} layers, MXFP4 experts: {source_bytes / 1e9:.2f} GB in "
          f"{len(list(source.glob('*.safetensors')))} shards; keep {args.keep} of {EXPERTS} → {kept_bytes / 1e9:.2f} GB kept")
    print(f"largest tensor {largest / 1e9:.3f} GB; RSS goal 1.5 × largest + 0.5 GB = {goal / 1e9:.2f} GB")
    print(f"copy kept bytes   {copy_seconds:6.2f} s   peak RSS {copy_rss / 1e9:.2f} GB")
    print(f"compress prune    {prune_seconds:6.2f} s   peak RSS {prune_rss / 1e9:.2f} GB")
    print(f"time ratio prune/copy: {prune_seconds / copy_seconds:.2f} (goal ≤ 2); RSS {'within' if prune_rss <= goal else 'OVER'} goal")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
