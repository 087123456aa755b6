"""Routing statistics: what every pruning and conversion decision reads.

`RoutingStats` holds additive per-layer sums and their file; `RoutingStatsCollector` gathers them
inside a model's normal forward; `profile` drives a collector over calibration windows, sharded
across processes under torchrun.
"""

from .collector import RoutingStatsCollector
from .routing_stats import RoutingStats, merge_all

__all__ = ["RoutingStats", "RoutingStatsCollector", "merge_all"]
