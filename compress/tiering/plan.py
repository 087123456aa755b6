"""Tiered plans: the teams, mixing weights and teams per token of every MoE layer, as a JSON file a
person can read and edit."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import CompressError
from ..pruning.plan import layer_number, read_plan_file, save_plan_file

PLAN_FORMAT = "moe-compress tiered plan"


PLAN_FORMAT_VERSION = 1


ROUTER_INIT = "mixing-weighted sum of the members' router rows and biases"


@dataclass
class TieredPlan:
    """The conversion of every MoE layer, as data a person can read and edit: its teams (original
    expert ids), their mixing weights and the teams chosen per token. Team router rows start as
    `ROUTER_INIT` (the one rule: teams of one then reproduce the original model exactly).

    The JSON file::

        {"format": "moe-compress tiered plan", "format_version": 1, "source": {…}, "team_top_k": 1,
         "router_init": "…", "layers": {"0": {"teams": [[3, 7], [1, 2]], "mixing": [[0.6, 0.4], [0.5, 0.5]]}},
         "provenance": {"clustering": "greedy", "statistics": {…}, "tool_version": "…", "command": "…"}}
    """

    source: dict
    teams: dict[int, list[list[int]]]
    mixing: dict[int, torch.Tensor]  # [teams, team_size] per layer
    team_top_k: int
    provenance: dict = field(default_factory=dict)

    @property
    def team_size(self) -> int:
        return len(next(iter(self.teams.values()))[0])

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "format_version": PLAN_FORMAT_VERSION, "source": self.source,
                "team_top_k": self.team_top_k, "router_init": ROUTER_INIT,
                "layers": {str(layer): {"teams": teams, "mixing": [[float(w) for w in row] for row in self.mixing[layer].tolist()]}
                           for layer, teams in sorted(self.teams.items())},
                "provenance": self.provenance}

    def save(self, path) -> None:
        save_plan_file(path, self.to_dict())

    @classmethod
    def load(cls, path) -> TieredPlan:
        data = read_plan_file(path)
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise CompressError(f"{path} is not a tiered plan written by `compress convert tiered --plan-only`")
        try:
            layers = {layer_number(layer, str(path)): spec for layer, spec in data["layers"].items()}
            teams = {layer: [[_expert_id(e) for e in team] for team in spec["teams"]] for layer, spec in layers.items()}
            mixing = {layer: torch.tensor(spec["mixing"], dtype=torch.float32) for layer, spec in layers.items()}
            plan = cls(dict(data["source"]), teams, mixing, _expert_id(data["team_top_k"]), dict(data.get("provenance") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CompressError(f"{path} is malformed ({exc!r}): compare it with a plan from --plan-only") from None
        if data.get("router_init", ROUTER_INIT) != ROUTER_INIT:
            raise CompressError(f"{path}: router_init must be {ROUTER_INIT!r}, the one rule the conversion knows")
        for layer, layer_teams in teams.items():
            if not layer_teams or not all(layer_teams):
                raise CompressError(f"{path}: layer {layer} has no teams or an empty team: every layer needs teams, "
                                    "each of at least one expert")
            weights = mixing[layer]
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or bool((weights.sum(-1) <= 0).any()):
                raise CompressError(f"{path}: layer {layer}'s mixing weights must be finite float32 numbers, 0 or more, "
                                    "and not all 0 in a team")
        return plan

    def check(self, moe_layers: list[int], experts_per_layer: dict[int, int], fingerprint: str | None = None) -> None:
        """Refuse a plan that does not fit the model or cannot be built."""
        if fingerprint is not None and self.source.get("fingerprint") != fingerprint:
            raise CompressError(f"the plan was made for {self.source.get('model')} (fingerprint {self.source.get('fingerprint')}), "
                                f"not for this model ({fingerprint}): make a new plan with --plan-only")
        if sorted(self.teams) != sorted(moe_layers):
            raise CompressError(f"the plan covers layers {sorted(self.teams)} but the model's MoE layers are {moe_layers}")
        for layer, teams in self.teams.items():
            members = [e for team in teams for e in team]
            if not teams or any(len(team) != self.team_size for team in teams):
                raise CompressError(f"layer {layer} of the plan needs teams of {self.team_size} experts each")
            if len(set(members)) != len(members) or any(not 0 <= e < experts_per_layer[layer] for e in members):
                raise CompressError(f"layer {layer} of the plan names an expert twice or out of range (0..{experts_per_layer[layer] - 1})")
            if tuple(self.mixing[layer].shape) != (len(teams), self.team_size):
                raise CompressError(f"layer {layer}: mixing must hold one weight per team member ({len(teams)} × {self.team_size})")
            if not 1 <= self.team_top_k <= len(teams):
                raise CompressError(f"team_top_k {self.team_top_k} must be between 1 and the {len(teams)} teams of layer {layer}")


def _expert_id(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    return value
