"""The tiered-conversion job: teams of co-activating experts (TieredLightweightMoE), from a plan.

Like pruning: the options are checked against the source, the output is claimed before any
profiling, the plan (`recipes.tiered.TieredPlan`: teams, mixing weights, teams per token) is
written on its own with ``plan_only`` or applied, and the converted checkpoint is read back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError
from .calibration import settle
from .options import CalibrationOptions, OutputOptions, TieredOptions


@dataclass(frozen=True)
class TieredResult:
    plan: object  # `recipes.tiered.TieredPlan`
    clustering: str
    out: Path
    before: object  # `model_info.ModelInfo`
    after: object | None  # None for a plan-only run
    seconds: float

    def to_dict(self) -> dict:
        data = {"out": str(self.out), "teams": sum(len(t) for t in self.plan.teams.values()), "team_size": self.plan.team_size,
                "team_top_k": self.plan.team_top_k, "clustering": self.clustering, "seconds": round(self.seconds, 2)}
        if self.after is not None:
            data["parameters"] = {"before": self.before.parameters.total, "after": self.after.parameters.total,
                                  "active_after": self.after.parameters.active}
        return data

    def summary(self) -> str:
        from ..report import human_bytes, human_count

        plan = self.plan
        teams = (f"{sum(len(t) for t in plan.teams.values())} teams of {plan.team_size} ({self.clustering}), "
                 f"top-{plan.team_top_k} teams per token")
        if self.after is None:
            return f"plan: {teams} → {self.out}"
        b, a = self.before.parameters, self.after.parameters
        return (f"converted {self.before.name} to {teams}; parameters {human_count(b.total)} → {human_count(a.total)} "
                f"(active {human_count(a.active)}); {human_bytes(self.after.checkpoint_bytes)}; {self.seconds:.1f} s → {self.out}")


def recipe_settings(options: TieredOptions, source) -> dict:
    """The recipe (`recipes/tiered.yaml`, or `options.recipe`) with the options over it and the
    default tiers scaled to this model."""
    from ..recipes.tiered import default_recipe, load_recipe, scaled_tiers

    if options.recipe and not Path(options.recipe).is_file():
        raise CompressError(f"recipe {options.recipe} does not exist")
    settings = load_recipe(Path(options.recipe)) if options.recipe else default_recipe()
    for key in ("tiers", "team_size", "team_top_k", "clustering"):
        if getattr(options, key) is not None:
            settings[key] = getattr(options, key)
    if int(settings["team_size"]) < 1 or int(settings["team_top_k"]) < 1:
        raise CompressError("team_size and team_top_k must be at least 1")
    if options.tiers is None:
        settings["tiers"] = scaled_tiers(settings, source.moe_layers, source.num_experts, int(settings["team_size"]))
    settings.pop("designed_for", None)
    return settings


def convert_tiered(source, options: TieredOptions, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
                   stats=None, plan=None, plan_only: bool = False, command: str | None = None,
                   progress: bool = True) -> TieredResult:
    """The whole conversion job (see the module docstring); `plan_only` writes the plan to ``output.out``.
    `stats` and `plan` are files or the objects themselves (`RoutingStats`, `TieredPlan`)."""
    from ..checkpoint.output import claim_output
    from ..recipes.tiered import TieredPlan, check_tiers, design_teams, is_tiered_plan_file, parse_tiers
    from .profile import collect
    from .provenance import plan_provenance
    from .reduction import checked_statistics, plan_source

    start = time.perf_counter()
    if source.derived is not None:
        raise CompressError(f"{source.name} is already a moe-compress {source.derived.replace('_', '-')} model: "
                            "convert the stock model it came from")
    kind, what, recognise = ("file", "plan file", is_tiered_plan_file) if plan_only else ("directory", "converted model", None)
    with claim_output(output.out, kind=kind, overwrite=output.overwrite, sources=(source.path,), recognise=recognise,
                      what=what) as claimed:
        settings = recipe_settings(options, source)
        stats = checked_statistics(stats, source) if stats is not None else None
        if plan is not None:
            plan = plan if isinstance(plan, TieredPlan) else TieredPlan.load(plan)
            plan.check(source.moe_layers, source.experts_per_layer, source.fingerprint)
        else:
            tiers = parse_tiers(str(settings["tiers"]), source.moe_layers)
            sizes = (int(settings["team_size"]), int(settings["team_top_k"]), str(settings["clustering"]))
            check_tiers(tiers, source.experts_per_layer, *sizes)
            if stats is None:
                if calibration is None or calibration.domain is None:
                    raise CompressError("without --stats or --plan the model is profiled first: pass --domain "
                                        "(math, code, general or your own with --dataset)")
                _, stats, _ = collect(source, settle(calibration, source), progress=progress)
            plan = design_teams(stats, tiers, *sizes, source=plan_source(source),
                                provenance=plan_provenance(command, stats, clustering=sizes[2], recipe=settings))
        with claimed.write() as staging:
            after = None if plan_only else write(source, plan, staging, stats=stats, command=command, progress=progress,
                                                  max_shard_size=output.max_shard_size)
            if plan_only:
                plan.save(staging)
    clustering = plan.provenance.get("clustering", "plan")
    return TieredResult(plan, clustering, claimed.path, source.info, after, time.perf_counter() - start)


def write(source, plan, staging: Path, *, stats=None, command: str | None = None, progress: bool = True,
          max_shard_size: int | None = None):
    """Write the converted checkpoint of `plan` into `staging` with compress.json and its card."""
    from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
    from ..recipes.tiered import tiered_card, write_tiered_checkpoint
    from .provenance import source_record, write_provenance
    from .reduction import describe_written

    write_tiered_checkpoint(source, staging, plan, max_shard_size or DEFAULT_MAX_SHARD_BYTES, progress=progress)
    after = describe_written(staging)
    before = source.info.parameters
    write_provenance(staging, operation="convert tiered", source=source_record(source), command=command, stats=stats,
                     plan=plan.to_dict(), parameters={"before": before.__dict__, "after": after.parameters.__dict__},
                     card=tiered_card(source.name, plan, plan.provenance.get("clustering", "plan"), before.total, after.parameters))
    return after
