"""What pruning the demo model costs: held-out perplexity per domain for every criterion.

1. Routing statistics of the demo model on each built-in domain's calibration split.
2. Table 1 — one model for all domains: calibration on all three domains (statistics merged;
   reconstruct gets windows of each), keep 8 (50%) and 4 (25%) of 16 experts per layer with each
   criterion (random: mean of 3 seeds), held-out perplexity on math, code and general text.
3. Table 2 — does the calibration domain matter: math-calibrated vs general-calibrated pruning,
   perplexity on math held-out text.

Plans are applied in memory (`apply_plan_to_model`, tested equal to the written checkpoint).

    python benchmarks/prune_quality.py [--samples 96 --seq-len 128 --heldout-windows 64]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from compress.data.corpus import DOMAINS, load_texts
from compress.data.tokens import token_stream, token_windows
from compress.evals.perplexity import heldout_perplexity
from compress.families import family_for_config
from compress.model_loading import load_model, load_tokenizer
from compress.pruning import SCORE_CRITERIA
from compress.pruning.apply import apply_plan_to_model
from compress.pruning.plan import PrunePlan
from compress.pruning.reconstruct import reconstruction_selection
from compress.pruning.select import select_experts
from compress.resolve import demo_model_path
from compress.stats import merge_all
from compress.stats.profile import profile_windows

KEEPS = (8, 4)
RANDOM_SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96, help="calibration windows per domain")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-windows", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()

    path = demo_model_path()
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    family = family_for_config(model.config)
    top_k = family.top_k(model.config)
    windows = {d: token_windows(token_stream(tokenizer, load_texts(d, "calibration")), args.seq_len, args.samples) for d in DOMAINS}
    heldout = {d: load_texts(d, "heldout") for d in DOMAINS}
    stats = {d: profile_windows(model, w, batch_size=8, model_name="demo", domain=d, data="built-in", progress=False)
             for d, w in windows.items()}
    stats["all"] = merge_all([stats[d] for d in DOMAINS])
    windows["all"] = torch.cat([w[: args.samples // 3] for w in windows.values()])

    def kept_sets(criterion: str, calibration: str, keep: int, seed: int = 0) -> dict[int, list[int]]:
        if criterion == "reconstruct":
            return reconstruction_selection(model, windows[calibration], keep, progress=False)
        return select_experts(stats[calibration], criterion, keep, top_k=top_k, seed=seed)

    def perplexities(layers: dict[int, list[int]] | None, domains=DOMAINS) -> dict[str, float]:
        pruned = model
        if layers is not None:
            pruned = copy.deepcopy(model)
            apply_plan_to_model(pruned, PrunePlan({"num_experts": 16, "top_k": top_k}, layers,
                                                  min(top_k, len(next(iter(layers.values()))))))
        return {d: heldout_perplexity(pruned, tokenizer, heldout[d], args.seq_len, args.heldout_windows) for d in domains}

    def evaluate(criterion: str, calibration: str, keep: int, domains=DOMAINS) -> dict[str, float]:
        seeds = RANDOM_SEEDS if criterion == "random" else (0,)
        runs = [perplexities(kept_sets(criterion, calibration, keep, seed), domains) for seed in seeds]
        return {d: statistics.mean(run[d] for run in runs) for d in domains}

    criteria = (*SCORE_CRITERIA, "reconstruct")
    baseline = perplexities(None)
    print(f"demo model: {args.samples} calibration windows of {args.seq_len} tokens per domain; "
          f"held-out perplexity over {args.heldout_windows} windows of {args.seq_len}\n")
    print("Table 1: calibrated on all three domains (merged statistics)\n")
    print("| keep | criterion | math | code | general |\n|---|---|---|---|---|")
    print(f"| 16 (all) | — | {baseline['math']:.2f} | {baseline['code']:.2f} | {baseline['general']:.2f} |")
    for keep in KEEPS:
        for criterion in criteria:
            ppl = evaluate(criterion, "all", keep)
            print(f"| {keep} | {criterion}{' (3 seeds)' if criterion == 'random' else ''} | "
                  f"{ppl['math']:.2f} | {ppl['code']:.2f} | {ppl['general']:.2f} |", flush=True)

    print("\nTable 2: math held-out perplexity, math-calibrated vs general-calibrated\n")
    print("| keep | criterion | math-calibrated | general-calibrated |\n|---|---|---|---|")
    for keep in KEEPS:
        for criterion in criteria:
            if criterion == "random":
                continue
            on_math = evaluate(criterion, "math", keep, ("math",))["math"]
            on_general = evaluate(criterion, "general", keep, ("math",))["math"]
            print(f"| {keep} | {criterion} | {on_math:.2f} | {on_general:.2f} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
