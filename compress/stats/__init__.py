"""Routing statistics: what every pruning and conversion decision reads.

`RoutingStats` holds additive per-layer sums and their file; `RoutingStatsCollector` gathers them
inside a model's normal forward; `profile_windows` drives a collector over calibration windows, sharded
across processes under torchrun.

The names below are imported on first use, so that the command line can read the defaults here
without importing torch.
"""

from importlib import import_module

DEFAULT_COLD_THRESHOLD = 0.01  # an expert is "cold" below this share of a layer's tokens

_EXPORTS = {"RoutingStats": ".routing_stats", "merge_all": ".routing_stats", "RoutingStatsCollector": ".collector"}
__all__ = ["DEFAULT_COLD_THRESHOLD", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
