"""`compress analyze NAME`: the research notes' routing instruments, on any supported model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CompressError
from ..model_loading import DTYPES
from .options import MODEL_HELP, non_negative_int, positive_float, positive_int

ANALYSES = {
    "trace": "each token's top-k experts, weights, top-1 weight and entropy at every MoE layer (--prompt)",
    "context": "the same token in different contexts: its experts and their overlap (--token, --contexts)",
    "dynamics": "routing while generating: consecutive-token overlap and handoffs per layer (--prompt)",
    "force": "generate with routing forced to one expert (--prompt, --expert L:E or E)",
    "ablate": "perplexity change with experts removed, 95% bootstrap interval (--experts, --domain)",
    "topk": "perplexity at other top-k values (--k 1,2,4,8, --domain)",
    "circuits": "cross-layer alignment, pipelines and full-path consistency from transitions (--stats)",
    "specialists": "per-expert concentration across domains; names specialists or says none (--stats A --stats B ...)",
    "similarity": "expert similarity by weights and by outputs; merge candidates (--layer, --domain)",
    "predict": "probe from an early layer to later layers' experts: accuracy and prefetch efficiency (--probe-layer, --domain)",
}
NEEDS_MODEL = {"trace", "context", "dynamics", "force", "ablate", "topk", "similarity", "predict"}
REQUIRED = {"trace": ("prompt",), "context": ("token", "contexts"), "dynamics": ("prompt",), "force": ("prompt", "expert"),
            "ablate": ("experts", "domain"), "topk": ("domain",), "predict": ("domain",), "circuits": ("stats",),
            "specialists": ("stats",)}

EPILOG = "analyses:\n" + "\n".join(f"  {name:<12} {text}" for name, text in ANALYSES.items()) + """

examples:
  compress analyze trace --model demo --prompt "Q: What is 12 + 7?"
  compress analyze ablate --model demo --experts "3:5,7" --domain math
  compress analyze topk --model demo --k 1,2,4,8 --domain math
  compress analyze circuits --stats math.safetensors --json circuits.json
  compress analyze specialists --stats math.safetensors --stats code.safetensors --stats general.safetensors
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="routing analyses: trace, ablate, topk, circuits, specialists, ...",
                                   description="Routing analyses from the research notes, on your model.",
                                   epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="the analysis (listed below)")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--stats", action="append", default=[], help="routing statistics file(s)")
    parser.add_argument("--domain", help="evaluation text: held-out split of a built-in domain (math, code, general)")
    parser.add_argument("--windows", type=positive_int, default=32, help="windows of --seq-len tokens of --domain text (default: 32)")
    parser.add_argument("--seq-len", type=positive_int, default=128, help="tokens per window (default: 128)")
    parser.add_argument("--prompt", help="text for trace / dynamics / force")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default: 32)")
    parser.add_argument("--experts", help='experts to ablate, "LAYER:E[,E];LAYER:E" or "E" for every layer')
    parser.add_argument("--expert", help="expert to force: LAYER:E or E (every layer)")
    parser.add_argument("--k", default="1,2,4,8", help="top-k values for topk (default: 1,2,4,8)")
    parser.add_argument("--layer", type=int, help="layer for similarity (default: the first MoE layer)")
    parser.add_argument("--threshold", type=positive_float, help="similarity threshold (default 0.9) / specialist share (default 2/domains, at most 0.9)")
    parser.add_argument("--probe-layer", type=non_negative_int, default=0, help="decoder layer whose output the probe reads (default: 0)")
    parser.add_argument("--token", help="the token for context")
    parser.add_argument("--contexts", nargs="+", help="texts containing --token")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (default: float32)")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def _model(args):
    from ..checkpoint.files import read_config
    from ..model_loading import load_model, load_tokenizer
    from ..resolve import resolve_model

    resolved = resolve_model(args.model)
    positions = read_config(resolved.path).get("max_position_embeddings")
    if args.name in ("ablate", "topk", "similarity", "predict") and positions and args.seq_len > positions:
        raise CompressError(f"--seq-len {args.seq_len} is beyond the model's {positions} positions: use {positions} or less")
    return load_model(resolved.path, dtype=args.dtype, device="cpu"), load_tokenizer(resolved.path)


def _windows(args, tokenizer):
    from ..data.corpus import load_texts
    from ..data.tokens import token_stream, token_windows

    if not args.domain:
        raise CompressError(f"analyze {args.name} measures on text: pass --domain (math, code, general)")
    windows = token_windows(token_stream(tokenizer, load_texts(args.domain, "heldout")), args.seq_len, args.windows)
    if len(windows) == 0:
        raise CompressError(f"the {args.domain} held-out text is shorter than one window of {args.seq_len} tokens")
    return windows


def _required(args, *names):
    for name in names:
        if not getattr(args, name):
            raise CompressError(f"analyze {args.name} needs --{name.replace('_', '-')}")


def run(args) -> int:
    import contextlib

    from ..checkpoint.output import claim_output

    from ..data.corpus import DOMAINS

    if args.name not in ANALYSES:
        raise CompressError(f"unknown analysis {args.name!r}: choose one of {', '.join(ANALYSES)}")
    if args.name in NEEDS_MODEL and not args.model:
        raise CompressError(f"analyze {args.name} needs --model")
    _required(args, *REQUIRED.get(args.name, ()))
    if args.domain is not None and args.domain not in DOMAINS:
        raise CompressError(f"--domain {args.domain!r}: the analyses measure on a built-in held-out split ({', '.join(DOMAINS)})")
    with claim_output(args.json, kind="report", flag="--json", what="results file") if args.json else contextlib.nullcontext() as claimed:
        result = _analysis(args)
        if claimed is not None:
            with claimed.write() as staging:
                staging.write_text(json.dumps(result, indent=2) + "\n")
    print(render(args.name, result))
    return 0


def _analysis(args) -> dict:
    from ..analyze import analyses
    from ..analyze.routing import parse_layer_experts
    from ..families import family_for_config
    from ..stats import RoutingStats

    progress = not args.quiet
    model = tokenizer = None
    if args.name in NEEDS_MODEL:
        model, tokenizer = _model(args)
        family = family_for_config(model.config)
        moe_layers, num_experts = family.moe_layer_indices(model), family.num_experts(model.config)
    if args.name == "trace":
        result = analyses.trace(model, tokenizer, args.prompt)
    elif args.name == "context":
        result = analyses.context(model, tokenizer, args.token, args.contexts)
    elif args.name == "dynamics":
        result = analyses.dynamics(model, tokenizer, args.prompt, args.max_new_tokens)
    elif args.name == "force":
        chosen = parse_layer_experts(args.expert, moe_layers, num_experts)
        result = analyses.force(model, tokenizer, args.prompt, {layer: experts[0] for layer, experts in chosen.items()},
                                args.max_new_tokens)
    elif args.name == "ablate":
        result = analyses.ablate(model, _windows(args, tokenizer), parse_layer_experts(args.experts, moe_layers, num_experts),
                                 progress=progress)
    elif args.name == "topk":
        try:
            ks = [int(k) for k in args.k.split(",")]
        except ValueError:
            raise CompressError(f"--k {args.k!r}: write comma-separated integers, e.g. 1,2,4,8") from None
        if any(not 1 <= k <= num_experts for k in ks):
            raise CompressError(f"--k {args.k!r}: every k must be between 1 and the {num_experts} experts per layer")
        result = analyses.topk(model, _windows(args, tokenizer), ks, progress=progress)
    elif args.name == "similarity":
        layer = moe_layers[0] if args.layer is None else args.layer
        if layer not in moe_layers:
            raise CompressError(f"--layer {layer} is not a MoE layer of this model (MoE layers: {moe_layers})")
        result = analyses.similarity(model, layer, _windows(args, tokenizer) if args.domain else None, args.threshold or 0.9)
    elif args.name == "predict":
        result = analyses.predict(model, _windows(args, tokenizer), args.probe_layer, progress=progress)
    elif args.name == "circuits":
        result = analyses.circuits(RoutingStats.load(args.stats[0]))
    else:  # specialists
        loaded = [RoutingStats.load(path) for path in args.stats]
        result = analyses.specialists({s.metadata.get("domain") or path: s for s, path in zip(loaded, args.stats)},
                                      args.threshold)
    return result


def render(name: str, result: dict) -> str:
    """A readable table of an analysis' result."""
    lines = []
    if name == "trace":
        for token in result["tokens"]:
            cells = "  ".join(f"L{layer}: " + ",".join(f"{e}({w:.2f})" for e, w in zip(r["experts"], r["weights"]))
                              + f" H={r['entropy']:.2f}" for layer, r in token["layers"].items())
            lines.append(f"{token['position']:>4} {token['token']!r:<12} {cells}")
    elif name in ("ablate",):
        lines.append(f"perplexity {result['base_perplexity']:.3f} → {result['perplexity']:.3f} ({result['change']:+.2%}; "
                     f"95% CI {result['change_95ci'][0]:+.2%} .. {result['change_95ci'][1]:+.2%} over {result['windows']} windows)")
    elif name == "topk":
        lines.append(f"model top-k: {result['model_top_k']}; {result['windows']} windows")
        for k, r in result["k"].items():
            lines.append(f"  k={k:<3} perplexity {r['perplexity']:.3f} ({r['change']:+.2%}; 95% CI "
                         f"{r['change_95ci'][0]:+.2%} .. {r['change_95ci'][1]:+.2%})")
    elif name == "circuits":
        for pair, value in result["alignment"].items():
            lines.append(f"  {pair:<10} alignment {value:.3f}")
        lines.append(f"mean alignment {result['mean_alignment']:.3f} (uniform routing: {result['uniform_baseline']:.3f}); "
                     f"full-path consistency {result['full_path_consistency']:.3g}")
        lines += [f"  pipeline {'→'.join(map(str, p['experts']))}  p={p['probability']:.3g}" for p in result["pipelines"]]
    elif name == "specialists":
        lines.append(f"domains {', '.join(result['domains'])}; mean largest domain share {result['mean_max_share']:.3f} "
                     f"(uniform {result['uniform_share']:.3f}); {result['verdict']}")
        lines += [f"  layer {s['layer']} expert {s['expert']}: {s['domain']} {s['share']:.0%}" for s in result["specialists"]]
    elif name == "similarity":
        lines.append(f"layer {result['layer']}: max weight cosine {result['max_weight_cosine']}, max output cosine "
                     f"{result['max_output_cosine']}; {len(result['merge_candidates'])} merge candidates at {result['threshold']}")
        lines += [f"  experts {c['experts'][0]} & {c['experts'][1]}: {c}" for c in result["merge_candidates"]]
    elif name == "predict":
        lines.append(f"probe on layer {result['probe_layer']}, {result['held_out_tokens']} held-out tokens; "
                     f"prefetch efficiency {result['prefetch_efficiency']:.1%}")
        lines += [f"  layer {layer}: exact set {r['exact_set_accuracy']:.1%}, precision {r['precision']:.1%}, recall {r['recall']:.1%}"
                  for layer, r in result["layers"].items()]
    elif name == "dynamics":
        lines.append(f"{result['generated_tokens']} generated tokens: {result['text']!r}")
        lines += [f"  layer {layer}: consecutive overlap {r['consecutive_jaccard']:.3f}, handoffs/token {r['handoffs_per_token']:.2f}"
                  for layer, r in result["layers"].items()]
        lines.append(f"mean overlap {result['mean_consecutive_jaccard']:.3f}, mean handoffs {result['mean_handoffs_per_token']:.2f}")
    elif name == "context":
        lines += [f"  {o['context']!r} @ {o['position']}: " + "  ".join(f"L{l}:{e}" for l, e in o["experts"].items())
                  for o in result["occurrences"]]
        lines.append("mean overlap by layer: " + ", ".join(f"L{l} {v:.2f}" for l, v in result["mean_jaccard_by_layer"].items()))
    elif name == "force":
        lines.append(f"forced {result['forced']}\n  normal: {result['normal']!r}\n  forced: {result['text']!r}")
    return "\n".join(lines)
