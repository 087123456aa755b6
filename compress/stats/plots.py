"""PNG heatmaps of routing statistics (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from .routing_stats import RoutingStats
from .summary import reap_saliency


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _expert_ticks(ax, experts: int, axis: str = "x") -> None:
    step = max(1, experts // 16)
    ticks = list(range(0, experts, step))
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks)


def plot_layer_heatmaps(panels: dict[str, torch.Tensor], layers: list[int], path: Path, *, label: str, title: str = "") -> None:
    """One heatmap per panel (e.g. per domain): MoE layer × expert, values [layers, E]."""
    plt = _pyplot()
    experts = next(iter(panels.values())).shape[1]
    width = min(4 + experts / 8, 16) if len(panels) == 1 else 4 * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 1.2 + 0.35 * len(layers)), sharey=True,
                             constrained_layout=True, squeeze=False)
    vmax = max(float(values.nan_to_num(0.0).max()) for values in panels.values()) or 1.0
    for ax, (name, values) in zip(axes[0], panels.items()):
        image = ax.imshow(values.double().numpy(), cmap="viridis", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("expert")
        _expert_ticks(ax, experts)
    axes[0][0].set_yticks(range(len(layers)), [str(layer) for layer in layers])
    axes[0][0].set_ylabel("decoder layer")
    fig.colorbar(image, ax=axes[0].tolist(), label=label)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_matrix(matrix: torch.Tensor, path: Path, *, title: str, xlabel: str, ylabel: str, label: str) -> None:
    plt = _pyplot()
    rows, cols = matrix.shape
    size = min(3 + cols / 6, 14)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), constrained_layout=True)
    image = ax.imshow(matrix.double().numpy(), cmap="magma", vmin=0, aspect="equal", interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _expert_ticks(ax, cols, "x")
    _expert_ticks(ax, rows, "y")
    fig.colorbar(image, ax=ax, label=label)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer rows as one [layers, most experts] matrix; a layer with fewer experts (a non-uniform
    or tiered model) is padded with NaN, which the heatmaps leave blank."""
    matrix = torch.full((len(rows), max(len(row) for row in rows)), float("nan"), dtype=torch.float64)
    for index, row in enumerate(rows):
        matrix[index, : len(row)] = row.double()
    return matrix


def _usage_rates(stats: RoutingStats) -> torch.Tensor:
    """[layers, E]: the share of tokens routed to each expert."""
    return _padded([s["selections"].double() / s["tokens"].clamp(min=1).double() for s in
                    (stats.layers[layer] for layer in stats.layer_indices)])


def _row_normalized(matrix: torch.Tensor) -> torch.Tensor:
    matrix = matrix.double()
    return matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)


def plot_stats(stats: RoutingStats, out_dir: Path, layer: int | None = None) -> list[Path]:
    """usage.png and reap.png (all layers), coactivation and transitions of `layer` (default: the
    middle MoE layer). Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = stats.layer_indices
    layer = layers[len(layers) // 2] if layer is None else layer
    name = f"{stats.metadata.get('model')} · {stats.metadata.get('domain')}"
    written = []

    usage = _usage_rates(stats)
    path = out_dir / "usage.png"
    plot_layer_heatmaps({name: usage}, layers, path, label="share of tokens routed to the expert",
                        title="expert usage (top-k selections / tokens)")
    written.append(path)

    # Saliency scales differ a lot between layers and pruning compares experts within a layer.
    saliency = _padded([reap_saliency(stats, index) / reap_saliency(stats, index).amax().clamp(min=1e-30) for index in layers])
    path = out_dir / "reap.png"
    plot_layer_heatmaps({name: saliency}, layers, path, label="REAP saliency / the layer's highest",
                        title="REAP saliency (mean g·‖f(x)‖ over routed tokens), per layer")
    written.append(path)

    s = stats.layers[layer]
    coactivation = s["coactivation"].double()
    conditional = coactivation / s["selections"].clamp(min=1).double().unsqueeze(1)
    conditional.fill_diagonal_(0)
    path = out_dir / f"coactivation_layer{layer}.png"
    _plot_matrix(conditional, path, title=f"co-activation, layer {layer}: P(j selected | i selected)",
                 xlabel="expert j", ylabel="expert i", label="P(j | i)")
    written.append(path)

    if "transitions" in s:
        previous = layers[layers.index(layer) - 1]
        path = out_dir / f"transitions_layer{layer}.png"
        _plot_matrix(_row_normalized(s["transitions"]), path,
                     title=f"transitions layer {previous} → {layer}: share of i's onward selections",
                     xlabel=f"expert at layer {layer}", ylabel=f"expert at layer {previous}", label="share")
        written.append(path)
    return written


def plot_pruning(stats: RoutingStats, kept: dict[int, list[int]], path: Path) -> None:
    """Expert usage per layer with the removed experts crossed out (for pruned models' cards)."""
    plt = _pyplot()
    layers = stats.layer_indices
    usage = _usage_rates(stats)
    experts = usage.shape[1]
    fig, ax = plt.subplots(figsize=(min(4 + experts / 8, 16), 1.4 + 0.35 * len(layers)), constrained_layout=True)
    image = ax.imshow(usage.numpy(), cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
    removed = [(e, row) for row, layer in enumerate(layers) for e in range(stats.num_experts(layer)) if e not in set(kept[layer])]
    if removed:
        xs, ys = zip(*removed)
        ax.scatter(xs, ys, marker="x", color="red", s=max(8, 400 / experts), linewidths=1.2, label="removed")
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.12), fontsize="small", frameon=False)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("decoder layer")
    ax.set_xlabel("expert (original id)")
    _expert_ticks(ax, experts)
    ax.set_title(f"expert usage on {stats.metadata.get('domain')} calibration text", loc="left")
    fig.colorbar(image, ax=ax, label="share of tokens routed to the expert")
    fig.savefig(path, dpi=110)
    plt.close(fig)
