"""`compress analyze NAME`: the research notes' routing instruments, on any supported model."""

from __future__ import annotations

import argparse
import contextlib
import json

from ..jobs.options import AnalysisOptions, add_options, options_from

EXAMPLES = """
examples:
  compress analyze trace --model demo --prompt "Q: What is 12 + 7?"
  compress analyze ablate --model demo --experts "3:5,7" --domain math
  compress analyze topk --model demo --k 1,2,4,8 --domain math
  compress analyze circuits --stats math.safetensors --json circuits.json
  compress analyze specialists --stats math.safetensors --stats code.safetensors --stats general.safetensors
"""


def add_parser(subparsers) -> None:
    from ..analyze.run import ANALYSES

    epilog = "analyses:\n" + "\n".join(f"  {name:<12} {text}" for name, text in ANALYSES.items()) + "\n" + EXAMPLES
    parser = subparsers.add_parser("analyze", help="routing analyses: trace, ablate, topk, circuits, specialists, ...",
                                   description="Routing analyses from the research notes, on your model.",
                                   epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="the analysis (listed below)")
    add_options(parser, AnalysisOptions)
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..analyze.run import render, run_analysis
    from ..checkpoint.output import claim_output

    claim = claim_output(args.json, kind="report", flag="--json", what="results file") if args.json else contextlib.nullcontext()
    with claim as claimed:
        result = run_analysis(args.name, options_from(AnalysisOptions, args), progress=not args.quiet)
        if claimed is not None:
            with claimed.write() as staging:
                staging.write_text(json.dumps(result, indent=2) + "\n")
    print(render(args.name, result))
    return 0
