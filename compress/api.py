"""The Python API: the jobs behind the command line, with keyword arguments.

    import compress

    stats = compress.profile("demo", domain="math", samples=64).stats
    result = compress.prune("demo", keep=8, criterion="frequency", stats=stats, out="out/demo-math-keep8")
    report = compress.evaluate(result.out, tasks="perplexity:math", max_tokens=20000).report

Every keyword is a field of one of the option dataclasses in `jobs.options` (or of
`evals.evaluate.EvalSettings`): the same names as the command line's flags, with underscores.
``model`` is anything ``--model`` takes, or an already opened `jobs.SourceModel` (open it once
with `open_model` to run several jobs on it). For notebooks, `jobs.prune.make_plan` and
`pruning.apply.apply_plan_to_model` try plans in memory before `prune` writes the best one.
"""

from __future__ import annotations

from dataclasses import fields

from .jobs.options import CalibrationOptions, EvaluationOptions, MergeOptions, OutputOptions, SelectionOptions, TieredOptions
from .jobs.source import SourceModel, open_model


def _model(model) -> SourceModel:
    return model if isinstance(model, SourceModel) else open_model(str(model))


def _options(kwargs: dict, *classes, where: str):
    """One instance per class from `kwargs`, each keyword going to the class that has that field."""
    names = {f.name for cls in classes for f in fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(sorted(names))}")
    return [cls(**{k: v for k, v in kwargs.items() if k in {f.name for f in fields(cls)}}) for cls in classes]


def profile(model, *, out: str | None = None, overwrite: bool = False, progress: bool = True, **calibration):
    """Routing statistics of `model` on calibration text (`jobs.profile.ProfileResult`; ``.stats``)."""
    from .jobs.profile import profile as run

    (options,) = _options(calibration, CalibrationOptions, where="profile")
    return run(_model(model), options, out=out, overwrite=overwrite, progress=progress)


def prune(model, *, out: str, stats=None, plan=None, plan_only: bool = False, overwrite: bool = False,
          progress: bool = True, command: str | None = None, **options):
    """Prune `model` into `out` (`jobs.prune.PruneResult`). `stats` / `plan`: files from `profile` /
    an earlier ``plan_only=True`` run, or the `RoutingStats` / `PrunePlan` objects; without them the
    model is profiled on ``domain``."""
    from .jobs.prune import prune as run

    selection, calibration, output = _options({**options, "out": out, "overwrite": overwrite},
                                              SelectionOptions, CalibrationOptions, OutputOptions, where="prune")
    return run(_model(model), selection, output, calibration=calibration, stats=stats, plan=plan, plan_only=plan_only,
               command=command, progress=progress)


def merge(model, *, out: str, plan=None, plan_only: bool = False, overwrite: bool = False, progress: bool = True,
          command: str | None = None, **options):
    """Merge `model`'s experts into `out` (`jobs.merge.MergeResult`; a `jobs.frontier.FrontierResult`
    for several sizes). `plan`: a file from an earlier ``plan_only=True`` run, or a `MergePlan`."""
    from .jobs.merge import merge as run

    merging, calibration, output = _options({**options, "out": out, "overwrite": overwrite},
                                            MergeOptions, CalibrationOptions, OutputOptions, where="merge")
    return run(_model(model), merging, output, calibration=calibration, plan=plan, plan_only=plan_only, command=command,
               progress=progress)


def convert_tiered(model, *, out: str, stats=None, plan=None, plan_only: bool = False, overwrite: bool = False,
                   progress: bool = True, command: str | None = None, **options):
    """Convert `model` to TieredLightweightMoE teams in `out` (`jobs.tiered.TieredResult`)."""
    from .jobs.tiered import convert_tiered as run

    tiered, calibration, output = _options({**options, "out": out, "overwrite": overwrite},
                                           TieredOptions, CalibrationOptions, OutputOptions, where="convert_tiered")
    return run(_model(model), tiered, output, calibration=calibration, stats=stats, plan=plan, plan_only=plan_only,
               command=command, progress=progress)


def evaluate(model, tasks: str, *, json_path: str | None = None, progress: bool = True, **settings):
    """Perplexity and lm-eval tasks of `model` (`jobs.evaluate.EvaluationResult`; ``.report``)."""
    from .evals.evaluate import EvalSettings
    from .jobs.evaluate import evaluate as run

    options, measurement = _options({**settings, "tasks": tasks}, EvaluationOptions, EvalSettings, where="evaluate")
    return run(_model(model), options, measurement, json_path=json_path, progress=progress)


def report(inputs: list[str], *, out: str, model: str | None = None, prompts: list[str] = (), title: str | None = None,
           overwrite: bool = False):
    """The routing report of `inputs` (statistics files, derived outputs, frontier folders) and of
    `prompts` through `model`, as one self-contained HTML file `out` (`jobs.report.ReportResult`)."""
    from .jobs.report import report as run

    return run(inputs, out, model=model, prompts=prompts, title=title, overwrite=overwrite)


__all__ = ["SourceModel", "convert_tiered", "evaluate", "merge", "open_model", "profile", "prune", "report"]
