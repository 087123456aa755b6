"""The evaluation jobs: one model (`evaluate`), candidates against a base (`compare`), a pass/fail
verdict (`gate`). Every model is opened and checked, and every option checked against it, before
the first evaluation starts; results go into derived checkpoints' cards (`evals.model_card`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from .options import EvaluationOptions


@dataclass(frozen=True)
class EvaluationResult:
    model: str
    report: dict
    card: Path | None  # the card the results were added to

    def summary(self) -> str:
        from ..evals.model_card import limit_text

        limited = limit_text(self.report["settings"])
        lines = [self.model + (f"  (limited to {limited})" if limited else ""), f"{'task':<32} {'metric':<20} {'value':>12}"]
        for task, result in self.report["tasks"].items():
            lines += [f"{task:<32} {metric.split(',')[0]:<20} {value:>12.4f}{'  (cached)' if result.get('cached') else ''}"
                      for metric, value in result["metrics"].items()]
        if self.card is not None:
            lines.append(f"results added to {self.card}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ComparisonResult:
    base: str
    changes: dict  # candidate name → [evals.compare.MetricChange]
    plot: Path | None

    def to_dict(self) -> dict:
        return {name: [{**c.__dict__, "relative": c.relative} for c in rows] for name, rows in self.changes.items()}

    def summary(self) -> str:
        lines = []
        for name, rows in self.changes.items():
            lines += [f"{name} vs {self.base}",
                      f"  {'task':<30} {'metric':<18} {'base':>10} {'candidate':>10} {'change':>10} {'relative':>9}"]
            lines += [f"  {c.task:<30} {c.metric.split(',')[0]:<18} {c.base:>10.4f} {c.candidate:>10.4f} "
                      f"{c.absolute:>+10.4f} {c.relative:>+9.1%}" for c in rows]
        if self.plot is not None:
            lines.append(f"chart: {self.plot}")
        return "\n".join(lines)


@dataclass(frozen=True)
class GateResult:
    base: str
    candidate: str
    verdict: object  # `evals.compare.Verdict`

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def to_dict(self) -> dict:
        v = self.verdict
        return {"passed": v.passed, "band": v.band, "worst_ppl_gap": v.worst_ppl_gap, "failures": v.failures}

    def summary(self) -> str:
        v = self.verdict
        gap = f"worst perplexity gap {v.worst_ppl_gap:+.1%}; " if v.worst_ppl_gap is not None else ""
        return "\n".join([f"{'PASS' if v.passed else 'FAIL'}: {self.candidate} vs {self.base}: {gap}band: {v.band}",
                          *[f"  failing: {failure}" for failure in v.failures]])


def _prepared(options: EvaluationOptions, settings, *sources):
    """The parsed tasks, after checking the settings against every model (before any evaluation)."""
    from ..evals.evaluate import check_settings, parse_tasks

    tasks = parse_tasks(options.tasks)
    for source in sources:
        check_settings(source.raw_config, settings)
    return tasks


def _run(source, tasks, options: EvaluationOptions, settings, progress: bool) -> dict:
    from ..evals.evaluate import evaluate as evaluate_tasks

    return evaluate_tasks(source, tasks, settings, device=options.device, use_cache=not options.no_cache, progress=progress)


def evaluate(source, options: EvaluationOptions, settings, *, json_path: str | None = None, progress: bool = True) -> EvaluationResult:
    """Evaluate one opened model; `json_path` also receives the report."""
    from ..checkpoint.output import claim_output
    from ..evals.model_card import evaluation_record, write_evaluation

    tasks = _prepared(options, settings, source)
    claim = claim_output(json_path, kind="report", flag="--json", what="results file") if json_path else contextlib.nullcontext()
    with claim as claimed:
        report = _run(source, tasks, options, settings, progress)
        if claimed is not None:
            with claimed.write() as staging:
                staging.write_text(json.dumps(report, indent=2) + "\n")
    written = write_evaluation(source.path, evaluation_record("eval", report))
    return EvaluationResult(source.name, report, Path(source.path) / "README.md" if written else None)


def _chart_claims(base, candidates: list, charts: dict[str, str | None], overwrite: bool) -> list:
    """The claims (or null contexts) of the chart files `charts` {flag: path}: images of a format
    we write, never inside a model folder, never the same file twice, replacing only our own
    charts and only with `overwrite` (`checkpoint.output.claim_output`)."""
    from ..checkpoint.output import claim_output
    from ..errors import CompressError
    from ..evals.compare import CHART_FORMATS, is_chart_file

    paths = {}
    for flag, path in charts.items():
        if path is None:
            continue
        if Path(path).suffix.lower().lstrip(".") not in CHART_FORMATS:
            raise CompressError(f"{flag} {path}: a chart is written as {', '.join(CHART_FORMATS)}: end the name with "
                                f"{', '.join('.' + ext for ext in CHART_FORMATS)}")
        resolved = Path(path).expanduser().resolve()
        same = [other for other, taken in paths.items() if taken == resolved]
        if same:
            raise CompressError(f"{same[0]} and {flag} both name {path}: give each chart its own file")
        paths[flag] = resolved
    models = (base.path, *(candidate.path for candidate in candidates))
    return [claim_output(charts[flag], kind="file", overwrite=overwrite, flag=flag, sources=models, recognise=is_chart_file,
                         what="chart") if flag in paths else contextlib.nullcontext() for flag in charts]


def _check_frontier_candidates(base, candidates: list) -> None:
    """A size frontier draws models derived from the base: refuse a candidate made from another model."""
    from ..checkpoint.files import PROVENANCE_FILE
    from ..errors import CompressError

    for candidate in candidates:
        try:
            record = json.loads((Path(candidate.path) / PROVENANCE_FILE).read_text())
            made_from = record["source"]
        except (OSError, ValueError, KeyError, TypeError):
            made_from = None
        if not isinstance(made_from, dict) or made_from.get("fingerprint") != base.fingerprint:
            origin = f"made from {made_from.get('model')}" if isinstance(made_from, dict) else "not a moe-compress output"
            raise CompressError(f"--frontier draws models derived from --base {base.name}, but {candidate.name} is {origin}: "
                                "compare it without --frontier, or with its own --base")


def compare(base, candidates: list, options: EvaluationOptions, settings, *, plot: str | None = None,
            frontier: str | None = None, overwrite: bool = False, progress: bool = True) -> ComparisonResult:
    """Every metric of each candidate against the base; `plot` draws the relative changes, `frontier`
    each task's quality against parameter count (`overwrite` replaces earlier charts of ours)."""
    from ..evals.compare import metric_changes, plot_comparison, plot_frontier
    from ..evals.model_card import evaluation_record, write_evaluation

    tasks = _prepared(options, settings, base, *candidates)
    if frontier is not None:
        _check_frontier_candidates(base, candidates)
    claim, frontier_claim = _chart_claims(base, candidates, {"--plot": plot, "--frontier": frontier}, overwrite)
    with claim as claimed, frontier_claim as frontier_claimed:
        base_report = _run(base, tasks, options, settings, progress)
        changes = {}
        for candidate in candidates:
            report = _run(candidate, tasks, options, settings, progress)
            changes[candidate.name] = metric_changes(base_report, report)
            write_evaluation(candidate.path, evaluation_record("compare", report, changes[candidate.name], base.name))
        if claimed is not None:
            with claimed.write() as staging:
                plot_comparison(base.name, changes, staging)
        if frontier_claimed is not None:
            with frontier_claimed.write() as staging:
                sizes = {candidate.name: (candidate.info.parameters.total, changes[candidate.name]) for candidate in candidates}
                plot_frontier((base.name, base.info.parameters.total), sizes, staging)
    return ComparisonResult(base.name, changes, claimed.path if claimed is not None else None)


def gate(base, candidate, options: EvaluationOptions, settings, *, max_ppl_gap: float, max_drop: float,
         progress: bool = True) -> GateResult:
    """Pass or fail the candidate against the base (see `evals.compare.gate`)."""
    from ..evals.compare import gate as judge
    from ..evals.compare import metric_changes
    from ..evals.model_card import evaluation_record, write_evaluation

    tasks = _prepared(options, settings, base, candidate)
    base_report = _run(base, tasks, options, settings, progress)
    report = _run(candidate, tasks, options, settings, progress)
    changes = metric_changes(base_report, report)
    verdict = judge(changes, max_ppl_gap, max_drop)
    write_evaluation(candidate.path, evaluation_record("gate", report, changes, base.name, verdict))
    return GateResult(base.name, candidate.name, verdict)
