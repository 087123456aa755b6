"""`compress stats show|plot|merge|diff`: read, draw, combine and compare routing statistics."""

from __future__ import annotations

import argparse
import json

from ..errors import CompressError
from ..jobs.options import non_negative_float, positive_int
from ..stats import DEFAULT_COLD_THRESHOLD

EPILOG = """examples:
  compress stats show math.safetensors
  compress stats show math.safetensors --cold-threshold 0.02 --json
  compress stats plot math.safetensors -o plots/ --layer 12
  compress stats merge shard0.safetensors shard1.safetensors -o all.safetensors
  compress stats diff math.safetensors code.safetensors
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("stats", help="show, plot, merge or compare routing statistics files", epilog=EPILOG,
                                   description="Read, draw, combine and compare the routing statistics written by `compress profile`.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="per layer: entropy, concentration, cold and top experts")
    show.add_argument("file", metavar="FILE")
    show.add_argument("--cold-threshold", type=non_negative_float, default=DEFAULT_COLD_THRESHOLD,
                      help=f"an expert is cold when fewer than this share of tokens route to it (default: {DEFAULT_COLD_THRESHOLD})")
    show.add_argument("--top", type=positive_int, default=5, help="hottest experts to list per layer (default: 5)")
    show.add_argument("--json", action="store_true", help="print the summary as JSON")
    plot = actions.add_parser("plot", help="PNG heatmaps: usage, REAP saliency, co-activation, transitions")
    plot.add_argument("file", metavar="FILE")
    plot.add_argument("-o", "--out", required=True, help="directory for the PNG files (they replace earlier plots of the same name)")
    plot.add_argument("--layer", type=int, help="decoder layer for the co-activation and transition maps (default: the middle MoE layer)")
    merge = actions.add_parser("merge", help="add up statistics of the same model (shards, domains, processes)")
    merge.add_argument("files", metavar="FILE", nargs="+")
    merge.add_argument("-o", "--out", required=True, help="merged statistics file to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it is a statistics file written by moe-compress")
    diff = actions.add_parser("diff", help="per-layer divergence between two domains' expert usage")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--json", action="store_true", help="print the comparison as JSON")
    for action, run in ((show, run_show), (plot, run_plot), (merge, run_merge), (diff, run_diff)):
        action.set_defaults(run=run)


def run_show(args) -> int:
    from ..stats import RoutingStats
    from ..stats.summary import render_summary, summarize

    stats = RoutingStats.load(args.file)
    summary = summarize(stats, args.cold_threshold, args.top)
    print(json.dumps(summary, indent=2) if args.json else render_summary(stats, summary, args.cold_threshold))
    return 0


def run_plot(args) -> int:
    from ..checkpoint.output import report_directory
    from ..display import layer_ranges
    from ..stats import RoutingStats
    from ..stats.plots import plot_stats

    stats = RoutingStats.load(args.file)
    if args.layer is not None and args.layer not in stats.layers:
        raise CompressError(f"layer {args.layer} is not a MoE layer of these statistics (MoE layers: {layer_ranges(stats.layer_indices)})")
    print("\n".join(str(path) for path in plot_stats(stats, report_directory(args.out), args.layer)))
    return 0


def run_merge(args) -> int:
    from ..checkpoint.output import claim_output
    from ..display import human_count
    from ..stats import RoutingStats, merge_all
    from ..stats.routing_stats import is_routing_stats_file

    with claim_output(args.out, kind="file", overwrite=args.overwrite, flag="-o", recognise=is_routing_stats_file,
                      what="statistics file") as claimed:
        merged = merge_all([RoutingStats.load(path) for path in args.files], names=args.files)
        with claimed.write() as staging:
            merged.save(staging)
    print(f"merged {len(args.files)} files: {human_count(merged.metadata['tokens'])} tokens of "
          f"{merged.metadata['domain']} → {claimed.path}")
    return 0


def run_diff(args) -> int:
    from ..stats import RoutingStats
    from ..stats.summary import divergence, render_divergence

    a, b = RoutingStats.load(args.a), RoutingStats.load(args.b)
    result = divergence(a, b)
    print(json.dumps(result, indent=2) if args.json else render_divergence(a, b, result))
    return 0
