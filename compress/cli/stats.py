"""`compress stats show|plot|merge|diff`: read, draw, combine and compare routing statistics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CompressError
from ..stats import DEFAULT_COLD_THRESHOLD
from .info import human_count, layer_ranges
from .options import non_negative_float, positive_int

EPILOG = """examples:
  compress stats show math.safetensors
  compress stats show math.safetensors --cold-threshold 0.02 --json
  compress stats plot math.safetensors -o plots/ --layer 12
  compress stats merge shard0.safetensors shard1.safetensors -o all.safetensors
  compress stats diff math.safetensors code.safetensors
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats",
        help="show, plot, merge or compare routing statistics files",
        description="Read, draw, combine and compare the routing statistics written by `compress profile`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="per layer: entropy, concentration, cold and top experts")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--cold-threshold", type=non_negative_float, default=DEFAULT_COLD_THRESHOLD,
                      help=f"an expert is cold when fewer than this share of tokens route to it (default: {DEFAULT_COLD_THRESHOLD})")
    show.add_argument("--top", type=positive_int, default=5, help="hottest experts to list per layer (default: 5)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    show.set_defaults(run=run_show)

    plot = actions.add_parser("plot", help="PNG heatmaps: usage, REAP saliency, co-activation, transitions")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--out", required=True, help="directory for the PNG files")
    plot.add_argument("--layer", type=int, help="decoder layer for the co-activation and transition maps (default: the middle MoE layer)")
    plot.set_defaults(run=run_plot)

    merge = actions.add_parser("merge", help="add up statistics of the same model (shards, domains, processes)")
    merge.add_argument("files", metavar="FILE", nargs="+")
    merge.add_argument("-o", "--out", required=True, help="merged statistics file to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it is a statistics file written by moe-compress")
    merge.set_defaults(run=run_merge)

    diff = actions.add_parser("diff", help="per-layer divergence between two domains' expert usage")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")
    diff.set_defaults(run=run_diff)


def _header(stats) -> str:
    m = stats.metadata
    return (f"{m.get('model')} ({m.get('family')}, top-{m.get('top_k')}) · domain {m.get('domain')} · "
            f"{human_count(m.get('tokens') or 0)} tokens in {m.get('samples')} windows of {m.get('seq_len') or 'mixed'}")


def run_show(args) -> int:
    from ..stats import RoutingStats
    from ..stats.summary import summarize

    stats = RoutingStats.load(args.file)
    summary = summarize(stats, args.cold_threshold, args.top)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(_header(stats))
    print(f"cold (< {args.cold_threshold:.1%} of tokens): {summary['cold_experts_total']} of {summary['experts_total']} experts")
    print(f"{'layer':>5}  {'entropy':>7}  {'/ln E':>5}  {'gini':>5}  {'cold':>4}  top experts (share of tokens)")
    for layer in summary["layers"]:
        top = ", ".join(f"{t['expert']} {t['usage_rate']:.1%}" for t in layer["top_experts"])
        print(f"{layer['layer']:>5}  {layer['entropy_nats']:>7.3f}  {layer['entropy_normalized']:>5.2f}  "
              f"{layer['gini']:>5.2f}  {len(layer['cold_experts']):>4}  {top}")
    cold = {layer["layer"]: layer["cold_experts"] for layer in summary["layers"] if layer["cold_experts"]}
    for layer, experts in cold.items():
        print(f"cold in layer {layer}: {layer_ranges(experts)}")
    return 0


def run_plot(args) -> int:
    from ..stats import RoutingStats
    from ..stats.plots import plot_stats

    stats = RoutingStats.load(args.file)
    if args.layer is not None and args.layer not in stats.layers:
        raise CompressError(f"layer {args.layer} is not a MoE layer of these statistics (MoE layers: {layer_ranges(stats.layer_indices)})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CompressError(f"-o {out} is a file: name a directory for the PNG files (they replace earlier plots of the same name)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompressError(f"cannot create -o {out}: {exc.strerror}; choose a writable place") from None
    for path in plot_stats(stats, out, args.layer):
        print(path)
    return 0


def run_merge(args) -> int:
    from ..checkpoint.output import claim_output
    from ..stats import RoutingStats, merge_all
    from ..stats.routing_stats import is_routing_stats_file

    with claim_output(args.out, kind="file", overwrite=args.overwrite, flag="-o", recognise=is_routing_stats_file,
                      what="statistics file") as claimed:
        merged = merge_all([RoutingStats.load(path) for path in args.files], names=args.files)
        with claimed.write() as staging:
            merged.save(staging)
    print(f"merged {len(args.files)} files: {human_count(merged.metadata['tokens'])} tokens of {merged.metadata['domain']} → {claimed.path}")
    return 0


def run_diff(args) -> int:
    from ..stats import RoutingStats
    from ..stats.summary import divergence

    a, b = RoutingStats.load(args.a), RoutingStats.load(args.b)
    result = divergence(a, b)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"A: {_header(a)}\nB: {_header(b)}")
    print(f"mean Jensen-Shannon divergence of expert usage: {result['mean_js_divergence_bits']:.4f} bits (0 = same, 1 = disjoint)")
    print(f"{'layer':>5}  {'JS bits':>7}  experts whose usage moved most (B - A, share of tokens)")
    for layer in result["layers"]:
        moved = ", ".join(f"{m['expert']} {m['usage_rate_change']:+.1%}" for m in layer["most_shifted"])
        print(f"{layer['layer']:>5}  {layer['js_divergence_bits']:>7.4f}  {moved}")
    return 0
