"""`PrunePlan`: which experts each MoE layer keeps, as data a person can read and edit.

The JSON file::

    {
      "format": "moe-compress prune plan", "format_version": 1,
      "source": {"model": "demo", "fingerprint": "sha256:…", "family": "gpt_oss",
                 "num_experts": 16, "top_k": 4},
      "top_k": 4,
      "layers": {"0": [0, 3, 4, …], "1": […], …},
      "provenance": {"criterion": "reap", "budget": "uniform", "statistics": {…}, "tool_version": "…"}
    }

``layers`` maps each MoE decoder layer to the original ids of the experts it keeps; the kept
experts are renumbered 0..N-1 in that order. ``top_k`` is the new number of experts per token:
``min(source top-k, kept)``. Plans with the same count in every layer are *uniform* (stock
transformers loads the result); others need the project's non-uniform model classes.
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
    source: dict  # model, fingerprint, family, num_experts, top_k
    layers: dict[int, list[int]]
    top_k: int
    provenance: dict = field(default_factory=dict)

    @property
    def uniform(self) -> bool:
        return len({len(kept) for kept in self.layers.values()}) == 1

    @property
    def experts_per_layer(self) -> dict[int, int]:
        return {layer: len(kept) for layer, kept in self.layers.items()}

    def removed(self, layer: int) -> list[int]:
        kept = set(self.layers[layer])
        return [e for e in range(self.source["num_experts"]) if e not in kept]

    # --- checking --------------------------------------------------------------------------------
    def check(self, moe_layers: list[int], num_experts: int, top_k: int, fingerprint: str | None = None,
              group_count: int = 1) -> None:
        """Refuse a plan that does not fit the model: other layers, bad ids, too few experts, or
        (with group-limited routing) unequal counts per routing group."""
        if fingerprint is not None and self.source.get("fingerprint") != fingerprint:
            raise CompressError(
                f"the plan was made for {self.source.get('model')} (fingerprint {self.source.get('fingerprint')}), "
                f"not for this model ({fingerprint}): make a new plan with --plan-only"
            )
        if sorted(self.layers) != sorted(moe_layers):
            raise CompressError(f"the plan covers layers {sorted(self.layers)} but the model's MoE layers are {moe_layers}")
        for layer, kept in self.layers.items():
            if not kept:
                raise CompressError(f"the plan keeps no experts in layer {layer}: keep at least one")
            if len(set(kept)) != len(kept) or any(not 0 <= e < num_experts for e in kept):
                raise CompressError(f"layer {layer} of the plan names duplicate or out-of-range experts (0..{num_experts - 1}): {kept}")
        expected_top_k = min(top_k, min(self.experts_per_layer.values()))
        if self.top_k != expected_top_k:
            raise CompressError(f"the plan's top_k is {self.top_k}; for these kept counts it must be min({top_k}, kept) = {expected_top_k}")
        if not self.uniform and min(self.experts_per_layer.values()) < top_k:
            raise CompressError(f"a non-uniform plan must keep at least top-k = {top_k} experts in every layer")
        if group_count > 1:
            group_size = num_experts // group_count
            for layer, kept in self.layers.items():
                per_group = [sum(1 for e in kept if e // group_size == g) for g in range(group_count)]
                if len(set(per_group)) != 1 or per_group[0] < 2:
                    raise CompressError(
                        f"layer {layer} keeps {per_group} experts in its {group_count} routing groups: group-limited "
                        "routing (n_group) needs the same number, at least 2, in every group"
                    )

    # --- file ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "top_k": self.top_k,
            "layers": {str(layer): kept for layer, kept in sorted(self.layers.items())},
            "provenance": {**self.provenance, "tool_version": self.provenance.get("tool_version", __version__)},
        }

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data, where: str = "the plan") -> "PrunePlan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CompressError(f"{where} is not a prune plan written by `compress prune --plan-only`")
        layers = data.get("layers")
        if not isinstance(layers, dict) or not all(isinstance(kept, list) for kept in layers.values()):
            raise CompressError(f'{where}: "layers" must map each MoE layer to a list of expert ids, e.g. {{"0": [0, 3, 5]}}')
        for layer, kept in layers.items():
            if not str(layer).isdigit():
                raise CompressError(f"{where}: layer {layer!r} is not a decoder-layer number")
            bad = [e for e in kept if not isinstance(e, int) or isinstance(e, bool)]
            if bad:
                raise CompressError(f"{where}: layer {layer} names {bad[0]!r}, which is not an expert id (whole numbers from 0)")
        if not isinstance(data.get("top_k"), int) or isinstance(data.get("top_k"), bool):
            raise CompressError(f'{where}: "top_k" must be a whole number, not {data.get("top_k")!r}')
        if not isinstance(data.get("source"), dict):
            raise CompressError(f'{where}: "source" is missing: compare it with a plan from --plan-only')
        provenance = data.get("provenance", {})
        return cls(source=dict(data["source"]), layers={int(layer): list(kept) for layer, kept in layers.items()},
                   top_k=data["top_k"], provenance=dict(provenance) if isinstance(provenance, dict) else {})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrunePlan":
        path = Path(path)
        if not path.is_file():
            raise CompressError(f"plan file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CompressError(f"plan file {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def is_plan_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds a plan written by moe-compress."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT
