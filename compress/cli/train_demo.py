"""`compress train-demo`: rebuild the demo model from its recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..jobs.options import positive_int

EPILOG = """examples:
  compress train-demo --out out/demo_model                  (about 35 minutes on 2 CPU cores)
  compress train-demo --out out/demo_model --steps 200      (a quick, weaker model)
  compress train-demo --out compress/demo_model --report-only   (re-evaluate an existing one)
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-demo",
        help="train the demo MoE (gpt-oss architecture) on the built-in corpus",
        description="Train the small gpt-oss-architecture demo model from recipes/demo_model.yaml "
        "and write it with its training report and model card.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--recipe", type=Path, help="recipe YAML (default: the packaged demo_model.yaml)")
    parser.add_argument("--steps", type=positive_int, help="override the recipe's training steps")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier moe-compress output")
    parser.add_argument("--report-only", action="store_true", help="only re-evaluate the checkpoint in --out and rewrite its report")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..errors import CompressError
    from ..recipes import demo_model

    if args.recipe is not None and not args.recipe.is_file():
        raise CompressError(f"recipe {args.recipe} does not exist")
    if args.report_only:
        if not (args.out / "training.json").is_file():
            raise CompressError(f"--report-only: {args.out} holds no training.json; train a demo model there first")
        report = demo_model.write_report(args.out)
    else:
        recipe = demo_model.load_recipe(args.recipe)
        if args.steps:
            recipe["training"]["steps"] = args.steps
        report = demo_model.train(recipe, args.out, overwrite=args.overwrite)
    ppl = ", ".join(f"{domain} {value}" for domain, value in report["heldout_perplexity"].items())
    print(f"demo model in {args.out}: {report['steps']} steps; held-out perplexity {ppl}")
    return 0
