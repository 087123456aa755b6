"""Options of the jobs, declared once as frozen dataclasses; the command line's flags are generated
from them (in the manner of mergekit's ``MergeOptions``), and Python callers pass the same
dataclasses.

Every field carries its help text and, for the command line, its value type (which refuses
nonsense while parsing, so a bad number fails in a second, before any model is loaded). Nothing
here imports torch or transformers: ``compress --help`` stays instant.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
from ..errors import CompressError
from ..merging import (
    ALIGNMENTS,
    DEFAULT_ALIGNMENT,
    DEFAULT_GROUPING,
    DEFAULT_MERGE_METHOD,
    DEFAULT_MERGE_WEIGHTS,
    DEFAULT_ROUTER_ROWS,
    MERGE_METHODS,
    MERGE_WEIGHTS,
    ROUTER_ROWS,
)
from ..merging.groupings import GROUPINGS
from ..model_loading import DEVICES, DTYPE_HELP, DTYPES
from ..pruning import BUDGETS, DEFAULT_CRITERION
from ..pruning.criteria import CRITERIA

MODEL_HELP = "local directory, Hub id (OWNER/NAME) or `demo`"


# --- value types ---------------------------------------------------------------------------------
def _number(kind, text: str, low: float | None, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if low is not None and (value < low if inclusive else value <= low):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, 1, True, "at least 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, 0, True, "0 or more")


def positive_float(text: str) -> float:
    return _number(float, text, 0.0, False, "greater than 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, 0.0, True, "0 or more")


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _list_of(parse, text: str):
    """One value, or a tuple of them from ``A,B,C`` (a size frontier)."""
    values = tuple(parse(part.strip()) for part in text.split(","))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
    return values[0] if len(values) == 1 else values


def keep_counts(text: str):
    """``8`` or ``4,8,12``."""
    return _list_of(positive_int, text)


def keep_ratios(text: str):
    """``0.5`` or ``0.25,0.5,0.75``."""
    return _list_of(fraction, text)


def option(help: str, default=None, *, type=None, choices=None, flag: str | None = None, short: str | None = None,
           action: str | None = None, metavar: str | None = None, group: str | None = None, required: bool = False,
           nargs: str | None = None):
    """A dataclass field that is also a command-line flag (``--field-name`` unless `flag` says otherwise)."""
    metadata = {"help": help, "type": type, "choices": choices, "flag": flag, "short": short, "action": action,
                "metavar": metavar, "group": group, "required": required, "nargs": nargs}
    if action == "append":
        return field(default=(), metadata=metadata)
    return field(default=default if action != "store_true" else False, metadata=metadata)


# --- the options ---------------------------------------------------------------------------------
COMPENSATE_HELP = ("refit each remaining expert's down projection by least squares on calibration tokens so each reduced "
                   "layer's output stays close to the full layer's; closed form, no training (MXFP4 down projections "
                   "are re-quantised)")


@dataclass(frozen=True)
class CalibrationOptions:
    """Where calibration text comes from, how it is cut into windows, where the model runs."""

    domain: str | None = option("calibration domain: math, code, general built in; any name with --dataset; or a mixture "
                                "of domains with weights, e.g. math:0.8,general:0.2")
    dataset: str | None = option("calibration text: a .txt/.jsonl/.parquet file, a Hub dataset id, or `preset` for the "
                                 "domain's Hub dataset (default: the built-in corpus of --domain)", metavar="PATH_OR_HUB_ID")
    text_field: str | None = option("record field(s) holding the text, comma-separated (default: text)")
    split: str = option("Hub dataset split", "train")
    samples: int | None = option("windows of --seq-len tokens (default: 128, or as many as the data holds)", type=positive_int)
    seq_len: int | None = option("tokens per window (default: 512, or the model's positions when fewer)", type=positive_int)
    skip_samples: int = option("windows to skip first, to profile a later shard", 0, type=non_negative_int)
    batch_size: int = option("windows per forward pass", 8, type=positive_int)
    device: str = option("where calibration computes; auto: the GPU when present (one decoder layer or expert group "
                         "onloaded at a time; under torchrun each rank's own GPU), else CPU", "auto", choices=DEVICES)
    dtype: str = option(DTYPE_HELP, "auto", choices=DTYPES)
    experts_per_group: int | None = option("experts read from the checkpoint at a time while calibrating layer by layer "
                                           "(default: as many as fit in 512 MiB in the compute dtype; fewer use less memory)",
                                           type=positive_int)


@dataclass(frozen=True)
class OutputOptions:
    """Where a derived checkpoint goes."""

    out: str = option("output directory (it appears only when complete)", required=True)
    overwrite: bool = option("replace --out if it is an earlier moe-compress output (other directories are never replaced)",
                             action="store_true")
    max_shard_size: int = option("largest output shard (5 GiB)", DEFAULT_MAX_SHARD_BYTES, type=positive_int, metavar="BYTES")


@dataclass(frozen=True)
class SelectionOptions:
    """Which experts a prune keeps."""

    keep: int | tuple | None = option("experts to keep per MoE layer (on average, with --budget global); several, e.g. 4,8,12, "
                                      "write a size frontier: OUT/keep4, OUT/keep8, ... from one profile",
                                      type=keep_counts, group="keep")
    keep_ratio: float | tuple | None = option("share of each layer's experts to keep, in (0, 1], e.g. 0.5 (or 0.25,0.5,0.75)",
                                              type=keep_ratios, group="keep")
    criterion: str = option("how experts are ranked (see below)", DEFAULT_CRITERION, choices=CRITERIA)
    budget: str = option("uniform: the same count per layer; global: rank across layers", "uniform", choices=BUDGETS)
    min_per_layer: int | None = option("with --budget global: fewest experts any layer keeps (default and minimum: top-k)",
                                       type=positive_int)
    protect: tuple[str, ...] = option("always keep these experts, e.g. 3:5,7 (layer 3) or all:0 (every layer); repeatable",
                                      action="append", metavar="LAYER:EXPERTS")
    seed: int = option("seed of the random criterion", 0, type=int)
    compensate: bool = option(COMPENSATE_HELP, action="store_true")


@dataclass(frozen=True)
class MergeOptions:
    """How a merge groups experts (`compress merge`)."""

    keep: int | tuple | None = option("new experts per MoE layer (each merges a group of the originals); several, e.g. 4,8,12, "
                                      "write a size frontier: OUT/keep4, OUT/keep8, ...", type=keep_counts, group="keep")
    keep_ratio: float | tuple | None = option("share of each layer's experts to keep, in (0, 1], e.g. 0.5 (or 0.25,0.5,0.75)",
                                              type=keep_ratios, group="keep")
    grouping: str = option("how experts are grouped (see below)", DEFAULT_GROUPING, choices=GROUPINGS)
    merge_weights: str = option("each member's weight in its group, and the order that makes the first its dominant one: its "
                                "frequency, gate mass or REAP saliency (mean gate × output norm) on the calibration sample",
                                DEFAULT_MERGE_WEIGHTS, choices=MERGE_WEIGHTS)
    router: str = option("router row of a new expert: its most used member's (dominant), the weighted sum of its members' "
                         "(weighted), or fitted in closed form on every calibration token so it is chosen where its members "
                         "were (fitted)",
                         DEFAULT_ROUTER_ROWS, choices=ROUTER_ROWS)
    align: str = option("before averaging, permute each member's intermediate neurons to match its group's dominant expert: "
                        "none, weights (Hungarian matching of their weights) or activations (of their activations on the "
                        "calibration sample; stored in the plan)", DEFAULT_ALIGNMENT, choices=ALIGNMENTS)
    merge_method: str = option("how a group's (aligned) members become one: average (weighted by --merge-weights) or ties "
                               "(the dominant expert plus the TIES merge of the others' largest differences from it)",
                               DEFAULT_MERGE_METHOD, choices=MERGE_METHODS)
    compensate: bool = option(COMPENSATE_HELP, action="store_true")
    dequantize: bool = option("MXFP4 sources: write every expert in bf16 instead of re-quantising merged experts to MXFP4",
                              action="store_true")


@dataclass(frozen=True)
class TieredOptions:
    """How a tiered conversion groups experts into teams (unset fields come from the recipe)."""

    recipe: str | None = option("YAML with tiers / team_size / team_top_k / clustering (default: recipes/tiered.yaml)")
    tiers: str | None = option('decoder-layer ranges and teams per layer, e.g. "0-7:4,8-17:8,18-23:6" '
                               "(default: the recipe's, scaled to the model)")
    team_size: int | None = option("experts per team", type=positive_int)
    team_top_k: int | None = option("teams per token", type=positive_int)
    clustering: str | None = option("how teams are formed", choices=("greedy", "agglomerative"))


@dataclass(frozen=True)
class EvaluationOptions:
    """What to evaluate and how, beyond the measurement settings (`evals.evaluate.EvalSettings`)."""

    tasks: str = option("comma-separated task names (see below)", required=True)
    device: str = option("auto: GPU(s) when present, else CPU", "auto", choices=DEVICES)
    no_cache: bool = option("recompute even when cached results exist", action="store_true")


@dataclass(frozen=True)
class DistillSettings:
    """The training run (also the flags of `compress distill`; the batch size is the calibration options')."""

    steps: int = option("optimizer steps", type=positive_int, required=True)
    lr: float = option("AdamW learning rate", 1e-4, type=positive_float)
    batch_size: int = 8
    grad_accum: int = option("micro-batches per optimizer step", 1, type=positive_int)
    temperature: float = option("distillation temperature T", 2.0, type=positive_float)
    hidden_weight: float = option("weight of the hidden-state MSE", 0.1, type=non_negative_float)
    hidden_layers: str = option("aligned layers for the MSE: all, none or e.g. 2,5", "all")
    save_every: int = option("checkpoint every N steps, for --resume (default: end only)", 0, type=non_negative_int)
    seed: int = option("seed of the data order and initialisation", 0, type=int)


@dataclass(frozen=True)
class AnalysisOptions:
    """The inputs of `compress analyze` (each analysis reads the ones it needs: `analyze.run.REQUIRED`)."""

    model: str | None = option(MODEL_HELP)
    stats: tuple[str, ...] = option("routing statistics file(s)", action="append")
    domain: str | None = option("evaluation text: held-out split of a built-in domain (math, code, general)")
    windows: int = option("windows of --seq-len tokens of --domain text", 32, type=positive_int)
    seq_len: int = option("tokens per window", 128, type=positive_int)
    prompt: str | None = option("text for trace / dynamics / force")
    max_new_tokens: int = option("tokens to generate", 32, type=positive_int)
    experts: str | None = option('experts to ablate, "LAYER:E[,E];LAYER:E" or "E" for every layer')
    expert: str | None = option("expert to force: LAYER:E or E (every layer)")
    k: str = option("top-k values for topk", "1,2,4,8")
    layer: int | None = option("layer for similarity (default: the first MoE layer)", type=int)
    threshold: float | None = option("similarity threshold (default 0.9) / specialist share (default 2/domains, at most 0.9)",
                                     type=positive_float)
    probe_layer: int = option("decoder layer whose output the probe reads", 0, type=non_negative_int)
    token: str | None = option("the token for context")
    contexts: tuple[str, ...] | None = option("texts containing --token", nargs="+")
    dtype: str = option("compute dtype", "float32", choices=DTYPES)


# --- the command line ----------------------------------------------------------------------------
def add_options(parser, cls, *, exclude: tuple = (), required: tuple = (), helps: dict | None = None,
                defaults: dict | None = None) -> None:
    """Add one flag per field of `cls` to `parser` (an `ArgumentParser` or an argument group);
    `required`, `helps` and `defaults` adjust fields for one command."""
    helps, defaults = helps or {}, defaults or {}
    groups: dict[str, object] = {}
    for f in fields(cls):
        if f.name in exclude or "help" not in f.metadata:  # fields without help are not flags
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        help_text = helps.get(f.name, meta["help"])
        if default not in (None, False, ()) and "(default" not in help_text:
            help_text += f" (default: {default})"
        kwargs = {"dest": f.name, "help": help_text, "action": _RECORDED[meta["action"] or "store"]}
        if meta["action"] in ("store_true", "append"):
            kwargs["default"] = [] if meta["action"] == "append" else False
        else:
            kwargs.update(default=default, type=meta["type"], choices=meta["choices"])
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["nargs"]:
            kwargs["nargs"] = meta["nargs"]
        if meta["required"] or f.name in required:
            kwargs["required"] = True
        target = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        flags = [meta["flag"] or "--" + f.name.replace("_", "-")] + ([meta["short"]] if meta["short"] else [])
        target.add_argument(*flags, **kwargs)


def _recording(action: type) -> type:
    """`action` that also notes, on the namespace, that its flag was given (see `refuse_with_plan`)."""
    class Recorded(action):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.__dict__.setdefault("given_flags", {})[self.dest] = option_string

    return Recorded


_RECORDED = {"store": _recording(argparse._StoreAction), "store_true": _recording(argparse._StoreTrueAction),
             "append": _recording(argparse._AppendAction)}


def refuse_with_plan(args, decided: tuple[str, ...]) -> None:
    """Refuse the flags (named on the command line, even with their default value) whose choice a
    ``--plan`` file already holds: a plan is applied as written."""
    if getattr(args, "plan", None) is None:
        return
    named = [flag for field_name, flag in getattr(args, "given_flags", {}).items() if field_name in decided]
    if named:
        raise CompressError(f"{' and '.join(named)} {'is' if len(named) == 1 else 'are'} decided by the plan: with --plan "
                            f"{args.plan}, drop {'it' if len(named) == 1 else 'them'} (or make a new plan with --plan-only)")


def add_plan_and_output_options(parser, plan_help: str, plan_name: str = "plan") -> None:
    """The flags of every command that makes a plan and writes a checkpoint (prune, merge, convert):
    --plan (`plan_help`), --plan-only, the output options, --quiet and --json."""
    parser.add_argument("--plan", help=plan_help)
    parser.add_argument("--plan-only", action="store_true", help=f"write the {plan_name} JSON to --out and stop")
    add_options(parser, OutputOptions, helps={"out": "output directory (with --plan-only: the plan file)"})
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result summary as JSON")


def options_from(cls, args, **overrides):
    """The `cls` options from parsed arguments (fields the command did not declare keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    for f in fields(cls):
        if (f.metadata.get("action") == "append" or f.metadata.get("nargs")) and values.get(f.name) is not None:
            values[f.name] = tuple(values[f.name])
    return cls(**{**values, **overrides})
