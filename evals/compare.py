"""Comparing a candidate with its base: metric deltas, the quality gate, a bar chart.

Perplexity-like metrics (lower is better, a ratio scale: ``perplexity``, ``word_perplexity``,
``byte_perplexity``) are judged by their relative gap, candidate / base − 1. Higher-is-better
metrics (accuracy, exact match) are judged by their absolute drop, base − candidate. The verdict
band follows the worst perplexity gap: < 5% ship, 5–10% acceptable, 10–20% needs distillation,
> 20% revise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RATIO_METRICS = ("perplexity", "word_perplexity", "byte_perplexity")
BANDS = ((0.05, "ship"), (0.10, "acceptable"), (0.20, "needs distillation"), (float("inf"), "revise"))


@dataclass(frozen=True)
class MetricChange:
    task: str
    metric: str
    base: float
    candidate: float
    higher_is_better: bool

    @property
    def absolute(self) -> float:
        return self.candidate - self.base

    @property
    def relative(self) -> float:
        return self.absolute / abs(self.base) if self.base else float("inf") if self.absolute else 0.0

    @property
    def is_ratio_metric(self) -> bool:
        return self.metric.split(",")[0] in RATIO_METRICS


def metric_changes(base: dict, candidate: dict) -> list[MetricChange]:
    """Every metric both reports share (lm-eval's ``sample_len`` and token counts left out)."""
    changes = []
    for task, base_result in base["tasks"].items():
        candidate_result = candidate["tasks"].get(task)
        if candidate_result is None:
            continue
        for metric, value in base_result["metrics"].items():
            if metric in ("tokens",) or metric not in candidate_result["metrics"]:
                continue
            changes.append(MetricChange(task, metric, float(value), float(candidate_result["metrics"][metric]),
                                        base_result["higher_is_better"].get(metric, True)))
    return changes


def band(gap: float) -> str:
    return next(name for limit, name in BANDS if gap < limit)


@dataclass
class Verdict:
    passed: bool
    band: str
    worst_ppl_gap: float | None
    failures: list[str] = field(default_factory=list)


def gate(changes: list[MetricChange], max_ppl_gap: float, max_drop: float) -> Verdict:
    failures, gaps = [], []
    for change in changes:
        if change.is_ratio_metric:
            gaps.append(change.relative)
            if change.relative > max_ppl_gap:
                failures.append(f"{change.task} {change.metric}: {change.base:.4g} → {change.candidate:.4g} "
                                f"(+{change.relative:.1%}, limit +{max_ppl_gap:.0%})")
        elif change.higher_is_better and change.metric.split(",")[0] not in ("nll", "bits_per_byte"):
            drop = change.base - change.candidate
            if drop > max_drop:
                failures.append(f"{change.task} {change.metric}: {change.base:.4g} → {change.candidate:.4g} "
                                f"(−{drop:.3g}, limit −{max_drop:.3g})")
    if not changes:
        failures.append("no metric was measured on both models")
    worst = max(gaps) if gaps else None
    return Verdict(not failures, band(worst) if worst is not None else "no perplexity measured", worst, failures)


# Charts carry this in their metadata (PNG text, SVG creator, PDF Creator), so `--overwrite`
# recognises a chart of ours and never replaces someone else's image.
CHART_CREATOR = "moe-compress compare chart"
CHART_FORMATS = ("png", "svg", "pdf")


def is_chart_file(path: Path) -> bool:
    """Whether `path` is a chart `compress compare` wrote (`CHART_CREATOR` in its first 16 MiB)."""
    try:
        with open(path, "rb") as handle:
            return CHART_CREATOR.encode() in handle.read(16 << 20)
    except OSError:
        return False


def plot_comparison(base_name: str, candidates: dict[str, list[MetricChange]], path: Path) -> None:
    """One bar group per metric: each candidate's relative change against the base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c.task}\n{c.metric.split(',')[0]}" for c in next(iter(candidates.values()))]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels) * max(1, len(candidates)) ** 0.5), 3.8), constrained_layout=True)
    width = 0.8 / len(candidates)
    for i, (name, changes) in enumerate(candidates.items()):
        values = [100 * c.relative for c in changes]
        positions = [j + (i - (len(candidates) - 1) / 2) * width for j in range(len(values))]
        ax.bar(positions, values, width, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize="small")
    ax.set_ylabel(f"change vs {base_name} (%)")
    ax.set_title("candidate vs base (perplexity: lower is better; accuracy: higher is better)", fontsize="medium")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110, metadata={"Creator": CHART_CREATOR})
    plt.close(fig)


def plot_frontier(base: tuple[str, int], candidates: dict[str, tuple[int, list[MetricChange]]], path: Path) -> None:
    """Quality against size: one panel per task (its perplexity, on a log scale, or else its first metric), the
    base and every candidate placed by parameter count, candidates joined from smallest to largest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_name, base_parameters = base
    first = next(iter(candidates.values()))[1]
    tasks = list(dict.fromkeys(change.task for change in first))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), constrained_layout=True, squeeze=False)
    ordered = sorted(candidates.items(), key=lambda item: item[1][0])
    for ax, task in zip(axes[0], tasks):
        metrics = [change.metric for change in first if change.task == task]
        metric = next((m for m in metrics if m.split(",")[0] == "perplexity"), metrics[0])
        points = [(parameters / 1e6, next(c.candidate for c in changes if c.task == task and c.metric == metric), name)
                  for name, (parameters, changes) in ordered]
        base_value = next(c.base for c in first if c.task == task and c.metric == metric)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="candidates")
        for x, y, name in points:
            ax.annotate(Path(name).name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        ax.plot([base_parameters / 1e6], [base_value], "k*", markersize=10, label=base_name)
        if metric.split(",")[0] in RATIO_METRICS:
            ax.set_yscale("log")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(metric.split(",")[0])
        ax.set_title(task, fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("size frontier: quality against parameters", fontsize="medium")
    fig.savefig(path, dpi=110, metadata={"Creator": CHART_CREATOR})
    plt.close(fig)
