"""Tiered conversion versus plain pruning on the demo model, before and after distillation.

Everything runs through the command line's own code (`compress.cli.main`):

1. profile the demo model on math calibration text;
2. convert to TieredLightweightMoE — tiers ``0-1:4,2-3:3,4-5:2`` (8/6/4 experts per layer), teams
   of 2, one team per token — with greedy and with agglomerative clustering;
3. prune to the same expert count (uniform keep 6 = 36 experts, default criterion);
4. distil the greedy tiered model and the pruned model for the same steps on math training text;
5. held-out perplexity (math and general) of everything, and parameter counts.

    python benchmarks/tiered_quality.py [--steps 300 --workdir /tmp/tiered_quality]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import compress
from compress.cli import main as cli
from compress.data.corpus import load_texts
from compress.evals.perplexity import heldout_perplexity
from compress.resolve import demo_model_path

compress.register()  # the tiered model classes, for AutoModelForCausalLM below
TIERS = "0-1:4,2-3:3,4-5:2"


def run(*argv: str) -> None:
    if cli(list(argv)) != 0:
        raise SystemExit(f"failed: compress {' '.join(argv)}")


def perplexities(path: Path, windows: int) -> dict[str, float]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return {d: heldout_perplexity(model, tokenizer, load_texts(d, "heldout"), 128, windows) for d in ("math", "general")}


def parameters(path: Path) -> int:
    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--heldout-windows", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/tiered_quality")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    calibration = ["--samples", "120", "--seq-len", "128", "--dtype", "float32", "--quiet"]
    run("profile", "--model", "demo", "--domain", "math", "--out", str(work / "math.safetensors"), *calibration)
    for clustering in ("greedy", "agglomerative"):
        run("convert", "tiered", "--model", "demo", "--stats", str(work / "math.safetensors"), "--tiers", TIERS,
            "--team-size", "2", "--team-top-k", "1", "--clustering", clustering, "--out", str(work / f"tiered-{clustering}"), "--quiet")
    run("prune", "--model", "demo", "--domain", "math", "--keep", "6", "--out", str(work / "pruned-keep6"), *calibration)
    distill = ["--domain", "math", "--steps", str(args.steps), "--lr", str(args.lr), "--seq-len", "128", "--samples", "512",
               "--batch-size", "8", "--quiet"]
    for name in ("tiered-greedy", "pruned-keep6"):
        run("distill", "--teacher", "demo", "--student", str(work / name), "--out", str(work / f"{name}-distilled"), *distill)

    print(f"demo model, held-out perplexity over {args.heldout_windows} windows of 128 tokens; "
          f"distillation {args.steps} steps of 8×128 math tokens, lr {args.lr}\n")
    print("| model | parameters | experts per token | math | general |\n|---|---|---|---|---|")
    rows = [("original", demo_model_path(), 4), ("tiered (greedy teams), converted", work / "tiered-greedy", 2),
            ("tiered (agglomerative teams), converted", work / "tiered-agglomerative", 2),
            ("tiered (greedy teams), distilled", work / "tiered-greedy-distilled", 2),
            ("pruned, keep 6 (reconstruct)", work / "pruned-keep6", 4), ("pruned, keep 6, distilled", work / "pruned-keep6-distilled", 4)]
    for name, path, per_token in rows:
        ppl = perplexities(path, args.heldout_windows)
        print(f"| {name} | {parameters(path) / 1e6:.2f}M | {per_token} | {ppl['math']:.2f} | {ppl['general']:.2f} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
