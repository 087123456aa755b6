"""Tiered conversion as a method of the reduction driver (`jobs.reduce`): teams of co-activating
experts (TieredLightweightMoE). One size (no ``--keep``) and no compensation; the plan
(`tiering.plan.TieredPlan`: teams, mixing weights, teams per token) is written on its own with
``plan_only`` or applied, and the converted checkpoint is read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError
from .calibration import settle
from .options import CalibrationOptions, OutputOptions, TieredOptions
from .reduce import Method, reduce, register_method


@dataclass(frozen=True)
class TieredResult:
    plan: object  # `tiering.plan.TieredPlan`
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
        from ..display import human_bytes, human_count

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
    from ..tiering.recipe import default_recipe, load_recipe, scaled_tiers

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


def check_request(source, options: TieredOptions, calibration: CalibrationOptions | None, stats, plan) -> CalibrationOptions | None:
    """Refuse option mistakes before any work; the calibration settled for profiling (None with
    statistics or a plan)."""
    from ..tiering.recipe import parse_tiers
    from ..tiering.teams import check_tiers

    if source.derived is not None:
        raise CompressError(f"{source.name} is already a moe-compress {source.derived.replace('_', '-')} model: "
                            "convert the stock model it came from")
    if plan is not None:
        return None
    settings = recipe_settings(options, source)
    check_tiers(parse_tiers(str(settings["tiers"]), source.moe_layers), source.experts_per_layer, *_team_settings(settings))
    if stats is not None:
        return None
    if calibration is None or calibration.domain is None:
        raise CompressError("without --stats or --plan the model is profiled first: pass --domain "
                            "(math, code, general or your own with --dataset)")
    return settle(calibration, source)


def _team_settings(settings: dict) -> tuple[int, int, str]:
    return int(settings["team_size"]), int(settings["team_top_k"]), str(settings["clustering"])


class TieredMethod(Method):
    """Tiered conversion as a method of the reduction driver: one size (no ``keep``), no compensation."""

    name, model_what, plan_what = "convert tiered", "converted model", "plan file"
    plan_format = "moe-compress tiered plan"
    sized = compensable = False

    def check(self, source, options, keep, calibration, stats, plan):
        return check_request(source, options, calibration, stats, plan)

    def load_plan(self, plan, source):
        from ..tiering.plan import TieredPlan

        plan = plan if isinstance(plan, TieredPlan) else TieredPlan.load(plan)
        plan.check(source.moe_layers, source.experts_per_layer, source.fingerprint)
        return plan

    def make_plan(self, source, options, keep, *, stats, calibration, command, progress, spill=None):
        from ..tiering.recipe import parse_tiers
        from ..tiering.teams import design_teams
        from .profile import collect
        from .provenance import plan_provenance
        from .reduction import plan_source

        settings = recipe_settings(options, source)
        if stats is None:
            _, stats, _ = collect(source, calibration, progress=progress)
        plan = design_teams(stats, parse_tiers(str(settings["tiers"]), source.moe_layers), *_team_settings(settings),
                            source=plan_source(source),
                            provenance=plan_provenance(command, stats, clustering=settings["clustering"], recipe=settings))
        return plan, stats

    def write(self, source, plan, staging, options, *, stats, fits, command, progress, max_shard_size):
        return write(source, plan, staging, stats=stats, command=command, progress=progress, max_shard_size=max_shard_size)

    def result(self, plan, stats, fits, out, before, after, seconds):
        return TieredResult(plan, plan.provenance.get("clustering", "plan"), out, before, after, seconds)


TIERED_METHOD = register_method(TieredMethod())


def convert_tiered(source, options: TieredOptions, output: OutputOptions, *, calibration: CalibrationOptions | None = None,
                   stats=None, plan=None, plan_only: bool = False, command: str | None = None,
                   progress: bool = True) -> TieredResult:
    """The whole conversion job (`jobs.reduce.reduce` with `TIERED_METHOD`); `plan_only` writes the
    plan to ``output.out``. `stats` and `plan` are files or the objects themselves (`RoutingStats`, `TieredPlan`)."""
    return reduce(TIERED_METHOD, source, options, output, calibration=calibration, stats=stats, plan=plan, plan_only=plan_only,
                  command=command, progress=progress)


def write(source, plan, staging: Path, *, stats=None, command: str | None = None, progress: bool = True,
          max_shard_size: int | None = None):
    """Write the converted checkpoint of `plan` into `staging` with compress.json and its card."""
    from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
    from ..tiering.apply import write_tiered_checkpoint
    from ..tiering.card import tiered_card
    from .provenance import source_record, write_provenance
    from .reduction import describe_written

    write_tiered_checkpoint(source, staging, plan, max_shard_size or DEFAULT_MAX_SHARD_BYTES, progress=progress)
    after = describe_written(staging)
    before = source.info.parameters
    write_provenance(staging, operation="convert tiered", source=source_record(source), command=command, stats=stats,
                     plan=plan.to_dict(), parameters={"before": before.__dict__, "after": after.parameters.__dict__},
                     card=tiered_card(source.name, plan, plan.provenance.get("clustering", "plan"), before.total, after.parameters))
    return after
