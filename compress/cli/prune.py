"""`compress prune`: keep the experts a domain needs, write a smaller checkpoint."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..checkpoint.files import read_config
from ..checkpoint.output import atomic_output_dir
from ..checkpoint.writer import DEFAULT_MAX_SHARD_BYTES
from ..errors import CompressError, OutputExistsError
from ..families import family_for_config
from ..model_info import describe_model, meta_model, model_fingerprint
from ..prune.plan import PrunePlan
from ..prune.select import BUDGETS, CRITERIA, select_experts
from ..resolve import ResolvedModel, resolve_model
from ..stats import RoutingStats
from .calibration import add_calibration_arguments, calibration_windows, check_calibration_arguments
from .info import human_bytes, human_count

DEFAULT_CRITERION = "reconstruct"  # best on the demo model: benchmarks/RESULTS.md

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
  reconstruct  per layer, the kept set whose output is closest to the full layer's on calibration tokens

Without --stats the model is profiled first on --domain calibration text (see `compress profile`).
The output keeps the source's key convention, MXFP4 stays byte-exact MXFP4, and uniform plans load
in stock transformers; global budgets need `import compress` or trust_remote_code=True.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove the experts a domain uses least and write the smaller checkpoint",
        description="Prune the routed experts of a MoE checkpoint, driven by routing statistics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="local directory, Hub id (OWNER/NAME) or `demo`")
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--domain", help="calibration domain (math, code, general built in; others with --dataset)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep", type=int, help="experts to keep per MoE layer (on average, with --budget global)")
    keep.add_argument("--keep-ratio", type=float, help="share of each layer's experts to keep, e.g. 0.5")
    parser.add_argument("--criterion", default=DEFAULT_CRITERION, help=f"{', '.join(CRITERIA)} (default: {DEFAULT_CRITERION})")
    parser.add_argument("--budget", default="uniform", help="uniform: the same count per layer; global: rank across layers (default: uniform)")
    parser.add_argument("--min-per-layer", type=int, help="with --budget global: fewest experts any layer keeps (default and minimum: top-k)")
    parser.add_argument("--protect", action="append", default=[], metavar="LAYER:EXPERTS",
                        help="always keep these experts, e.g. 3:5,7 (layer 3) or all:0 (every layer); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default: 0)")
    parser.add_argument("--stats", help="routing statistics from `compress profile` (default: profile now)")
    parser.add_argument("--plan", help="apply this plan JSON (from --plan-only, possibly edited) instead of selecting")
    parser.add_argument("--plan-only", action="store_true", help="write the plan JSON to --out and stop")
    parser.add_argument("--out", required=True, help="output directory (with --plan-only: the plan file)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--max-shard-size", type=int, default=DEFAULT_MAX_SHARD_BYTES, metavar="BYTES",
                        help=f"largest output shard (default: {DEFAULT_MAX_SHARD_BYTES} = 5 GiB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")
    add_calibration_arguments(parser, samples_help="calibration windows when profiling")
    parser.set_defaults(run=run)


# --- checking the request ------------------------------------------------------------------------
def check_output_dir(args, resolved: ResolvedModel) -> Path:
    out, source = Path(args.out).resolve(), Path(resolved.path).resolve()
    if out == source or source in out.parents:
        raise CompressError(f"--out {out} is the source model or inside it: write the pruned model somewhere else")
    if out in source.parents:
        raise CompressError(f"--out {out} contains the source model {source}: choose another --out")
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    return out


def _keep_count(args, num_experts: int) -> int:
    if args.keep is None and args.keep_ratio is None:
        raise CompressError("say how many experts to keep: --keep N or --keep-ratio R")
    if args.keep_ratio is not None:
        if not 0 < args.keep_ratio <= 1:
            raise CompressError(f"--keep-ratio must be in (0, 1], not {args.keep_ratio}")
        return max(1, round(args.keep_ratio * num_experts))
    if args.keep < 1:
        raise CompressError(f"--keep must be at least 1, not {args.keep}")
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


# --- making the plan -----------------------------------------------------------------------------
def load_model_and_windows(args, resolved: ResolvedModel, config: dict):
    from ..model_loading import load_model, load_tokenizer

    if args.domain is None:
        raise CompressError("without --stats or --plan the model is profiled first: pass --domain (math, code, general or your own with --dataset)")
    check_calibration_arguments(args, config)
    windows, data = calibration_windows(args, load_tokenizer(resolved.path))
    return load_model(resolved.path, dtype=args.dtype, device=args.device), windows, data


def check_statistics(stats: RoutingStats, path: str, resolved: ResolvedModel, fingerprint: str) -> RoutingStats:
    if stats.metadata.get("fingerprint") != fingerprint:
        raise CompressError(
            f"{path} was measured on {stats.metadata.get('model')}, a different model than {resolved.name} "
            f"(fingerprints {stats.metadata.get('fingerprint')} vs {fingerprint}): profile this model"
        )
    return stats


def make_plan(args, resolved: ResolvedModel, config: dict, model_config) -> tuple[PrunePlan, RoutingStats | None]:
    family = family_for_config(config)
    meta = meta_model(model_config)
    moe_layers = family.moe_layer_indices(meta)
    num_experts, top_k = family.num_experts(model_config), family.top_k(model_config)
    fingerprint = model_fingerprint(meta)
    groups = family.routing_groups(model_config)
    if args.plan:
        plan = PrunePlan.load(args.plan)
        plan.check(moe_layers, num_experts, top_k, fingerprint, groups)
        plan.provenance.setdefault("criterion", "plan")
        return plan, check_statistics(RoutingStats.load(args.stats), args.stats, resolved, fingerprint) if args.stats else None
    if args.criterion not in CRITERIA:
        raise CompressError(f"unknown criterion {args.criterion!r}: choose one of {', '.join(CRITERIA)}")
    if args.budget not in BUDGETS:
        raise CompressError(f"unknown budget {args.budget!r}: choose one of {', '.join(BUDGETS)}")
    keep = _keep_count(args, num_experts)
    protect = _protected(args.protect, moe_layers, num_experts)
    if args.criterion == "reconstruct" and args.budget != "uniform":
        raise CompressError("--criterion reconstruct chooses per layer: use --budget uniform")
    stats = check_statistics(RoutingStats.load(args.stats), args.stats, resolved, fingerprint) if args.stats else None
    if stats is None or args.criterion == "reconstruct":
        from ..stats.profile import profile

        model, windows, data = load_model_and_windows(args, resolved, config)
        if stats is None:
            stats = profile(model, windows, batch_size=args.batch_size, model_name=resolved.name, domain=args.domain,
                            data=data, progress=not args.quiet)
    if args.criterion == "reconstruct":
        from ..prune.reconstruct import reconstruction_selection

        layers = reconstruction_selection(model, windows, keep, batch_size=args.batch_size, protect=protect, groups=groups,
                                          progress=not args.quiet)
    else:
        layers = select_experts(stats, args.criterion, keep, budget=args.budget, top_k=top_k, min_per_layer=args.min_per_layer,
                                protect=protect, groups=groups, seed=args.seed)
    statistics = {key: stats.metadata.get(key) for key in ("domain", "samples", "seq_len", "tokens")}
    source = {"model": resolved.name, "fingerprint": fingerprint, "family": family.name, "num_experts": num_experts, "top_k": top_k}
    provenance = {"criterion": args.criterion, "budget": args.budget, "keep": keep,
                  "protect": {str(layer): sorted(e) for layer, e in protect.items()}, "statistics": statistics}
    if args.criterion == "random":
        provenance["seed"] = args.seed
    plan = PrunePlan(source, layers, min(top_k, min(len(kept) for kept in layers.values())), provenance)
    plan.check(moe_layers, num_experts, top_k, fingerprint, groups)
    return plan, stats


# --- running -------------------------------------------------------------------------------------
def run(args) -> int:
    from transformers import AutoConfig

    from ..prune.apply import write_pruned_checkpoint
    from ..prune.card import write_provenance

    start = time.perf_counter()
    resolved = resolve_model(args.model, revision=args.revision)
    config = read_config(resolved.path)
    family_for_config(config)  # dense or unsupported models stop here
    out = Path(args.out).resolve() if args.plan_only else check_output_dir(args, resolved)
    if args.plan_only and out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    before = describe_model(resolved)
    plan, stats = make_plan(args, resolved, config, AutoConfig.from_pretrained(resolved.path))
    if args.plan_only:
        plan.save(out)
        print(f"plan: keep {_kept_text(plan)} (criterion {plan.provenance.get('criterion')}) → {out}")
        return 0

    with atomic_output_dir(out, overwrite=args.overwrite) as staging:
        write_pruned_checkpoint(resolved.path, staging, plan, args.max_shard_size, progress=not args.quiet)
        after = describe_model(ResolvedModel(staging, str(out)))
        write_provenance(staging, plan, before, after, stats, getattr(args, "command_line", None))
    seconds = time.perf_counter() - start
    _report(args, plan, before, after, out, seconds)
    return 0


def _kept_text(plan: PrunePlan) -> str:
    counts = plan.experts_per_layer
    total = plan.source["num_experts"]
    if plan.uniform:
        return f"{next(iter(counts.values()))} of {total} experts in each of {len(counts)} MoE layers"
    return f"{sum(counts.values())} of {total * len(counts)} experts ({min(counts.values())}-{max(counts.values())} per layer)"


def _report(args, plan: PrunePlan, before, after, out: Path, seconds: float) -> None:
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
