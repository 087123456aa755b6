"""The merge groupings, as one table: each entry's name (the ``--grouping`` value), its lines of
``compress merge --help``, the sentence the model card uses, and its function.

A grouping decides one MoE layer at a time: ``function(sample, keep, used, routing_groups)`` gets
the layer's `layer_sample.LayerSample`, the number of new experts, each expert's usage [E] (its
merge weight: frequency or gate mass) and the number of routing groups, and returns ``keep``
groups of original expert ids that stay inside routing groups. Adding a grouping is one
`register_grouping` call (with its test); the command line's choices and help, the merge and the
card read this table. Functions may be named as ``"module:function"``, imported when first used,
so this module (and ``compress --help``) never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Grouping:
    name: str
    help: str  # its lines in `compress merge --help`
    card: str  # the model card's "Grouping: …"
    function: Callable | str  # (sample, keep, used [E], routing_groups) → groups, or "module:function"

    def groups(self, sample, keep: int, used, routing_groups: int) -> list[list[int]]:
        function = self.function
        if isinstance(function, str):
            module, _, name = function.partition(":")
            function = getattr(importlib.import_module(module), name)
        return function(sample, keep, used, routing_groups)


GROUPINGS: dict[str, Grouping] = {}


def register_grouping(grouping: Grouping) -> Grouping:
    GROUPINGS[grouping.name] = grouping
    return grouping


register_grouping(Grouping(
    "hc-smoe", "hierarchical clustering (average linkage) of the experts' mean outputs",
    "hierarchical clustering (average linkage) of the experts' mean outputs on calibration tokens (HC-SMoE)",
    "compress.merging.grouping:hc_smoe_groups"))
register_grouping(Grouping(
    "m-smoe", "the --keep most used experts are centres; every other expert joins the centre whose\n"
              "            router logits it matches best",
    "the most used experts as centres, each other expert joining the one whose router logits it matches best (M-SMoE)",
    "compress.merging.grouping:m_smoe_groups"))
