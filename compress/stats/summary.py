"""Reading routing statistics: per-layer summaries and divergence between two domains.

Definitions used in `compress stats show` / `diff`:

* usage rate of an expert: selections / tokens (the share of tokens that route to it; all rates
  in a layer sum to top-k);
* cold: usage rate below a threshold (default 1% of tokens);
* REAP saliency: reap_sum / selections, the mean of g·‖f(x)‖ over the tokens routed to the expert;
* entropy: mean over tokens of the router distribution's entropy, in nats and as a fraction of
  ln E (1 = uniform);
* Gini: concentration of the selection counts (0 = every expert equally used, → 1 = one expert);
* divergence: Jensen–Shannon divergence in bits between two distributions of selections.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..errors import CompressError
from . import DEFAULT_COLD_THRESHOLD
from .routing_stats import RoutingStats


def gini(values: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (0 when all equal or all zero)."""
    x = values.double().sort().values
    n, total = x.numel(), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2 * (ranks * x).sum()) / (n * total) - (n + 1) / n)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen–Shannon divergence in bits between two (unnormalised) count vectors."""
    p, q = p.double() / p.sum(), q.double() / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * (a[mask] / b[mask]).log2()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def domain_divergence_table(usage: dict[str, torch.Tensor]) -> list[float]:
    """Per MoE layer, the mean JS divergence over all pairs of domains' [layers, E] selection counts."""
    pairs = list(itertools.combinations(usage, 2))
    layers = next(iter(usage.values())).shape[0]
    return [sum(js_divergence(usage[a][layer], usage[b][layer]) for a, b in pairs) / len(pairs) for layer in range(layers)]


def reap_saliency(stats: RoutingStats, layer: int) -> torch.Tensor:
    """Mean g·‖f(x)‖ over each expert's routed tokens [E] (0 for experts never selected)."""
    layer_stats = stats.layers[layer]
    return layer_stats["reap_sum"] / layer_stats["selections"].clamp(min=1)


def layer_summary(stats: RoutingStats, layer: int, cold_threshold: float = DEFAULT_COLD_THRESHOLD, top: int = 5) -> dict:
    s = stats.layers[layer]
    tokens = int(s["tokens"])
    experts = s["selections"].shape[0]
    rate = s["selections"].double() / max(tokens, 1)
    cold = [int(e) for e in torch.nonzero(rate < cold_threshold).flatten()]
    ranked = torch.argsort(s["selections"], descending=True, stable=True)[:top]
    entropy = float(s["entropy_sum"]) / max(tokens, 1)
    return {
        "layer": layer,
        "tokens": tokens,
        "experts": experts,
        "entropy_nats": round(entropy, 4),
        "entropy_normalized": round(entropy / math.log(experts), 4) if experts > 1 else 0.0,
        "gini": round(gini(s["selections"]), 4),
        "cold_experts": cold,
        "never_selected": int((s["selections"] == 0).sum()),
        "top_experts": [{"expert": int(e), "usage_rate": round(float(rate[e]), 4)} for e in ranked],
    }


def summarize(stats: RoutingStats, cold_threshold: float = DEFAULT_COLD_THRESHOLD, top: int = 5) -> dict:
    layers = [layer_summary(stats, layer, cold_threshold, top) for layer in stats.layer_indices]
    return {
        **{key: stats.metadata.get(key) for key in ("model", "family", "domain", "samples", "seq_len", "tokens", "top_k")},
        "cold_threshold": cold_threshold,
        "cold_experts_total": sum(len(layer["cold_experts"]) for layer in layers),
        "experts_total": sum(layer["experts"] for layer in layers),
        "layers": layers,
    }


def divergence(a: RoutingStats, b: RoutingStats, top: int = 3) -> dict:
    """Per MoE layer: JS divergence of the two selection distributions and the experts whose usage
    rate moved most (positive: used more in `b`)."""
    if a.metadata.get("fingerprint") != b.metadata.get("fingerprint"):
        raise CompressError(
            f"these statistics come from different models ({a.metadata.get('model')} vs {b.metadata.get('model')}): "
            "divergence compares two domains on the same model"
        )
    layers = []
    for layer in a.layer_indices:
        sa, sb = a.layers[layer], b.layers[layer]
        rate_a = sa["selections"].double() / max(int(sa["tokens"]), 1)
        rate_b = sb["selections"].double() / max(int(sb["tokens"]), 1)
        shift = rate_b - rate_a
        moved = torch.argsort(shift.abs(), descending=True, stable=True)[:top]
        layers.append({
            "layer": layer,
            "js_divergence_bits": round(js_divergence(sa["selections"], sb["selections"]), 4),
            "most_shifted": [{"expert": int(e), "usage_rate_change": round(float(shift[e]), 4)} for e in moved],
        })
    values = [layer["js_divergence_bits"] for layer in layers]
    return {
        "a": {"domain": a.metadata.get("domain"), "tokens": a.metadata.get("tokens")},
        "b": {"domain": b.metadata.get("domain"), "tokens": b.metadata.get("tokens")},
        "mean_js_divergence_bits": round(sum(values) / len(values), 4),
        "layers": layers,
    }


# --- text for `compress stats` ---------------------------------------------------------------------
def header(stats: RoutingStats) -> str:
    """One line naming what the statistics were measured on."""
    from ..display import human_count

    m = stats.metadata
    return (f"{m.get('model')} ({m.get('family')}, top-{m.get('top_k')}) · domain {m.get('domain')} · "
            f"{human_count(m.get('tokens') or 0)} tokens in {m.get('samples')} windows of {m.get('seq_len') or 'mixed'}")


def render_summary(stats: RoutingStats, summary: dict, cold_threshold: float) -> str:
    """The `compress stats show` table of `summarize`'s result."""
    from ..display import layer_ranges

    lines = [header(stats),
             f"cold (< {cold_threshold:.1%} of tokens): {summary['cold_experts_total']} of {summary['experts_total']} experts",
             f"{'layer':>5}  {'entropy':>7}  {'/ln E':>5}  {'gini':>5}  {'cold':>4}  top experts (share of tokens)"]
    for layer in summary["layers"]:
        top = ", ".join(f"{t['expert']} {t['usage_rate']:.1%}" for t in layer["top_experts"])
        lines.append(f"{layer['layer']:>5}  {layer['entropy_nats']:>7.3f}  {layer['entropy_normalized']:>5.2f}  "
                     f"{layer['gini']:>5.2f}  {len(layer['cold_experts']):>4}  {top}")
    lines += [f"cold in layer {layer['layer']}: {layer_ranges(layer['cold_experts'])}" for layer in summary["layers"]
              if layer["cold_experts"]]
    return "\n".join(lines)


def render_divergence(a: RoutingStats, b: RoutingStats, result: dict) -> str:
    """The `compress stats diff` table of `divergence`'s result."""
    lines = [f"A: {header(a)}", f"B: {header(b)}",
             f"mean Jensen-Shannon divergence of expert usage: {result['mean_js_divergence_bits']:.4f} bits (0 = same, 1 = disjoint)",
             f"{'layer':>5}  {'JS bits':>7}  experts whose usage moved most (B - A, share of tokens)"]
    for layer in result["layers"]:
        moved = ", ".join(f"{m['expert']} {m['usage_rate_change']:+.1%}" for m in layer["most_shifted"])
        lines.append(f"{layer['layer']:>5}  {layer['js_divergence_bits']:>7.4f}  {moved}")
    return "\n".join(lines)
