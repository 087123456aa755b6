"""The research notes' headline experiments (seeds/000-003, run there on gpt-oss-20b), repeated on
the demo model with this toolkit's instruments, to compare the numbers with the claims.

1. cold experts at 1% (share of tokens routed to an expert), per domain;
2. k = 1 versus the model's k = 4 (perplexity change, bootstrap interval);
3. circuits: cross-layer alignment and full-path consistency (the seeds' 0.875^23 argument);
4. prefetch efficiency of a probe on an early layer (the seeds' "L4 predicts later experts 94.2%");
5. domain specialists across math, code and general statistics.

    python benchmarks/seed_experiments.py
"""

from __future__ import annotations

import time

import torch

from compress.analyze import analyses
from compress.data.corpus import DOMAINS, load_texts
from compress.data.tokens import token_stream, token_windows
from compress.model_loading import load_model, load_tokenizer
from compress.resolve import demo_model_path
from compress.stats.profile import profile_windows
from compress.stats.summary import summarize


def main() -> None:
    start = time.perf_counter()
    path = demo_model_path()
    model, tokenizer = load_model(path, dtype="float32", device="cpu"), load_tokenizer(path)
    calibration = {d: token_windows(token_stream(tokenizer, load_texts(d, "calibration")), 128, 120) for d in DOMAINS}
    stats = {d: profile_windows(model, w, batch_size=8, model_name="demo", domain=d, data="built-in", progress=False)
             for d, w in calibration.items()}
    heldout = {d: token_windows(token_stream(tokenizer, load_texts(d, "heldout")), 128, 64) for d in DOMAINS}

    print("1. cold experts (< 1% of tokens routed to the expert), of 96:")
    for domain, s in stats.items():
        summary = summarize(s, 0.01)
        print(f"   {domain}: {summary['cold_experts_total']} ({summary['cold_experts_total'] / summary['experts_total']:.1%})")
    print("2. top-k 1 vs the model's 4 (held-out perplexity change, 95% bootstrap CI over 64 windows):")
    for domain, windows in heldout.items():
        r = analyses.topk(model, windows, [1])["k"]["1"]
        print(f"   {domain}: {r['base_perplexity']:.2f} → {r['perplexity']:.2f} "
              f"({r['change']:+.1%}, CI {r['change_95ci'][0]:+.1%} .. {r['change_95ci'][1]:+.1%})")
    print("3. circuits (math statistics):")
    c = analyses.circuits(stats["math"])
    print(f"   mean adjacent-layer alignment {c['mean_alignment']:.3f} (uniform 1/16 = {c['uniform_baseline']:.3f}); "
          f"full-path consistency over {len(c['alignment'])} transitions {c['full_path_consistency']:.2e} "
          f"(the seeds' model: 0.875^{len(c['alignment'])} = {0.875 ** len(c['alignment']):.3f})")
    print("4. prefetch efficiency of a linear probe on an early layer's output (math held-out windows, last fifth held out):")
    for probe_layer in (0, 1, 2):
        p = analyses.predict(model, heldout["math"], probe_layer)
        print(f"   probe layer {probe_layer}: prefetch efficiency {p['prefetch_efficiency']:.1%} over {len(p['layers'])} later layers")
    print("5. domain specialists (share of an expert's usage in one domain ≥ 2/3):")
    s = analyses.specialists(stats)
    print(f"   {s['verdict']}; mean largest-domain share {s['mean_max_share']:.3f} (uniform {s['uniform_share']:.3f})")
    print(f"({time.perf_counter() - start:.0f} s, torch {torch.__version__})")


if __name__ == "__main__":
    main()
