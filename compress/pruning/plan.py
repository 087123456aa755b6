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


class LayerPlan:
    """What prune and merge plans share: ``layers`` maps each MoE layer to its new experts (kept
    ids, or merge groups), ``source`` describes the model the plan was made for."""

    @property
    def uniform(self) -> bool:
        return len(set(self.experts_per_layer.values())) == 1

    @property
    def experts_per_layer(self) -> dict[int, int]:
        return {layer: len(new) for layer, new in self.layers.items()}

    def source_experts(self, layer: int) -> int:
        """How many experts layer `layer` holds in the source."""
        per_layer = self.source.get("experts_per_layer") or {}
        return int(per_layer.get(str(layer), self.source["num_experts"]))

    def check_model(self, source) -> None:
        """`check` (each plan class's own) against an opened model (`jobs.SourceModel`)."""
        self.check(source.moe_layers, source.experts_per_layer, source.top_k, source.fingerprint,
                   source.family.routing_groups(source.config))


@dataclass
class PrunePlan(LayerPlan):
    source: dict  # model, fingerprint, family, num_experts, top_k, experts_per_layer
    layers: dict[int, list[int]]
    top_k: int
    provenance: dict = field(default_factory=dict)
    teams: dict[int, list[int]] | None = None  # tiered sources only

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
        check_plan_source(self, moe_layers, experts_per_layer, fingerprint)
        for layer, kept in self.layers.items():
            if not kept:
                raise CompressError(f"the plan keeps no experts in layer {layer}: keep at least one")
            count = experts_per_layer[layer]
            if len(set(kept)) != len(kept) or any(not 0 <= e < count for e in kept):
                raise CompressError(f"layer {layer} of the plan names duplicate or out-of-range experts (0..{count - 1}): {kept}")
        if self.teams is not None:
            return  # team plans are made from the source's teams (`team_plan_layers`); their top-k counts teams
        check_plan_top_k(self, top_k, "kept")
        if group_count > 1:
            for layer, kept in self.layers.items():
                group_size = experts_per_layer[layer] // group_count
                check_routing_group_counts(layer, [sum(1 for e in kept if e // group_size == g) for g in range(group_count)])

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
        source, top_k, provenance = plan_header(data, where)
        return cls(source=source, layers=layers, top_k=top_k, provenance=provenance, teams=teams)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrunePlan:
        return cls.from_dict(read_plan_file(path), str(path))


def check_plan_source(plan, moe_layers: list[int], experts_per_layer: dict[int, int], fingerprint: str | None) -> None:
    """Refuse a (prune or merge) plan made for another model, covering other layers or describing
    other expert counts than the model's."""
    if fingerprint is not None and plan.source.get("fingerprint") != fingerprint:
        raise CompressError(
            f"the plan was made for {plan.source.get('model')} (fingerprint {plan.source.get('fingerprint')}), "
            f"not for this model ({fingerprint}): make a new plan with --plan-only"
        )
    if sorted(plan.layers) != sorted(moe_layers):
        raise CompressError(f"the plan covers layers {sorted(plan.layers)} but the model's MoE layers are {moe_layers}")
    for layer in moe_layers:  # the plan's ids are read against these counts (a merge plan's matrices are sized by them)
        try:
            claimed = plan.source_experts(layer)
        except (AttributeError, KeyError, TypeError, ValueError):
            claimed = None
        if claimed != experts_per_layer[layer]:
            raise CompressError(f'the plan\'s "source" says layer {layer} has {claimed} experts, but the model has '
                                f"{experts_per_layer[layer]}: it was edited or made for another model; make a new plan with --plan-only")


def check_plan_top_k(plan, top_k: int, what: str) -> None:
    """Refuse a plan whose top-k is not min(source top-k, new experts), or a non-uniform plan with
    fewer than top-k new experts in a layer; `what` names the new experts ("kept", "groups")."""
    fewest = min(plan.experts_per_layer.values())
    if plan.top_k != min(top_k, fewest):
        raise CompressError(f"the plan's top_k is {plan.top_k}; for these {what} counts it must be "
                            f"min({top_k}, {what}) = {min(top_k, fewest)}")
    if not plan.uniform and fewest < top_k:
        raise CompressError(f"a non-uniform plan must keep at least top-k = {top_k} experts in every layer")


def check_routing_group_counts(layer: int, per_group: list[int]) -> None:
    """Refuse new-expert counts per routing group that group-limited routing (n_group) cannot use."""
    if len(set(per_group)) != 1 or per_group[0] < 2:
        raise CompressError(f"layer {layer} keeps {per_group} experts in its {len(per_group)} routing groups: group-limited "
                            "routing (n_group) needs the same number, at least 2, in every group")


def plan_header(data: dict, where: str) -> tuple[dict, int, dict]:
    """(source, top_k, provenance) of a plan's JSON, refusing a missing source or a top_k that is no whole number."""
    if not isinstance(data.get("top_k"), int) or isinstance(data.get("top_k"), bool):
        raise CompressError(f'{where}: "top_k" must be a whole number, not {data.get("top_k")!r}')
    if not isinstance(data.get("source"), dict):
        raise CompressError(f'{where}: "source" is missing: compare it with a plan from --plan-only')
    provenance = data.get("provenance", {})
    return dict(data["source"]), data["top_k"], dict(provenance) if isinstance(provenance, dict) else {}


def _id_lists(value, where: str, key: str, what: str) -> dict[int, list[int]]:
    """{layer: ids} from a plan's JSON mapping, refusing anything but lists of whole numbers."""
    if not isinstance(value, dict) or not all(isinstance(ids, list) for ids in value.values()):
        raise CompressError(f'{where}: "{key}" must map each MoE layer to a list of {what} ids, e.g. {{"0": [0, 3, 5]}}')
    for layer, ids in value.items():
        layer_number(layer, where)
        bad = [e for e in ids if not isinstance(e, int) or isinstance(e, bool)]
        if bad:
            raise CompressError(f"{where}: layer {layer} names {bad[0]!r}, which is not {'an' if what[0] in 'aeiou' else 'a'} "
                               f"{what} id (whole numbers from 0)")
    return {int(layer): list(ids) for layer, ids in value.items()}


def layer_number(key, where: str) -> int:
    """A plan's layer key ("0", "12") as a number; anything else is refused (``"²"`` is a digit to
    `str.isdigit` but no layer)."""
    if not (isinstance(key, str) and key.isascii() and key.isdigit()):
        raise CompressError(f"{where}: layer {key!r} is not a decoder-layer number")
    return int(key)


# --- plan files (prune plans here, tiered plans in tiering/plan.py) ----------------------------------
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
