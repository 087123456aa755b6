"""Running the analyses of `compress analyze` on `jobs.options.AnalysisOptions`, and their tables."""

from __future__ import annotations

from ..errors import CompressError

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


def run_analysis(name: str, options, progress: bool = True) -> dict:
    """The result of analysis `name` (one of `ANALYSES`), after checking that the options it needs are given."""
    from ..data.corpus import DOMAINS

    if name not in ANALYSES:
        raise CompressError(f"unknown analysis {name!r}: choose one of {', '.join(ANALYSES)}")
    if name in NEEDS_MODEL and not options.model:
        raise CompressError(f"analyze {name} needs --model")
    for field_name in REQUIRED.get(name, ()):
        if not getattr(options, field_name):
            raise CompressError(f"analyze {name} needs --{field_name.replace('_', '-')}")
    if options.domain is not None and options.domain not in DOMAINS:
        raise CompressError(f"--domain {options.domain!r}: the analyses measure on a built-in held-out split ({', '.join(DOMAINS)})")
    return _analysis(name, options, progress)


def _model(name: str, options):
    from ..jobs.source import open_model

    source = open_model(options.model)
    positions = source.raw_config.get("max_position_embeddings")
    if name in ("ablate", "topk", "similarity", "predict") and positions and options.seq_len > positions:
        raise CompressError(f"--seq-len {options.seq_len} is beyond the model's {positions} positions: use {positions} or less")
    return source.load(dtype=options.dtype, device="cpu"), source.tokenizer()


def _windows(name: str, options, tokenizer):
    from ..data.corpus import load_texts
    from ..data.tokens import token_stream, token_windows

    if not options.domain:
        raise CompressError(f"analyze {name} measures on text: pass --domain (math, code, general)")
    windows = token_windows(token_stream(tokenizer, load_texts(options.domain, "heldout")), options.seq_len, options.windows)
    if len(windows) == 0:
        raise CompressError(f"the {options.domain} held-out text is shorter than one window of {options.seq_len} tokens")
    return windows


def _analysis(name: str, options, progress: bool) -> dict:
    from ..families import family_for_config
    from ..stats import RoutingStats
    from . import analyses
    from .routing import parse_layer_experts

    model = tokenizer = None
    if name in NEEDS_MODEL:
        model, tokenizer = _model(name, options)
        family = family_for_config(model.config)
        moe_layers, num_experts = family.moe_layer_indices(model), family.num_experts(model.config)
    if name == "trace":
        result = analyses.trace(model, tokenizer, options.prompt)
    elif name == "context":
        result = analyses.context(model, tokenizer, options.token, options.contexts)
    elif name == "dynamics":
        result = analyses.dynamics(model, tokenizer, options.prompt, options.max_new_tokens)
    elif name == "force":
        chosen = parse_layer_experts(options.expert, moe_layers, num_experts)
        result = analyses.force(model, tokenizer, options.prompt, {layer: experts[0] for layer, experts in chosen.items()},
                                options.max_new_tokens)
    elif name == "ablate":
        result = analyses.ablate(model, _windows(name, options, tokenizer), parse_layer_experts(options.experts, moe_layers, num_experts),
                                 progress=progress)
    elif name == "topk":
        try:
            ks = [int(k) for k in options.k.split(",")]
        except ValueError:
            raise CompressError(f"--k {options.k!r}: write comma-separated integers, e.g. 1,2,4,8") from None
        if any(not 1 <= k <= num_experts for k in ks):
            raise CompressError(f"--k {options.k!r}: every k must be between 1 and the {num_experts} experts per layer")
        result = analyses.topk(model, _windows(name, options, tokenizer), ks, progress=progress)
    elif name == "similarity":
        layer = moe_layers[0] if options.layer is None else options.layer
        if layer not in moe_layers:
            raise CompressError(f"--layer {layer} is not a MoE layer of this model (MoE layers: {moe_layers})")
        result = analyses.similarity(model, layer, _windows(name, options, tokenizer) if options.domain else None, options.threshold or 0.9)
    elif name == "predict":
        result = analyses.predict(model, _windows(name, options, tokenizer), options.probe_layer, progress=progress)
    elif name == "circuits":
        result = analyses.circuits(RoutingStats.load(options.stats[0]))
    else:  # specialists
        loaded = [RoutingStats.load(path) for path in options.stats]
        result = analyses.specialists({s.metadata.get("domain") or path: s for s, path in zip(loaded, options.stats)},
                                      options.threshold)
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
        lines += [f"  {o['context']!r} @ {o['position']}: " + "  ".join(f"L{layer}:{e}" for layer, e in o["experts"].items())
                  for o in result["occurrences"]]
        lines.append("mean overlap by layer: " + ", ".join(f"L{layer} {v:.2f}" for layer, v in result["mean_jaccard_by_layer"].items()))
    elif name == "force":
        lines.append(f"forced {result['forced']}\n  normal: {result['normal']!r}\n  forced: {result['text']!r}")
    return "\n".join(lines)
