"""The pruning job: check the request, make the plan (profiling when needed), write the checkpoint.

``prune`` is what ``compress prune`` and ``compress.pruning(...)`` run: every option is checked
against the opened source before any work, the output is claimed before profiling starts, and the
result carries the plan, the statistics and the before/after descriptions. `make_plan` and
`write` are its two halves, for notebooks that try several plans on one set of statistics.

A tiered source is pruned by whole teams: the statistics are summed over each team's members
(`select.team_statistics`) and ``keep`` counts teams.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError
from ..families.derived import TIERED
from ..pruning.criteria import CRITERIA, score_criteria
from .calibration import settle
from .options import CalibrationOptions, OutputOptions, SelectionOptions
from .reduction import (
    checked_statistics,
    compensation,
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
        from ..report import human_bytes, human_count

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
    keep_count(selection, source)
    protected(selection.protect, source)
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
def make_plan(source, selection: SelectionOptions, *, stats=None, calibration: CalibrationOptions | None = None,
              command: str | None = None, progress: bool = True):
    """(plan, statistics) for `source`: profiles on `calibration` text when there are no statistics
    (or the criterion is ``reconstruct``, which searches on calibration tokens)."""
    from ..pruning.plan import PrunePlan, team_plan_layers
    from ..pruning.select import select_experts, team_statistics
    from .profile import collect
    from .provenance import plan_provenance

    stats = checked_statistics(stats, source) if stats is not None else None
    calibration = check_request(source, selection, calibration, stats)
    keep, protect, sizes = keep_count(selection, source), protected(selection.protect, source), team_sizes(source)
    groups = source.family.routing_groups(source.config)
    if sizes is not None and _is_search(selection):
        raise CompressError(f"--criterion {selection.criterion} searches expert sets through the family's router, but a tiered model "
                            f"routes teams: choose a score criterion ({', '.join(score_criteria())})")
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


def prune(source, selection: SelectionOptions, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
          stats=None, plan=None, plan_only: bool = False, command: str | None = None, progress: bool = True):
    """The whole pruning job (see the module docstring); `plan_only` writes the plan to ``output.out``.
    `stats` and `plan` are files (from `compress profile` / ``--plan-only``) or the objects themselves.
    Several sizes (``keep`` or ``keep_ratio`` a tuple) write a size frontier (`jobs.frontier`) and
    return a `FrontierResult`."""
    from ..checkpoint.output import claim_output
    from ..pruning.plan import is_plan_file
    from .frontier import FrontierResult, sizes, write_index

    several = sizes(selection, source)
    if several is not None and (plan is not None or plan_only):
        raise CompressError("a size frontier (several --keep or --keep-ratio values) makes one plan per size: drop --plan / --plan-only")
    fit_calibration = check_compensation(source, selection, calibration, plan_only)
    kind, what, recognise = ("file", "plan file", is_plan_file) if plan_only else ("directory", "pruned model", None)
    with claim_output(output.out, kind=kind, overwrite=output.overwrite, sources=(source.path,), recognise=recognise,
                      what=what) as claimed, (claimed.scratch() if fit_calibration else contextlib.nullcontext()) as spill:
        stats = checked_statistics(stats, source) if stats is not None else None
        if plan is not None:
            plan = load_plan(plan, source)
        with claimed.write() as staging:
            if several is None:
                return _prune_one(source, selection, output, staging, claimed.path, stats=stats, plan=plan, plan_only=plan_only,
                                  calibration=calibration, fit_calibration=fit_calibration, spill=spill, command=command,
                                  progress=progress)
            results = []
            for each in several:
                name = f"keep{keep_count(each, source)}"
                (staging / name).mkdir()
                results.append(_prune_one(source, each, output, staging / name, claimed.path / name, stats=stats,
                                          calibration=calibration, fit_calibration=fit_calibration, spill=spill,
                                          command=command, progress=progress))
                stats = results[-1].stats
            write_index(staging, "prune", source, command, [result.out.name for result in results])
    return FrontierResult(claimed.path, results)


def _prune_one(source, selection: SelectionOptions, output: OutputOptions, staging: Path, out: Path, *, stats=None, plan=None,
               plan_only: bool = False, calibration=None, fit_calibration=None, spill: Path | None, command: str | None = None,
               progress: bool = True) -> PruneResult:
    """One size: the plan (unless given), its compensation, and the checkpoint (or plan file) in `staging`."""
    start = time.perf_counter()
    if plan is None:
        plan, stats = make_plan(source, selection, stats=stats, calibration=calibration, command=command, progress=progress)
    if plan_only:
        plan.save(staging)
        return PruneResult(plan, stats, out, source.info, None, time.perf_counter() - start)
    fits = None
    if fit_calibration is not None:
        from ..merging.plan import from_prune_plan

        fits = compensation(source, from_prune_plan(plan), fit_calibration, spill, progress=progress)
    after = write(source, plan, staging, stats=stats, fits=fits, command=command, progress=progress,
                  max_shard_size=output.max_shard_size)
    return PruneResult(plan, stats, out, source.info, after, time.perf_counter() - start, fits)


def check_compensation(source, selection: SelectionOptions, calibration: CalibrationOptions | None, plan_only: bool):
    """The settled calibration `--compensate` fits on (None without it), refused before any work when it cannot run."""
    if not selection.compensate:
        return None
    if plan_only:
        raise CompressError("--compensate is fitted while the checkpoint is written: drop --plan-only, or apply the plan "
                            "later with --plan PLAN --compensate")
    if source.derived == TIERED:
        raise CompressError("--compensate refits experts of plain MoE layers; a tiered model is pruned by whole teams without it")
    if calibration is None or calibration.domain is None:
        raise CompressError("--compensate fits on calibration text: pass --domain (math, code, general or your own with --dataset)")
    return settle(calibration, source)
