"""Merging as a method of the reduction driver (`jobs.reduce`): its checks, its merge plan
(calibrating) and its checkpoint writer; compensation (`jobs.reduction.compensation`) is shared
with pruning (``compress prune --compensate``).

Grouping and compensation are per-layer searches of the layer-wise engine (`layerwise.calibrate`):
the grouping, on the calibration windows' sample, also collects the routing statistics (for the
card and the usage picture), and as that pass runs every calibration window it also fits each
layer's router rows (``--router fitted``) and compensation once the layer is grouped
(`merging.requests.MergeRequest`). A plan grouped on given statistics (a frontier's later sizes)
or given by hand gets them from a second pass over every calibration window, with the plan fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError
from ..families.derived import TIERED
from .calibration import settle
from .options import CalibrationOptions, MergeOptions, OutputOptions
from .reduce import Method, reduce, register_method
from .reduction import (
    compensation_record,
    compensation_text,
    expert_format,
    plan_source,
    result_record,
    write_weights,
)


@dataclass(frozen=True)
class MergeResult:
    plan: object  # `merging.MergePlan`
    stats: object | None
    compensation: dict | None  # {layer: `merging.compensate.CompensationFit`}
    out: Path
    before: object
    after: object | None  # None for a plan-only run
    seconds: float

    def to_dict(self) -> dict:
        return result_record(self, grouping=self.plan.provenance.get("grouping"))

    def summary(self) -> str:
        from ..display import human_bytes, human_count

        plan = self.plan
        counts = plan.experts_per_layer
        merged = (f"{next(iter(counts.values()))} of {plan.source['num_experts']} experts" if plan.uniform
                  else f"{sum(counts.values())} experts")
        how = plan.provenance.get("grouping", "plan")
        if self.after is None:
            return f"plan: merge into {merged} per layer ({how}) → {self.out}"
        b, a = self.before.parameters, self.after.parameters
        return (f"merged into {merged} in each of {len(counts)} MoE layers ({how}){compensation_text(self.compensation)}; "
                f"parameters {human_count(b.total)} → {human_count(a.total)}, active {human_count(b.active)} → "
                f"{human_count(a.active)}; {human_bytes(self.after.checkpoint_bytes)}; {self.seconds:.1f} s → {self.out}")


# --- checking ------------------------------------------------------------------------------------
def check_request(source, options: MergeOptions, keep: int | None, calibration: CalibrationOptions | None) -> CalibrationOptions | None:
    """Refuse option mistakes before any work; the calibration settled for `source` (None when none
    is needed: a plan file, `keep` None, without compensation)."""
    if source.derived == TIERED:
        raise CompressError(f"{source.name} is a tiered model: merging works on plain experts (prune its teams with `compress prune`)")
    if options.dequantize and source.layout.name != "mxfp4":
        raise CompressError("--dequantize writes an MXFP4 source's experts in bf16; this model's experts are not MXFP4")
    plan = keep is None
    if not plan:
        groups = source.family.routing_groups(source.config)
        if keep % groups or keep // groups < (2 if groups > 1 else 1):
            raise CompressError(f"--keep {keep} does not split evenly into this model's {groups} routing groups with at least 2 each")
    if plan and not options.compensate:
        return None
    if calibration is None or calibration.domain is None:
        raise CompressError("merging groups experts on calibration tokens (and compensation fits on them): pass --domain "
                            "(math, code, general or your own with --dataset)")
    return settle(calibration, source)


# --- the plan ------------------------------------------------------------------------------------
def make_plan(source, options: MergeOptions, keep: int, calibration: CalibrationOptions, *, stats=None, command: str | None = None,
              progress: bool = True, spill: Path | None = None):
    """(merge plan, statistics) of `source` into `keep` experts per layer, grouped on settled
    `calibration` text (profiled on the same pass, unless `stats` are given: then only the sample
    windows run). When that pass runs every window it also fits the plan's router rows and
    compensation (`MergePlan.fits`, spilled into `spill`)."""
    from ..merging.plan import MergePlan
    from ..merging.requests import CompensationRequest, MergeRequest
    from .profile import collect
    from .provenance import plan_provenance
    from .reduction import spill_dtype

    def plan_of(answers: dict, provenance: dict | None = None, fits: dict | None = None) -> MergePlan:
        return MergePlan(plan_source(source), {layer: groups for layer, (groups, _, _) in answers.items()},
                         {layer: weights for layer, (_, weights, _) in answers.items()}, min(source.top_k, keep), options.router,
                         provenance or {}, options.align,
                         {layer: found for layer, (_, _, found) in answers.items() if found is not None}, options.merge_method,
                         fits or {})

    # the router rows and compensation are fitted in this pass when it runs every window (not on given statistics)
    refit = None
    if stats is None and (options.router == "fitted" or options.compensate):
        dtype = spill_dtype(source)

        def refit(layer: int, answer) -> CompensationRequest:
            return CompensationRequest(plan_of({layer: answer}), spill, dtype, options.compensate)

    request = MergeRequest(keep, options.grouping, options.merge_weights, source.family.routing_groups(source.config), options.align,
                           refit)
    _, profiled, answers = collect(source, calibration, search=request, statistics=stats is None, progress=progress)
    stats = stats or profiled
    provenance = plan_provenance(command, stats, grouping=options.grouping, merge_weights=options.merge_weights, keep=keep)
    plan = plan_of(answers, provenance, request.fits)
    plan.check_model(source)
    return plan, stats


def load_plan(plan, source):
    """A merge plan (a file, or a `MergePlan`), checked against `source`."""
    from ..merging.plan import MergePlan

    plan = plan if isinstance(plan, MergePlan) else MergePlan.load(plan)
    plan.check_model(source)
    plan.provenance.setdefault("grouping", "plan")
    return plan


# --- writing -------------------------------------------------------------------------------------
def write(source, plan, staging: Path, *, stats=None, fits: dict | None = None, dequantize: bool = False,
          command: str | None = None, progress: bool = True, max_shard_size: int | None = None):
    """Write the checkpoint of merge plan `plan` (with compensation `fits`) into `staging`, with its
    statistics, usage picture, compress.json and card; returns its description."""
    from ..merging.card import merge_card
    from ..pruning.card import USAGE_PLOT
    from ..stats.plots import plot_pruning
    from .provenance import source_record, statistics_record, write_provenance

    after = write_weights(source, plan, staging, fits=fits, dequantize=dequantize, progress=progress,
                          max_shard_size=max_shard_size)
    if stats is not None:
        plot_pruning(stats, {layer: [group[0] for group in groups] for layer, groups in plan.layers.items()}, staging / USAGE_PLOT)
    experts = expert_format(source, dequantize)
    write_provenance(staging, operation="merge", source=source_record(source), command=command, stats=stats,
                     plan=plan.to_dict(), compensation=compensation_record(fits), expert_format=experts,
                     card=merge_card(plan, source.info, after, statistics_record(stats), fits, experts),
                     parameters={"before": source.info.parameters.__dict__, "after": after.parameters.__dict__})
    return after


class MergeMethod(Method):
    name, model_what, plan_what = "merge", "merged model", "merge plan file"
    plan_format = "moe-compress merge plan"

    def check(self, source, options, keep, calibration, stats, plan):
        return check_request(source, options, keep, calibration)

    def load_plan(self, plan, source):
        return load_plan(plan, source)

    def make_plan(self, source, options, keep, *, stats, calibration, command, progress, spill=None):
        return make_plan(source, options, keep, calibration, stats=stats, command=command, progress=progress, spill=spill)

    def compensation_plan(self, plan):
        return plan

    def fits_router(self, options, plan) -> bool:
        return (plan.router if plan is not None else options.router) == "fitted"

    def planned_fits(self, plan):
        return plan.fits or None

    def write(self, source, plan, staging, options, *, stats, fits, command, progress, max_shard_size):
        return write(source, plan, staging, stats=stats, fits=fits, dequantize=options.dequantize, command=command,
                     progress=progress, max_shard_size=max_shard_size)

    def result(self, plan, stats, fits, out, before, after, seconds):
        return MergeResult(plan, stats, fits, out, before, after, seconds)


MERGE = register_method(MergeMethod())


def merge(source, options: MergeOptions, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
          plan=None, plan_only: bool = False, command: str | None = None, progress: bool = True):
    """The whole merging job (`jobs.reduce.reduce` with `MERGE`); `plan_only` writes the plan to
    ``output.out``. Several sizes write a size frontier (`jobs.frontier`) and return a `FrontierResult`."""
    return reduce(MERGE, source, options, output, calibration=calibration, plan=plan, plan_only=plan_only, command=command,
                  progress=progress)
