"""`compress prune`: keep the experts a domain needs, write a smaller checkpoint."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

from ..errors import CompressError
from ..prune import BUDGETS, CRITERIA, DEFAULT_CRITERION
from .calibration import add_calibration_arguments, check_calibration_arguments, check_calibration_source
from .info import human_bytes, human_count
from .options import MODEL_HELP, add_checkpoint_output_arguments, fraction, positive_int

EPILOG = f"""examples:
  compress prune --model demo --domain math --keep 8 --out out/demo-math-keep8
  compress prune --model openai/gpt-oss-20b --domain math --keep 16 --dataset preset --out gpt-oss-20b-math-16
  compress prune --model ./ckpt --stats code.safetensors --keep-ratio 0.5 --budget global --out ckpt-code-half
  compress prune --model demo --domain code --keep 8 --plan-only --out plan.json   (edit it, then:)
  compress prune --model demo --plan plan.json --out out/demo-code-edited

criteria (higher score = kept; default {DEFAULT_CRITERION}):
  reap         mean routing weight x expert output norm over the tokens routed to the expert
  frequency    how often the expert is in a token's top-k
  gate-mass    total routing weight the expert receives
  ean          sum of the expert's output norms over its routed tokens
  random       seeded random baseline
  reconstruct  per layer, the kept set whose output is closest to the full layer's on calibration tokens;
               with --budget global, removals go where they raise the relative layer error least

Without --stats the model is profiled first on --domain calibration text (see `compress profile`).
The output keeps the source's key convention, MXFP4 stays byte-exact MXFP4, and uniform plans load
in stock transformers; global budgets need `compress.register()` or trust_remote_code=True.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove the experts a domain uses least and write the smaller checkpoint",
        description="Prune the routed experts of a MoE checkpoint, driven by routing statistics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--domain", help="calibration domain (math, code, general built in; others with --dataset)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep", type=positive_int, help="experts to keep per MoE layer (on average, with --budget global)")
    keep.add_argument("--keep-ratio", type=fraction, help="share of each layer's experts to keep, in (0, 1], e.g. 0.5")
    parser.add_argument("--criterion", choices=CRITERIA, default=DEFAULT_CRITERION, help=f"see below (default: {DEFAULT_CRITERION})")
    parser.add_argument("--budget", choices=BUDGETS, default="uniform",
                        help="uniform: the same count per layer; global: rank across layers (default: uniform)")
    parser.add_argument("--min-per-layer", type=positive_int,
                        help="with --budget global: fewest experts any layer keeps (default and minimum: top-k)")
    parser.add_argument("--protect", action="append", default=[], metavar="LAYER:EXPERTS",
                        help="always keep these experts, e.g. 3:5,7 (layer 3) or all:0 (every layer); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default: 0)")
    parser.add_argument("--stats", help="routing statistics from `compress profile` (default: profile now)")
    parser.add_argument("--plan", help="apply this plan JSON (from --plan-only, possibly edited) instead of selecting")
    parser.add_argument("--plan-only", action="store_true", help="write the plan JSON to --out and stop")
    add_checkpoint_output_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")
    add_calibration_arguments(parser, samples_help="calibration windows when profiling")
    parser.set_defaults(run=run)


# --- checking the request ------------------------------------------------------------------------
def _keep_count(args, num_experts: int) -> int:
    if args.keep is None and args.keep_ratio is None:
        raise CompressError("say how many experts to keep: --keep N or --keep-ratio R")
    if args.keep_ratio is not None:
        return max(1, round(args.keep_ratio * num_experts))
    if args.keep > num_experts:
        raise CompressError(f"--keep {args.keep} is more than the {num_experts} experts per layer this model has")
    return args.keep


def _protected(specs: list[str], moe_layers: list[int], num_experts: int) -> dict[int, set[int]]:
    protect: dict[int, set[int]] = {}
    for spec in specs:
        layer_text, _, experts_text = spec.partition(":")
        try:
            layers = moe_layers if layer_text == "all" else [int(layer_text)]
            experts = {int(e) for e in experts_text.split(",")}
        except ValueError:
            raise CompressError(f"--protect {spec!r}: write LAYER:EXPERT[,EXPERT...] or all:EXPERT[,...], e.g. 3:5,7") from None
        for layer in layers:
            if layer not in moe_layers:
                raise CompressError(f"--protect {spec!r}: layer {layer} is not a MoE layer ({moe_layers})")
            if any(not 0 <= e < num_experts for e in experts):
                raise CompressError(f"--protect {spec!r}: expert ids run from 0 to {num_experts - 1}")
            protect.setdefault(layer, set()).update(experts)
    return protect


def check_statistics(path: str, resolved, fingerprint: str):
    """The statistics in `path`, refused when they were measured on another model."""
    from ..stats.routing_stats import RoutingStats

    stats = RoutingStats.load(path)
    if stats.metadata.get("fingerprint") != fingerprint:
        raise CompressError(
            f"{path} was measured on {stats.metadata.get('model')}, a different model than {resolved.name} "
            f"(fingerprints {stats.metadata.get('fingerprint')} vs {fingerprint}): profile this model"
        )
    return stats


def needs_calibration(args) -> bool:
    """Whether the command will run calibration text through the model."""
    return not args.plan and (not args.stats or args.criterion == "reconstruct")


@dataclass
class PruneRequest:
    """Everything about a prune that can be checked before the model is loaded."""

    resolved: object
    family: object
    meta: object
    model_config: object
    fingerprint: str
    moe_layers: list[int]
    num_experts: int
    top_k: int
    groups: int
    keep: int | None = None
    protect: dict = field(default_factory=dict)
    stats: object = None
    plan: object = None


def check_request(args, resolved, config: dict) -> PruneRequest:
    """Resolve and check every option, cheapest first, so a mistake fails in seconds."""
    from ..families import family_for_config
    from ..model_info import meta_model, model_config, model_fingerprint
    from ..prune.plan import PrunePlan

    transformers_config = model_config(resolved.path)
    meta = meta_model(transformers_config)
    family = family_for_config(transformers_config)
    request = PruneRequest(resolved, family, meta, transformers_config, model_fingerprint(meta), family.moe_layer_indices(meta),
                           family.num_experts(transformers_config), family.top_k(transformers_config),
                           family.routing_groups(transformers_config))
    if args.plan:
        request.plan = PrunePlan.load(args.plan)
        request.plan.check(request.moe_layers, request.num_experts, request.top_k, request.fingerprint, request.groups)
        request.plan.provenance.setdefault("criterion", "plan")
    else:
        request.keep = _keep_count(args, request.num_experts)
        request.protect = _protected(args.protect, request.moe_layers, request.num_experts)
    if args.stats:
        request.stats = check_statistics(args.stats, resolved, request.fingerprint)
    if needs_calibration(args):
        if args.domain is None:
            raise CompressError("without --stats or --plan the model is profiled first: pass --domain "
                                "(math, code, general or your own with --dataset)")
        check_calibration_arguments(args, config)
        check_calibration_source(args)
    return request


# --- making the plan -----------------------------------------------------------------------------
def load_model_and_windows(args, resolved):
    from ..model_loading import load_model, load_tokenizer
    from .calibration import calibration_windows

    windows, data = calibration_windows(args, load_tokenizer(resolved.path))
    return load_model(resolved.path, dtype=args.dtype, device=args.device), windows, data


def make_plan(args, request: PruneRequest):
    """(plan, statistics): profiling and selection, the long part of a prune."""
    from ..prune.plan import PrunePlan
    from ..prune.select import select_experts

    if request.plan is not None:
        return request.plan, request.stats
    resolved, stats, keep, protect = request.resolved, request.stats, request.keep, request.protect
    if needs_calibration(args):
        from ..stats.profile import profile

        model, windows, data = load_model_and_windows(args, resolved)
        if stats is None:
            stats = profile(model, windows, batch_size=args.batch_size, model_name=resolved.name, domain=args.domain,
                            data=data, progress=not args.quiet, skip_samples=args.skip_samples)
    if args.criterion == "reconstruct":
        from ..prune.reconstruct import reconstruction_selection

        layers = reconstruction_selection(model, windows, keep, batch_size=args.batch_size, protect=protect,
                                          groups=request.groups, progress=not args.quiet, budget=args.budget,
                                          min_per_layer=args.min_per_layer)
    else:
        layers = select_experts(stats, args.criterion, keep, budget=args.budget, top_k=request.top_k,
                                min_per_layer=args.min_per_layer, protect=protect, groups=request.groups, seed=args.seed)
    statistics = {key: stats.metadata.get(key) for key in ("domain", "samples", "seq_len", "tokens")}
    source = {"model": resolved.name, "fingerprint": request.fingerprint, "family": request.family.name,
              "num_experts": request.num_experts, "top_k": request.top_k}
    provenance = {"criterion": args.criterion, "budget": args.budget, "keep": keep,
                  "protect": {str(layer): sorted(e) for layer, e in protect.items()}, "statistics": statistics}
    if args.criterion == "random":
        provenance["seed"] = args.seed
    plan = PrunePlan(source, layers, min(request.top_k, min(len(kept) for kept in layers.values())), provenance)
    plan.check(request.moe_layers, request.num_experts, request.top_k, request.fingerprint, request.groups)
    return plan, stats


# --- running -------------------------------------------------------------------------------------
def run(args) -> int:
    from ..checkpoint.files import read_config
    from ..checkpoint.output import claim_output
    from ..families import family_for_config
    from ..model_info import describe_model
    from ..prune.apply import write_pruned_checkpoint
    from ..prune.card import write_provenance
    from ..prune.plan import is_plan_file
    from ..resolve import ResolvedModel, resolve_model

    start = time.perf_counter()
    resolved = resolve_model(args.model, revision=args.revision)
    config = read_config(resolved.path)
    family_for_config(config)  # dense or unsupported models stop here
    if args.plan_only:
        output = claim_output(args.out, kind="file", overwrite=args.overwrite, sources=(resolved.path,),
                              recognise=is_plan_file, what="plan file")
    else:
        output = claim_output(args.out, kind="directory", overwrite=args.overwrite, sources=(resolved.path,),
                              what="pruned model")
    with output as claimed:
        before = describe_model(resolved)  # checks the checkpoint's files and tensors
        request = check_request(args, resolved, config)
        plan, stats = make_plan(args, request)
        if args.plan_only:
            with claimed.write() as staging:
                plan.save(staging)
            print(f"plan: keep {_kept_text(plan)} (criterion {plan.provenance.get('criterion')}) → {claimed.path}")
            return 0
        with claimed.write() as staging:
            write_pruned_checkpoint(resolved.path, staging, plan, args.max_shard_size, progress=not args.quiet)
            after = describe_model(ResolvedModel(staging, str(claimed.path)))
            write_provenance(staging, plan, before, after, stats, getattr(args, "command_line", None))
    seconds = time.perf_counter() - start
    _report(args, plan, before, after, claimed.path, seconds)
    return 0


def _kept_text(plan) -> str:
    counts = plan.experts_per_layer
    total = plan.source["num_experts"]
    if plan.uniform:
        return f"{next(iter(counts.values()))} of {total} experts in each of {len(counts)} MoE layers"
    return f"{sum(counts.values())} of {total * len(counts)} experts ({min(counts.values())}-{max(counts.values())} per layer)"


def _report(args, plan, before, after, out, seconds: float) -> None:
    b, a = before.parameters, after.parameters
    summary = {
        "out": str(out), "criterion": plan.provenance.get("criterion"), "experts_per_layer": plan.experts_per_layer,
        "top_k": {"before": plan.source["top_k"], "after": plan.top_k},
        "parameters": {"before": b.total, "after": a.total}, "active_parameters": {"before": b.active, "after": a.active},
        "bytes": after.checkpoint_bytes, "shards": after.shards, "seconds": round(seconds, 2),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    if plan.top_k != plan.source["top_k"]:
        print(f"note: top-k lowered from {plan.source['top_k']} to {plan.top_k}: fewer experts are kept than were routed per token")
    print(f"kept {_kept_text(plan)} ({plan.provenance.get('criterion')}); parameters {human_count(b.total)} → "
          f"{human_count(a.total)}, active {human_count(b.active)} → {human_count(a.active)}; "
          f"{human_bytes(after.checkpoint_bytes)} in {after.shards} shard{'s' if after.shards > 1 else ''}; {seconds:.1f} s → {out}")
