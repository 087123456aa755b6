"""What the default criterion (``reconstruct``) costs on top of the profiling pass, at real shapes.

For one MoE layer of gpt-oss-20b (32 experts, top-4, MXFP4; keep 16) and of Qwen3-30B-A3B (128
experts, top-8, bf16; keep 64), both synthetic (`synthetic_gpt_oss.py`, and `qwen3_30b_a3b` here:
the published tensor names and shapes, random weights), the layer-wise engine runs twice on the
same windows: statistics only (what `compress profile` does), then statistics plus the search (what
`compress prune` does). Printed per layer: both times, the search's extra cost as a ratio of the
profiling pass, and the search phase itself (Gram matrices, then the greedy removal with
per-token updates) against its former form, every candidate's output recombined for every token
from the fp32 expert outputs, as the baseline, with whether both keep the same set.

    python benchmarks/reconstruct_cost.py [--samples 32 --seq-len 512] [--workdir /tmp/reconstruct_cost]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

QWEN3 = {"hidden": 2048, "moe_intermediate": 768, "experts": 128, "top_k": 8, "heads": 32, "kv_heads": 4, "head_dim": 128,
         "vocab": 151936}


def qwen3_30b_a3b(directory: Path, layers: int = 1) -> None:
    """A Qwen3-30B-A3B-shaped checkpoint (the Hub's per-expert keys), cut to `layers`."""
    from compress.checkpoint.files import write_config
    from compress.checkpoint.writer import ShardedCheckpointWriter, TensorSpec

    q, bf16 = QWEN3, torch.bfloat16
    planned = [TensorSpec("model.embed_tokens.weight", bf16, (q["vocab"], q["hidden"]))]
    for i in range(layers):
        p = f"model.layers.{i}."
        planned += [TensorSpec(p + name, bf16, shape) for name, shape in [
            ("input_layernorm.weight", (q["hidden"],)), ("post_attention_layernorm.weight", (q["hidden"],)),
            ("self_attn.q_proj.weight", (q["heads"] * q["head_dim"], q["hidden"])),
            ("self_attn.k_proj.weight", (q["kv_heads"] * q["head_dim"], q["hidden"])),
            ("self_attn.v_proj.weight", (q["kv_heads"] * q["head_dim"], q["hidden"])),
            ("self_attn.o_proj.weight", (q["hidden"], q["heads"] * q["head_dim"])),
            ("self_attn.q_norm.weight", (q["head_dim"],)), ("self_attn.k_norm.weight", (q["head_dim"],)),
            ("mlp.gate.weight", (q["experts"], q["hidden"]))]]
        for e in range(q["experts"]):
            planned += [TensorSpec(f"{p}mlp.experts.{e}.gate_proj.weight", bf16, (q["moe_intermediate"], q["hidden"])),
                        TensorSpec(f"{p}mlp.experts.{e}.up_proj.weight", bf16, (q["moe_intermediate"], q["hidden"])),
                        TensorSpec(f"{p}mlp.experts.{e}.down_proj.weight", bf16, (q["hidden"], q["moe_intermediate"]))]
    planned += [TensorSpec("model.norm.weight", bf16, (q["hidden"],)), TensorSpec("lm_head.weight", bf16, (q["vocab"], q["hidden"]))]
    generator = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    with ShardedCheckpointWriter(directory, planned, max_shard_bytes=4 * 2**30) as writer:
        for spec in planned:
            norm = spec.name.endswith("norm.weight")
            writer.write(spec.name, torch.ones(spec.shape, dtype=bf16) if norm else
                         (torch.randn(spec.shape, generator=generator) * 0.02).to(bf16))
    write_config(directory, {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": q["hidden"],
        "intermediate_size": 6144, "moe_intermediate_size": q["moe_intermediate"], "num_experts": q["experts"],
        "num_experts_per_tok": q["top_k"], "norm_topk_prob": True, "num_hidden_layers": layers,
        "num_attention_heads": q["heads"], "num_key_value_heads": q["kv_heads"], "head_dim": q["head_dim"],
        "vocab_size": q["vocab"], "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "bos_token_id": 151643, "eos_token_id": 151645})


def former_search(family, config, buffers: dict, logits: torch.Tensor, outputs: torch.Tensor, keep: int) -> list[int]:
    """The greedy search as it was: for each candidate set, every token routed and its output
    recombined from the k chosen experts' fp32 outputs (a sum over k·H values per token)."""
    def output(mask):
        weights, index = family.route(logits.masked_fill(~mask, float("-inf")), config,
                                      {name: t.float().masked_fill(~mask, float("-inf")) for name, t in buffers.items()})
        chosen = outputs.gather(1, index.unsqueeze(-1).expand(-1, -1, outputs.shape[-1]))
        return (chosen * weights.float().unsqueeze(-1)).sum(dim=1)

    mask = torch.ones(logits.shape[1], dtype=torch.bool)
    full, kept = output(mask), list(range(logits.shape[1]))
    while len(kept) > keep:
        errors = {}
        for e in kept:
            mask[e] = False
            errors[e] = float(((output(mask) - full) ** 2).sum())
            mask[e] = True
        removed = min(kept, key=errors.get)
        kept.remove(removed)
        mask[removed] = False
    return kept


def measure(directory: Path, keep: int, windows: torch.Tensor) -> dict:
    from compress.jobs.source import open_model
    from compress.layerwise import calibrate
    from compress.pruning import reconstruct
    from compress.pruning.reconstruct import ReconstructRequest

    source = open_model(str(directory))
    run = dict(batch_size=8, domain="random", data="random ids", progress=False)
    start = time.perf_counter()
    calibrate(source, windows, **run)
    profile_seconds = time.perf_counter() - start

    searches, layer_class, choose_kept = [], reconstruct.LayerReconstruction, reconstruct.choose_kept

    class Recorded(layer_class):  # keeps the search's inputs for the baseline
        def __init__(self, *args):
            begin = time.perf_counter()
            super().__init__(*args)
            searches.append({"inputs": args, "seconds": time.perf_counter() - begin})

    def timed(layer_search, layer, request):
        begin = time.perf_counter()
        answer = choose_kept(layer_search, layer, request)
        searches[-1].update(seconds=searches[-1]["seconds"] + time.perf_counter() - begin, answer=answer)
        return answer

    reconstruct.LayerReconstruction, reconstruct.choose_kept = Recorded, timed
    try:
        start = time.perf_counter()
        calibrate(source, windows, search=ReconstructRequest(keep, {}), **run)
        reconstruct_seconds = time.perf_counter() - start
    finally:
        reconstruct.LayerReconstruction, reconstruct.choose_kept = layer_class, choose_kept
    search = searches[0]
    begin = time.perf_counter()
    former = former_search(*search["inputs"], keep)
    former_seconds = time.perf_counter() - begin
    return {"profile": profile_seconds, "reconstruct": reconstruct_seconds, "search": search["seconds"], "former": former_seconds,
            "same_set": former == search["answer"], "search_tokens": search["inputs"][3].shape[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--workdir", default="/tmp/reconstruct_cost")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    here = Path(__file__).parent
    windows = torch.randint(0, 50000, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    shapes = [("gpt-oss-20b", 32, 16, lambda d: subprocess.run(
                  [sys.executable, str(here / "synthetic_gpt_oss.py"), str(d), "--layers", "1", "--experts", "32"], check=True,
                  capture_output=True)),
              ("Qwen3-30B-A3B", QWEN3["experts"], 64, qwen3_30b_a3b)]
    print(f"one MoE layer, {windows.numel()} calibration tokens ({args.samples} x {args.seq_len}), fp32 on CPU, "
          f"{torch.get_num_threads()} threads")
    for name, experts, keep, build in shapes:
        directory = work / name
        build(directory)
        r = measure(directory, keep, windows)
        extra = r["reconstruct"] - r["profile"]
        print(f"  {name} ({experts} experts, keep {keep}): profiling {r['profile']:.1f} s, with the search {r['reconstruct']:.1f} s: "
              f"extra {extra:.1f} s = {extra / r['profile']:.2f}x the profiling pass ({r['search_tokens']} search tokens); "
              f"search phase {r['search']:.2f} s vs {r['former']:.2f} s recombining every token "
              f"({r['former'] / r['search']:.1f}x faster; same kept set: {r['same_set']})")
        shutil.rmtree(directory)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
