"""Build the outputs the serving engines are checked on, and transformers' reference for each.

For every family a tiny source (random weights with engine-friendly shapes: hidden size 64, head
size 32) carrying the demo model's tokenizer, then through the command line as users run it: a
uniform prune, a non-uniform (global budget) prune, a merge, a compensated prune; for gpt-oss also
the source in the MXFP4 layout and its uniform and non-uniform prunes; and the trained demo model
with a global-budget prune of it. The reference is
transformers in fp32 (MXFP4 experts dequantised): per prompt, the log-probability of each next
token and the greedy continuation. Writes OUT/manifest.json (the engines' input, see engine_vllm.py).

    python benchmarks/interop/build.py OUT [--families gpt_oss,mixtral,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers

import compress
from compress.checkpoint.mxfp4 import write_mxfp4_checkpoint
from compress.resolve import demo_model_path

# Engine-friendly shapes: vLLM's CPU kernels need a hidden size divisible by 32 and a head size it
# lists (32, 64, ...); MXFP4 blocks hold 32 values, so expert matrices are multiples of 32.
COMMON = dict(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              head_dim=32, max_position_embeddings=256, initializer_range=0.1, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)


def tiny_config(family: str):
    if family == "gpt_oss":
        return transformers.GptOssConfig(**COMMON, intermediate_size=64, num_local_experts=8, num_experts_per_tok=2,
                                         sliding_window=16, rope_parameters={
                                             "rope_type": "yarn", "factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                             "truncate": False, "original_max_position_embeddings": 256,
                                             "rope_theta": 150000.0})
    if family == "mixtral":
        return transformers.MixtralConfig(**COMMON, intermediate_size=64, num_local_experts=8, num_experts_per_tok=2)
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(**COMMON, intermediate_size=64, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
                                           norm_topk_prob=False)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**COMMON, intermediate_size=64, moe_intermediate_size=32, num_experts=8,
                                           num_experts_per_tok=2, norm_topk_prob=True)
    if family == "olmoe":
        return transformers.OlmoeConfig(**COMMON, intermediate_size=32, num_experts=8, num_experts_per_tok=2)
    if family == "deepseek_v3":  # the first layer dense; 2 routing groups of 4 experts, the best group only;
        # vLLM's CPU MLA takes only DeepSeek-V3's own latent width: kv_lora_rank + qk_rope_head_dim = 576
        common = {**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 2}
        common.pop("head_dim")
        return transformers.DeepseekV3Config(**common, intermediate_size=64, moe_intermediate_size=32,
                                             n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                                             first_k_dense_replace=1, n_shared_experts=1, kv_lora_rank=512,
                                             q_lora_rank=32, qk_rope_head_dim=64, qk_nope_head_dim=32, v_head_dim=32,
                                             topk_method="noaux_tc", scoring_func="sigmoid")  # as published configs
    raise ValueError(family)


FAMILIES = ("gpt_oss", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")
PROMPTS = [[1, 412, 77, 1033, 5, 260, 919, 48, 1500, 33, 702, 11], [1, 9, 1999, 640, 2, 381, 17, 1240]]
GREEDY_TOKENS = 8
CALIBRATION = ["--domain", "math", "--samples", "8", "--seq-len", "64", "--quiet"]


def build_source(family: str, directory: Path) -> None:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    with torch.no_grad():  # routing that depends on more than the weights' first draw
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.uniform_(-0.1, 0.1)
    model.save_pretrained(directory)
    # Published checkpoints' config.json files (written before transformers 5) name rope_theta at
    # the top level and Qwen3-MoE's count num_experts; mlx-lm reads only those (our outputs add them).
    config = json.loads((directory / "config.json").read_text())
    config.setdefault("rope_theta", config["rope_parameters"]["rope_theta"])
    if family == "qwen3_moe":
        config.setdefault("num_experts", config["num_local_experts"])
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(demo_model_path() / name, directory / name)


def compress_cli(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "compress", *argv], check=True)


def prune_non_uniform(source: Path, stats: Path, target: Path, plan: Path) -> None:
    """A global-budget plan, edited by hand where it came out uniform (tiny models have few MoE
    layers): one expert more in the first MoE layer, one fewer in the last. With group-limited
    routing (DeepSeek-V3's n_group) every routing group keeps the same count in a layer: the first
    layer keeps every expert, the last one expert fewer in each group."""
    groups = json.loads((source / "config.json").read_text()).get("n_group") or 1
    compress_cli("prune", "--model", str(source), "--stats", str(stats), "--keep", "6", "--criterion", "frequency",
                 "--budget", "global" if groups == 1 else "uniform", "--plan-only", "--out", str(plan), "--quiet")
    data = json.loads(plan.read_text())
    layers, experts = data["layers"], data["source"]["num_experts"]
    first, last = min(layers, key=int), max(layers, key=int)
    if groups == 1:
        if len({len(kept) for kept in layers.values()}) == 1:  # the budget came out uniform
            layers[first].append(min(set(range(experts)) - set(layers[first])))
            layers[last].pop()
    else:
        layers[first] = list(range(experts))
        size = experts // groups
        for group in range(groups):
            layers[last].remove(max(e for e in layers[last] if e // size == group))
    plan.write_text(json.dumps(data))
    compress_cli("prune", "--model", str(source), "--plan", str(plan), "--out", str(target), "--quiet")
    assert "experts_per_layer" in json.loads((target / "config.json").read_text()), f"{target} came out uniform"


def derive(source: Path, root: Path, stats: Path) -> dict[str, Path]:
    """The derived outputs of one source, each made by the command line."""
    outputs = {"uniform": root / "uniform", "non-uniform": root / "non-uniform", "merged": root / "merged",
               "compensated": root / "compensated"}
    keep = ["--keep", "6", "--criterion", "frequency"]
    compress_cli("prune", "--model", str(source), "--stats", str(stats), *keep, "--out", str(outputs["uniform"]), "--quiet")
    prune_non_uniform(source, stats, outputs["non-uniform"], root / "non-uniform.json")
    compress_cli("merge", "--model", str(source), "--keep", "6", "--out", str(outputs["merged"]), *CALIBRATION)
    compress_cli("prune", "--model", str(source), "--stats", str(stats), *keep, "--compensate",
                 "--out", str(outputs["compensated"]), *CALIBRATION)
    return outputs


@torch.no_grad()
def reference(path: Path) -> dict:
    """transformers in fp32: next-token log-probabilities of each prompt and its greedy continuation."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    logprobs, greedy = [], []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        scores = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]
        logprobs.append(scores.gather(-1, ids[0, 1:, None])[:, 0].tolist())
        generated = model.generate(ids, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                                   pad_token_id=0)
        greedy.append(generated[0, len(prompt):].tolist())
    return {"prompt_logprobs": logprobs, "greedy": greedy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    compress.register()
    transformers.logging.set_verbosity_error()
    if args.out.exists():
        shutil.rmtree(args.out)
    entries = []
    for family in args.families.split(","):
        root = args.out / family
        root.mkdir(parents=True)
        source = root / "original"
        build_source(family, source)
        stats = root / "math.moe-stats"
        compress_cli("profile", "--model", str(source), "--out", str(stats), *CALIBRATION)
        outputs = {"original": source, **derive(source, root, stats)}
        if family == "gpt_oss":
            mxfp4 = root / "mxfp4"
            write_mxfp4_checkpoint(source, mxfp4)
            compress_cli("prune", "--model", str(mxfp4), "--stats", str(stats), "--keep", "6", "--criterion", "frequency",
                         "--out", str(root / "mxfp4-uniform"), "--quiet")
            prune_non_uniform(mxfp4, stats, root / "mxfp4-non-uniform", root / "mxfp4-non-uniform.json")
            outputs.update({"mxfp4": mxfp4, "mxfp4 uniform": root / "mxfp4-uniform",
                            "mxfp4 non-uniform": root / "mxfp4-non-uniform"})
        for kind, path in outputs.items():
            entries.append({"name": f"{family}/{kind}", "family": family, "kind": kind, "path": str(path.resolve()),
                            "prompts": PROMPTS, "greedy_tokens": GREEDY_TOKENS, "reference": reference(path)})
        print(f"{family}: {', '.join(outputs)}", flush=True)
    # The trained demo model (gpt-oss architecture) and a global-budget prune of it: real routing.
    demo = args.out / "demo" / "non-uniform"
    compress_cli("prune", "--model", "demo", "--domain", "math", "--keep", "8", "--budget", "global", "--criterion",
                 "frequency", "--samples", "16", "--seq-len", "128", "--out", str(demo), "--quiet")
    for kind, path in {"original": demo_model_path(), "non-uniform": demo}.items():
        entries.append({"name": f"demo/{kind}", "family": "gpt_oss", "kind": kind, "path": str(Path(path).resolve()),
                        "prompts": PROMPTS, "greedy_tokens": GREEDY_TOKENS, "reference": reference(path)})
    (args.out / "manifest.json").write_text(json.dumps({"outputs": entries}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
