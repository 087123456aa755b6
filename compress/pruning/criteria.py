"""The pruning criteria, as one table: each entry's name (the ``--criterion`` value), its line of
``compress prune --help``, the sentence the model card uses, and how it chooses.

A *score* criterion maps one MoE layer's routing statistics (`stats.RoutingStats` layers) to a
keep score per expert [E] (float64, higher = kept; `pruning.select` ranks them). A *search*
criterion instead makes the per-layer request the layer-wise engine answers on calibration tokens
(``reconstruct``). Adding a criterion is one `register_criterion` call (with its test); selection,
the command line's choices and help, and the card read this table. Nothing here imports torch, so
``compress --help`` stays instant.

The score criteria: ``reap``, mean of g·‖f(x)‖ over the tokens routed to the expert (REAP,
Cerebras 2025); ``frequency``, top-k selection count; ``gate-mass``, Σ routing weight; ``ean``,
Σ ‖f(x)‖ over routed tokens; ``man`` / ``msan``, mean ‖f(x)‖ / mean ‖f(x)‖² over routed tokens,
no gate term (arXiv 2606.15716); ``random``, a seeded order (the baseline every criterion must beat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    name: str
    help: str  # its line in `compress prune --help`
    card: str  # completes "Experts were ranked by …" in the model card
    score: Callable | None = None  # (layer statistics {name: tensor}, layer, seed) → scores [E] float64
    search: Callable | None = None  # (keep, protect, routing groups, budget, min_per_layer) → a per-layer request

    def __post_init__(self):
        if (self.score is None) == (self.search is None):
            raise ValueError(f"criterion {self.name!r} needs exactly one of score and search")


CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    CRITERIA[criterion.name] = criterion
    return criterion


def score_criteria() -> list[str]:
    """The criteria that rank experts from routing statistics alone."""
    return [name for name, criterion in CRITERIA.items() if criterion.score is not None]


def _per_routed_token(total: str):
    return lambda s, layer, seed: s[total].double() / s["selections"].clamp(min=1).double()


def _msan(s, layer, seed):
    from ..errors import CompressError

    if "ean_sq_sum" not in s:
        raise CompressError("--criterion msan needs the statistic ean_sq_sum, which these statistics (written by an older "
                            "moe-compress) lack: profile the model again")
    return _per_routed_token("ean_sq_sum")(s, layer, seed)


def _random(s, layer, seed):
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + layer)
    return torch.rand(s["selections"].shape[0], generator=generator, dtype=torch.float64)


def _reconstruct(keep, protect, groups, budget, min_per_layer):
    from .reconstruct import ReconstructRequest

    return ReconstructRequest(keep, protect, groups, budget, min_per_layer)


for _entry in (
    Criterion("reap", "mean routing weight x expert output norm over the tokens routed to the expert",
              "REAP saliency (mean of routing weight × expert output norm over the tokens routed to the expert)",
              score=_per_routed_token("reap_sum")),
    Criterion("frequency", "how often the expert is in a token's top-k",
              "routing frequency (how often the expert is in a token's top-k)", score=lambda s, layer, seed: s["selections"].double()),
    Criterion("gate-mass", "total routing weight the expert receives", "gate mass (total routing weight the expert receives)",
              score=lambda s, layer, seed: s["gate_mass"].double()),
    Criterion("ean", "sum of the expert's output norms over its routed tokens",
              "expert activation norm (sum of the expert's output norms over its routed tokens)",
              score=lambda s, layer, seed: s["ean_sum"].double()),
    Criterion("man", "mean output norm over the expert's routed tokens (no gate term)",
              "mean activation norm (mean of the expert's output norms over its routed tokens, no gate term)",
              score=_per_routed_token("ean_sum")),
    Criterion("msan", "mean squared output norm over the expert's routed tokens (no gate term)",
              "mean squared activation norm (mean of the squared output norms over its routed tokens, no gate term)",
              score=_msan),
    Criterion("random", "seeded random baseline", "a seeded random choice (a baseline, not a recommendation)", score=_random),
    Criterion("reconstruct", "per layer, the kept set whose output is closest to the full layer's on calibration tokens;\n"
              "               with --budget global, removals go where they raise the relative layer error least",
              "a search for the kept set that best reconstructs each layer's output on calibration tokens", search=_reconstruct),
):
    register_criterion(_entry)
