"""Beating plain pruning on the demo model: merging, one-shot compensation, mixed calibration,
and what 300 distillation steps add to each.

For keep 8 (50%) and 4 (25%) of 16 experts, calibrated on math alone and on the mixture
math:0.8,general:0.2, every method below is applied in memory to the demo model and measured by
held-out perplexity on math, code and general text:

* prune with the best criteria (``reconstruct``; MAN and MSAN for comparison);
* merge with each grouping (HC-SMoE, M-SMoE), router rows ``dominant`` and ``weighted``, and with
  the members' neurons aligned to the dominant expert's first (``--align weights``, ``--align activations``),
  TIES-merged (``--merge-method ties``), REAM-style (aligned on activations, members weighted and
  ordered by REAP saliency, ``--merge-weights saliency``), weighted by gate mass (``--merge-weights
  gate-mass``), and with router rows fitted so a merged expert is chosen where its members were
  (``--router fitted``, `merging.router_fit`: one more pass, shared with compensation; the
  default), and that default grouped sequentially as REAM does ("+ sequential": each layer grouped
  on the inputs the already-merged layers before it give; measured here in memory only, the
  command groups every layer on the original model's inputs);
* each of those with one-shot compensation (down projections refitted in closed form, `merging.compensate`);
* each of those after `--steps` distillation steps toward the original (on the calibration
  mixture's training split), for the keeps in `--distill-keeps` and the methods in `DISTILLED`.

Applying in memory is tested equal to the written checkpoints (tests/test_merge.py).

    python benchmarks/merge_quality.py [--samples 120 --seq-len 128 --heldout-windows 128 --steps 300]

About 1.5 hours on 2 CPU cores, most of it distillation (`--distill-keeps ""` skips it: about 10 minutes).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from compress.data.corpus import DOMAINS, load_texts
from compress.data.tokens import token_stream, token_windows
from compress.distill import distill
from compress.evals.perplexity import heldout_perplexity
from compress.jobs.options import DistillSettings
from compress.layer_sample import search_model
from compress.merging.apply import apply_merge_to_model
from compress.merging.plan import MergePlan, from_prune_plan
from compress.merging.requests import CompensationRequest, MergeRequest
from compress.model_loading import load_model, load_tokenizer
from compress.pruning.plan import PrunePlan
from compress.pruning.reconstruct import ReconstructRequest
from compress.pruning.select import select_experts
from compress.resolve import demo_model_path
from compress.stats.profile import profile_windows

CALIBRATIONS = {"math": {"math": 1.0}, "math:0.8,general:0.2": {"math": 0.8, "general": 0.2}}
METHODS = ("prune reconstruct", "prune man", "prune msan", "merge hc-smoe", "merge hc-smoe (weighted router)",
           "merge hc-smoe (aligned)", "merge hc-smoe (aligned activations)", "merge m-smoe", "merge m-smoe (weighted router)",
           "merge m-smoe (aligned)", "merge m-smoe (aligned activations)", "merge hc-smoe (aligned activations + ties)",
           "merge m-smoe (aligned activations + ties)", "merge m-smoe (aligned activations + saliency)",
           "merge m-smoe (aligned activations + fitted router)", "merge m-smoe (aligned activations + gate-mass + fitted router)",
           "merge m-smoe (aligned activations + ties + gate-mass + fitted router)",
           "merge hc-smoe (aligned activations + gate-mass + fitted router)",
           "merge m-smoe (aligned activations + gate-mass + fitted router + sequential)")
DISTILLED = ("prune reconstruct", "merge hc-smoe", "merge m-smoe")  # the best of each kind; distilling all triples the time


def mixture_windows(tokenizer, mixture: dict, split: str, samples: int, seq_len: int) -> torch.Tensor:
    """`samples` windows, each domain's share of them from its own text, domain after domain."""
    parts = []
    for domain, share in mixture.items():
        count = max(1, round(share * samples))
        parts.append(token_windows(token_stream(tokenizer, load_texts(domain, split), max_tokens=count * seq_len), seq_len, count))
    return torch.cat(parts)


def sequential_answers(model, windows, request: MergeRequest, source: dict, top_k: int) -> dict:
    """The request's answers with each layer grouped on the inputs that the layers before it, already
    merged (dominant router rows), give: one search of the partly merged copy per layer."""
    merged, answers = copy.deepcopy(model), {}
    for layer in range(model.config.num_hidden_layers):
        groups, weights, found = answers[layer] = search_model(merged, windows, request, progress=False)[layer]
        apply_merge_to_model(merged, MergePlan(source, {layer: groups}, {layer: weights}, top_k, alignment=request.alignment,
                                               permutations={layer: found} if found is not None else {}))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=120, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--heldout-windows", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="distillation steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--keeps", default="8,4")
    parser.add_argument("--distill-keeps", default="8,4", help="keeps whose models are also distilled ('' for none)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated rows of METHODS to run")
    parser.add_argument("--calibrations", nargs="+", default=list(CALIBRATIONS), choices=CALIBRATIONS)
    args = parser.parse_args()
    start = time.perf_counter()
    path = demo_model_path()
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    top_k = model.config.num_experts_per_tok
    heldout = {d: load_texts(d, "heldout") for d in DOMAINS}
    source = {"model": "demo", "num_experts": 16, "top_k": top_k}

    def perplexities(candidate) -> dict:
        return {d: heldout_perplexity(candidate, tokenizer, heldout[d], args.seq_len, args.heldout_windows) for d in DOMAINS}

    def plan_for(method: str, keep: int, windows, stats) -> MergePlan:
        kind, _, rest = method.partition(" ")
        if kind == "prune":
            criterion = rest
            if criterion == "reconstruct":
                layers = search_model(model, windows, ReconstructRequest(keep, {}), progress=False)
            else:
                layers = select_experts(stats, criterion, keep, top_k=top_k)
            return from_prune_plan(PrunePlan(source, layers, min(top_k, keep)))
        grouping = rest.split(" ")[0]
        alignment = "activations" if "aligned activations" in rest else "weights" if "aligned" in rest else "none"
        weights = "saliency" if "saliency" in rest else "gate-mass" if "gate-mass" in rest else "frequency"
        request = MergeRequest(keep, grouping, weights, alignment=alignment)
        answers = (sequential_answers(model, windows, request, source, min(top_k, keep)) if "sequential" in rest
                   else search_model(model, windows, request, progress=False))
        return MergePlan(source, {layer: g for layer, (g, _, _) in answers.items()}, {layer: w for layer, (_, w, _) in answers.items()},
                         min(top_k, keep), "weighted" if "weighted" in rest else "fitted" if "fitted router" in rest else "dominant",
                         alignment=alignment,
                         permutations={layer: p for layer, (_, _, p) in answers.items() if p is not None},
                         merge_method="ties" if "ties" in rest else "average")

    base = perplexities(model)
    print(f"demo model (16 experts, top-{top_k}); calibration {args.samples} windows of {args.seq_len} tokens; held-out "
          f"perplexity over {args.heldout_windows} windows of {args.seq_len}; distillation {args.steps} steps, lr {args.lr}, "
          f"batch 8×{args.seq_len} of the calibration mixture's training split\n")
    print("| keep | calibration | method | compensation | math | code | general | math distilled | general distilled | one-shot s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| 16 (all) | — | original | — | {base['math']:.2f} | {base['code']:.2f} | {base['general']:.2f} | — | — | — |", flush=True)
    distill_keeps = {int(k) for k in args.distill_keeps.split(",") if k}
    for keep in (int(k) for k in args.keeps.split(",")):
        for name in args.calibrations:
            mixture = CALIBRATIONS[name]
            windows = mixture_windows(tokenizer, mixture, "calibration", args.samples, args.seq_len)
            train = mixture_windows(tokenizer, mixture, "train", 512, args.seq_len)
            stats = profile_windows(model, windows, batch_size=8, model_name="demo", domain=name, data="built-in", progress=False)
            for method in args.methods.split(","):
                began = time.perf_counter()
                plan = plan_for(method, keep, windows, stats)
                planned = time.perf_counter() - began
                for compensated in (False, True):
                    began = time.perf_counter()
                    fits = None
                    if compensated or plan.router == "fitted":
                        fits = search_model(model, windows, CompensationRequest(plan, compensate=compensated), progress=False)
                    reduced = copy.deepcopy(model)
                    apply_merge_to_model(reduced, plan, fits)
                    seconds = planned + time.perf_counter() - began
                    ppl = perplexities(reduced)
                    distilled = "— | —"
                    if keep in distill_keeps and method in DISTILLED:
                        with tempfile.TemporaryDirectory() as out:
                            settings = DistillSettings(steps=args.steps, lr=args.lr, batch_size=8)
                            distill(model, reduced.train().requires_grad_(True), tokenizer, train, out, settings, progress=False)
                        reduced.eval()
                        after = {d: heldout_perplexity(reduced, tokenizer, heldout[d], args.seq_len, args.heldout_windows)
                                 for d in ("math", "general")}
                        distilled = f"{after['math']:.2f} | {after['general']:.2f}"
                    print(f"| {keep} | {name} | {method} | {'yes' if compensated else 'no'} | {ppl['math']:.2f} | "
                          f"{ppl['code']:.2f} | {ppl['general']:.2f} | {distilled} | {seconds:.1f} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
