"""`PrunePlan`: which experts each MoE layer keeps, as data a person can read and edit.

The JSON file::

    {
      "format": "moe-compress prune plan", "format_version": 1,
      "source": {"model": "demo", "fingerprint": "sha256:…", "family": "gpt_oss",
                 "num_experts": 16, "top_k": 4, "experts_per_layer": {"0": 16, …}},
      "top_k": 4,
      "layers": {"0": [0, 3, 4, …], "1": […], …},
      "provenance": {"criterion": "reap", "budget": "uniform", "statistics": {…}, "tool_version": "…",
                     "command": "…"}
    }

``layers`` maps each MoE decoder layer to the original ids of the experts it keeps; the kept
experts are renumbered 0..N-1 in that order. ``top_k`` is the new number of experts per token:
``min(source top-k, kept)``. Plans with the same count in every layer are *uniform* (stock
transformers loads the result); others need the project's non-uniform model classes.

A tiered source (teams of experts behind a team router) is pruned by whole teams: the plan also
holds ``teams`` {layer: kept team ids, in their new order}, ``layers`` lists those teams' members
in team order, and ``top_k`` counts experts (teams per token × team size).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..checkpoint.output import atomic_file
from ..errors import CompressError

FORMAT = "moe-compress prune plan"
FORMAT_VERSION = 1


@dataclass
class PrunePlan:
    source: dict  # model, fingerprint, family, num_experts, top_k, experts_per_layer
    layers: dict[int, list[int]]
    top_k: int
    provenance: dict = field(default_factory=dict)
    teams: dict[int, list[int]] | None = None  # tiered sources only

    @property
    def uniform(self) -> bool:
        return len({len(kept) for kept in self.layers.values()}) == 1

    @property
    def experts_per_layer(self) -> dict[int, int]:
        return {layer: len(kept) for layer, kept in self.layers.items()}

    def source_experts(self, layer: int) -> int:
        """How many experts layer `layer` holds in the source."""
        per_layer = self.source.get("experts_per_layer") or {}
        return int(per_layer.get(str(layer), self.source["num_experts"]))

    def removed(self, layer: int) -> list[int]:
        kept = set(self.layers[layer])
        return [e for e in range(self.source_experts(layer)) if e not in kept]

    # --- checking --------------------------------------------------------------------------------
    def check(self, moe_layers: list[int], experts_per_layer: dict[int, int] | int, top_k: int,
              fingerprint: str | None = None, group_count: int = 1) -> None:
        """Refuse a plan that does not fit the model: other layers, bad ids, too few experts, or
        (with group-limited routing) unequal counts per routing group."""
        if isinstance(experts_per_layer, int):
            experts_per_layer = {layer: experts_per_layer for layer in moe_layers}
        check_plan_source(self, moe_layers, fingerprint)
        for layer, kept in self.layers.items():
            if not kept:
                raise CompressError(f"the plan keeps no experts in layer {layer}: keep at least one")
            count = experts_per_layer[layer]
            if len(set(kept)) != len(kept) or any(not 0 <= e < count for e in kept):
                raise CompressError(f"layer {layer} of the plan names duplicate or out-of-range experts (0..{count - 1}): {kept}")
        if self.teams is not None:
            return  # team plans are made from the source's teams (`team_plan_layers`); their top-k counts teams
        expected_top_k = min(top_k, min(self.experts_per_layer.values()))
        if self.top_k != expected_top_k:
            raise CompressError(f"the plan's top_k is {self.top_k}; for these kept counts it must be min({top_k}, kept) = {expected_top_k}")
        if not self.uniform and min(self.experts_per_layer.values()) < top_k:
            raise CompressError(f"a non-uniform plan must keep at least top-k = {top_k} experts in every layer")
        if group_count > 1:
            for layer, kept in self.layers.items():
                group_size = experts_per_layer[layer] // group_count
                per_group = [sum(1 for e in kept if e // group_size == g) for g in range(group_count)]
                if len(set(per_group)) != 1 or per_group[0] < 2:
                    raise CompressError(
                        f"layer {layer} keeps {per_group} experts in its {group_count} routing groups: group-limited "
                        "routing (n_group) needs the same number, at least 2, in every group"
                    )

    # --- file ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "top_k": self.top_k,
            "layers": {str(layer): kept for layer, kept in sorted(self.layers.items())},
            "provenance": {**self.provenance, "tool_version": self.provenance.get("tool_version", __version__)},
        }
        if self.teams is not None:
            data["teams"] = {str(layer): kept for layer, kept in sorted(self.teams.items())}
        return data

    def save(self, path: str | os.PathLike) -> None:
        save_plan_file(path, self.to_dict())

    @classmethod
    def from_dict(cls, data, where: str = "the plan") -> PrunePlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CompressError(f"{where} is not a prune plan written by `compress prune --plan-only`")
        layers = _id_lists(data.get("layers"), where, "layers", "expert")
        teams = _id_lists(data["teams"], where, "teams", "team") if "teams" in data else None
        if not isinstance(data.get("top_k"), int) or isinstance(data.get("top_k"), bool):
            raise CompressError(f'{where}: "top_k" must be a whole number, not {data.get("top_k")!r}')
        if not isinstance(data.get("source"), dict):
            raise CompressError(f'{where}: "source" is missing: compare it with a plan from --plan-only')
        provenance = data.get("provenance", {})
        return cls(source=dict(data["source"]), layers=layers, top_k=data["top_k"],
                   provenance=dict(provenance) if isinstance(provenance, dict) else {}, teams=teams)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        return cls.from_dict(read_plan_file(path), str(path))


def check_plan_source(plan, moe_layers: list[int], fingerprint: str | None) -> None:
    """Refuse a (prune or merge) plan made for another model or covering other layers."""
    if fingerprint is not None and plan.source.get("fingerprint") != fingerprint:
        raise CompressError(
            f"the plan was made for {plan.source.get('model')} (fingerprint {plan.source.get('fingerprint')}), "
            f"not for this model ({fingerprint}): make a new plan with --plan-only"
        )
    if sorted(plan.layers) != sorted(moe_layers):
        raise CompressError(f"the plan covers layers {sorted(plan.layers)} but the model's MoE layers are {moe_layers}")


def _id_lists(value, where: str, key: str, what: str) -> dict[int, list[int]]:
    """{layer: ids} from a plan's JSON mapping, refusing anything but lists of whole numbers."""
    if not isinstance(value, dict) or not all(isinstance(ids, list) for ids in value.values()):
        raise CompressError(f'{where}: "{key}" must map each MoE layer to a list of {what} ids, e.g. {{"0": [0, 3, 5]}}')
    for layer, ids in value.items():
        if not str(layer).isdigit():
            raise CompressError(f"{where}: layer {layer!r} is not a decoder-layer number")
        bad = [e for e in ids if not isinstance(e, int) or isinstance(e, bool)]
        if bad:
            raise CompressError(f"{where}: layer {layer} names {bad[0]!r}, which is not {'an' if what[0] in 'aeiou' else 'a'} "
                               f"{what} id (whole numbers from 0)")
    return {int(layer): list(ids) for layer, ids in value.items()}


# --- plan files (prune plans here, tiered plans in recipes/tiered.py) ----------------------------------
def read_plan_file(path: str | os.PathLike):
    """The JSON of a plan file (refused when missing or not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"plan file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"plan file {path} is not valid JSON ({exc})") from None


def save_plan_file(path: str | os.PathLike, data: dict) -> None:
    with atomic_file(Path(path)) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")


def plan_file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` a JSON plan file declares (None for anything else)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def is_plan_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds a prune plan written by moe-compress."""
    return plan_file_format(path) == FORMAT


def team_plan_layers(teams: dict[int, list[int]], team_size: dict[int, int]) -> dict[int, list[int]]:
    """The member experts of the kept teams, in team order: what a team plan keeps of each layer."""
    return {layer: [t * team_size[layer] + m for t in kept for m in range(team_size[layer])] for layer, kept in teams.items()}
