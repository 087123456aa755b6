"""Pruning as a method of the reduction driver (`jobs.reduce`): its checks, its plan (profiling
when needed) and its checkpoint writer.

``prune`` is what ``compress prune`` and ``compress.pruning(...)`` run; the result carries the
plan, the statistics and the before/after descriptions. `make_plan` and `write` are its two halves,
for notebooks that try several plans on one set of statistics.

A tiered source is pruned by whole teams: the statistics are summed over each team's members
(`select.team_statistics`) and ``keep`` counts teams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError
from ..families.derived import TIERED
from ..pruning.criteria import CRITERIA, score_criteria
from .calibration import settle
from .options import CalibrationOptions, OutputOptions, SelectionOptions
from .reduce import Method, reduce, register_method
from .reduction import (
    checked_statistics,
    compensation_record,
    compensation_text,
    describe_written,
    expert_format,
    keep_count,
    plan_source,
    result_record,
    team_sizes,
    units_per_layer,
    write_weights,
)


@dataclass(frozen=True)
class PruneResult:
    plan: object  # `pruning.PrunePlan`
    stats: object | None  # `stats.RoutingStats`
    out: Path
    before: object  # `model_info.ModelInfo`
    after: object | None  # None for a plan-only run
    seconds: float
    compensation: dict | None = None  # {layer: `merging.compensate.CompensationFit`} with --compensate

    def to_dict(self) -> dict:
        return result_record(self, criterion=self.plan.provenance.get("criterion"))

    def summary(self) -> str:
        from ..display import human_bytes, human_count

        plan = self.plan
        if self.after is None:
            return f"plan: keep {kept_text(plan)} (criterion {plan.provenance.get('criterion')}) → {self.out}"
        b, a = self.before.parameters, self.after.parameters
        note = (f"note: top-k lowered from {plan.source['top_k']} to {plan.top_k}: fewer experts are kept than were routed "
                "per token\n" if plan.top_k != plan.source["top_k"] else "")
        how = f"{plan.provenance.get('criterion')}{compensation_text(self.compensation)}"
        return (f"{note}kept {kept_text(plan)} ({how}); parameters {human_count(b.total)} → "
                f"{human_count(a.total)}, active {human_count(b.active)} → {human_count(a.active)}; "
                f"{human_bytes(self.after.checkpoint_bytes)} in {self.after.shards} shard{'s' if self.after.shards > 1 else ''}; "
                f"{self.seconds:.1f} s → {self.out}")


def kept_text(plan) -> str:
    counts, total = plan.experts_per_layer, plan.source["num_experts"]
    if plan.teams is not None:
        teams = {len(kept) for kept in plan.teams.values()}
        return f"{'-'.join(map(str, sorted(teams)))} whole teams ({min(counts.values())}-{max(counts.values())} experts) per layer"
    if plan.uniform:
        return f"{next(iter(counts.values()))} of {total} experts in each of {len(counts)} MoE layers"
    return f"{sum(counts.values())} of {total * len(counts)} experts ({min(counts.values())}-{max(counts.values())} per layer)"


# --- checking ------------------------------------------------------------------------------------
def protected(specs, source) -> dict[int, set[int]]:
    protect: dict[int, set[int]] = {}
    for spec in specs:
        layer_text, _, ids_text = spec.partition(":")
        try:
            layers = source.moe_layers if layer_text == "all" else [int(layer_text)]
            ids = {int(e) for e in ids_text.split(",")}
        except ValueError:
            raise CompressError(f"--protect {spec!r}: write LAYER:EXPERT[,EXPERT...] or all:EXPERT[,...], e.g. 3:5,7") from None
        for layer in layers:
            if layer not in source.moe_layers:
                raise CompressError(f"--protect {spec!r}: layer {layer} is not a MoE layer ({source.moe_layers})")
            count = units_per_layer(source)[layer]
            if any(not 0 <= e < count for e in ids):
                raise CompressError(f"--protect {spec!r}: {'team' if source.derived == TIERED else 'expert'} ids run from 0 to {count - 1}")
            protect.setdefault(layer, set()).update(ids)
    return protect


def _is_search(selection: SelectionOptions) -> bool:
    """Whether the criterion searches on calibration tokens (``reconstruct``) instead of scoring statistics."""
    return CRITERIA[selection.criterion].search is not None


def _needs_calibration(selection: SelectionOptions, stats) -> bool:
    return stats is None or _is_search(selection)


def check_request(source, selection: SelectionOptions, calibration: CalibrationOptions | None, stats):
    """Refuse option mistakes before any work; returns the calibration options settled for `source`
    (None when the plan needs no calibration text)."""
    protected(selection.protect, source)
    if team_sizes(source) is not None and _is_search(selection):
        raise CompressError(f"--criterion {selection.criterion} searches expert sets through the family's router, but a tiered model "
                            f"routes teams: choose a score criterion ({', '.join(score_criteria())})")
    if not _needs_calibration(selection, stats):
        return None
    if (calibration is None or calibration.domain is None) and stats is not None:
        raise CompressError(f"--criterion {selection.criterion} searches expert sets on calibration tokens, which --stats "
                            f"does not hold: pass --domain too, or choose a criterion the statistics score "
                            f"({', '.join(score_criteria())})")
    if calibration is None or calibration.domain is None:
        raise CompressError("without --stats or --plan the model is profiled first: pass --domain "
                            "(math, code, general or your own with --dataset)")
    return settle(calibration, source)


# --- the plan ------------------------------------------------------------------------------------
def make_plan(source, selection: SelectionOptions, keep: int | None = None, *, stats=None,
              calibration: CalibrationOptions | None = None, command: str | None = None, progress: bool = True):
    """(plan, statistics) for `source` keeping `keep` experts (or teams) per layer (default: from
    `selection`): profiles on `calibration` text when there are no statistics (or the criterion
    searches on calibration tokens, as ``reconstruct`` does). For notebooks that try several plans
    on one set of statistics; `compress prune` runs it through `jobs.reduce`, which has checked the
    request and counted `keep` already, and calls `plan_checked`."""
    stats = checked_statistics(stats, source) if stats is not None else None
    calibration = check_request(source, selection, calibration, stats)
    keep = keep_count(selection, source) if keep is None else keep
    return plan_checked(source, selection, keep, stats=stats, calibration=calibration, command=command, progress=progress)


def plan_checked(source, selection: SelectionOptions, keep: int, *, stats, calibration: CalibrationOptions | None,
                 command: str | None, progress: bool):
    """`make_plan` for a request `check_request` has passed, `keep` counted and `calibration` settled."""
    from ..pruning.plan import PrunePlan, team_plan_layers
    from ..pruning.select import select_experts, team_statistics
    from .profile import collect
    from .provenance import plan_provenance

    protect, sizes = protected(selection.protect, source), team_sizes(source)
    groups = source.family.routing_groups(source.config)
    if _needs_calibration(selection, stats):
        search = CRITERIA[selection.criterion].search
        request = search(keep, protect, groups, selection.budget, selection.min_per_layer) if search is not None else None
        _, profiled, searched = collect(source, calibration, search=request, statistics=stats is None, progress=progress)
        stats = stats or profiled
    if _is_search(selection):
        layers, teams = searched, None
    else:
        ranked = stats if sizes is None else team_statistics(stats, sizes)
        top_k = source.top_k if sizes is None else source.config.team_top_k
        chosen = select_experts(ranked, selection.criterion, keep, budget=selection.budget, top_k=top_k,
                                min_per_layer=selection.min_per_layer, protect=protect, groups=groups, seed=selection.seed)
        teams, layers = (None, chosen) if sizes is None else (chosen, team_plan_layers(chosen, sizes))
    if teams is None:
        top_k = min(source.top_k, min(len(kept) for kept in layers.values()))
    else:
        top_k = min(source.config.team_top_k, min(len(kept) for kept in teams.values())) * max(sizes.values())
    provenance = plan_provenance(command, stats, criterion=selection.criterion, budget=selection.budget, keep=keep,
                                 protect={str(layer): sorted(e) for layer, e in protect.items()},
                                 **({"seed": selection.seed} if selection.criterion == "random" else {}))
    plan = PrunePlan(plan_source(source), layers, top_k, provenance, teams)
    plan.check_model(source)
    return plan, stats


def load_plan(plan, source):
    """A plan (a file, or a `PrunePlan`), checked against `source`."""
    from ..pruning.plan import PrunePlan

    where = "the plan" if isinstance(plan, PrunePlan) else str(plan)
    plan = plan if isinstance(plan, PrunePlan) else PrunePlan.load(plan)
    plan.check_model(source)
    if (plan.teams is not None) != (source.derived == TIERED):
        raise CompressError(f"{where} is {'a team' if plan.teams is not None else 'an expert'} plan but {source.name} "
                            f"{'is' if source.derived == TIERED else 'is not'} a tiered model: make a new plan with --plan-only")
    plan.provenance.setdefault("criterion", "plan")
    return plan


# --- writing -------------------------------------------------------------------------------------
def write(source, plan, staging: Path, *, stats=None, fits: dict | None = None, command: str | None = None,
          progress: bool = True, max_shard_size: int | None = None):
    """Write the pruned checkpoint of `plan` (with the compensation `fits`, through the merge
    writer) into `staging` (a claimed output's staging directory), with its statistics,
    expert-usage picture, compress.json and card; returns its description."""
    from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
    from ..merging.card import compensation_section
    from ..merging.plan import from_prune_plan
    from ..pruning.apply import write_pruned_checkpoint
    from ..pruning.card import USAGE_PLOT, model_card
    from ..stats.plots import plot_pruning
    from .provenance import source_record, statistics_record, write_provenance

    if fits is None:
        write_pruned_checkpoint(source, staging, plan, max_shard_size or DEFAULT_MAX_SHARD_BYTES, progress=progress)
        after = describe_written(staging)
    else:
        after = write_weights(source, from_prune_plan(plan), staging, fits=fits, progress=progress, max_shard_size=max_shard_size)
    if stats is not None:
        plot_pruning(stats, plan.layers, staging / USAGE_PLOT)
    extra = {} if fits is None else {"compensation": compensation_record(fits), "expert_format": expert_format(source, False)}
    write_provenance(staging, operation="prune", source=source_record(source), command=command, stats=stats,
                     plan=plan.to_dict(), card=model_card(plan, source.info, after, statistics_record(stats)) + compensation_section(fits),
                     parameters={"before": source.info.parameters.__dict__, "after": after.parameters.__dict__}, **extra)
    return after


class PruneMethod(Method):
    name, model_what, plan_what = "prune", "pruned model", "plan file"
    plan_format = "moe-compress prune plan"

    def check(self, source, selection, keep, calibration, stats, plan):
        return None if plan is not None else check_request(source, selection, calibration, stats)

    def load_plan(self, plan, source):
        return load_plan(plan, source)

    def make_plan(self, source, selection, keep, *, stats, calibration, command, progress, spill=None):
        return plan_checked(source, selection, keep, stats=stats, calibration=calibration, command=command, progress=progress)

    def compensation_plan(self, plan):
        from ..merging.plan import from_prune_plan

        return from_prune_plan(plan)

    def write(self, source, plan, staging, selection, *, stats, fits, command, progress, max_shard_size):
        return write(source, plan, staging, stats=stats, fits=fits, command=command, progress=progress, max_shard_size=max_shard_size)

    def result(self, plan, stats, fits, out, before, after, seconds):
        return PruneResult(plan, stats, out, before, after, seconds, fits)


PRUNE = register_method(PruneMethod())


def prune(source, selection: SelectionOptions, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
          stats=None, plan=None, plan_only: bool = False, command: str | None = None, progress: bool = True):
    """The whole pruning job (`jobs.reduce.reduce` with `PRUNE`); `plan_only` writes the plan to
    ``output.out``. `stats` and `plan` are files (from `compress profile` / ``--plan-only``) or the
    objects themselves. Several sizes (``keep`` or ``keep_ratio`` a tuple) write a size frontier
    (`jobs.frontier`) and return a `FrontierResult`."""
    return reduce(PRUNE, source, selection, output, calibration=calibration, stats=stats, plan=plan, plan_only=plan_only,
                  command=command, progress=progress)
