"""The conversion's recipe: the YAML defaults (``recipes/tiered.yaml``) or a user's file over them,
and the tiers (teams per MoE layer) they give a model of any depth."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from ..errors import CompressError

RECIPE_KEYS = {"tiers": str, "designed_for": dict, "team_size": int, "team_top_k": int, "clustering": str}


def default_recipe() -> dict:
    return yaml.safe_load((Path(str(resources.files("compress.recipes"))) / "tiered.yaml").read_text())


def load_recipe(path: Path) -> dict:
    """The default recipe updated by a user's YAML file, every key and type checked."""
    recipe = default_recipe()
    try:
        given = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CompressError(f"recipe {path} is not valid YAML{where} ({getattr(exc, 'problem', None) or 'parse error'})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompressError(f"cannot read recipe {path} ({exc})") from None
    if given is None:
        return recipe
    if not isinstance(given, dict):
        raise CompressError(f"recipe {path} must be a YAML mapping of {', '.join(RECIPE_KEYS)}")
    for key, value in given.items():
        if key not in RECIPE_KEYS:
            raise CompressError(f"recipe {path}: unknown key {key!r} (known: {', '.join(RECIPE_KEYS)})")
        if not isinstance(value, RECIPE_KEYS[key]) or isinstance(value, bool):
            raise CompressError(f"recipe {path}: {key} must be a {RECIPE_KEYS[key].__name__}, not {value!r}")
    if "tiers" in given and "designed_for" not in given:
        recipe.pop("designed_for")  # the user's tiers are for their model as they are
    return {**recipe, **given}


def scaled_tiers(recipe: dict, moe_layers: list[int], num_experts: int, team_size: int) -> str:
    """The recipe's tiers for this model: unchanged when no ``designed_for`` is given; otherwise each
    MoE layer takes the tier of the layer at the same relative depth of the model the tiers were
    designed for, and the same share of the most teams a layer can hold."""
    designed = recipe.get("designed_for")
    if not designed:
        return str(recipe["tiers"])
    reference_layers = int(designed["moe_layers"])
    reference = parse_tiers(str(recipe["tiers"]), list(range(reference_layers)))
    reference_max = int(designed["experts"]) // int(designed["team_size"])
    most = max(1, num_experts // team_size)
    teams = [max(1, min(most, round(reference[i * reference_layers // len(moe_layers)] / reference_max * most)))
             for i in range(len(moe_layers))]
    parts, start = [], 0
    for i in range(1, len(teams) + 1):
        if i == len(teams) or teams[i] != teams[start] or moe_layers[i] != moe_layers[i - 1] + 1:
            first, last = moe_layers[start], moe_layers[i - 1]
            parts.append(f"{first}-{last}:{teams[start]}" if last != first else f"{first}:{teams[start]}")
            start = i
    return ",".join(parts)


def parse_tiers(text: str, moe_layers: list[int]) -> dict[int, int]:
    """``"0-7:4,8-17:8"`` → {layer: teams}; every MoE layer covered exactly once."""
    teams: dict[int, int] = {}
    try:
        for part in text.split(","):
            span, _, count = part.strip().partition(":")
            first, _, last = span.partition("-")
            for layer in range(int(first), int(last or first) + 1):
                if layer in teams:
                    raise CompressError(f"--tiers names layer {layer} twice")
                teams[layer] = int(count)
    except ValueError:
        raise CompressError(f"--tiers {text!r}: write FIRST-LAST:TEAMS ranges separated by commas, e.g. 0-7:4,8-17:8") from None
    missing = [layer for layer in moe_layers if layer not in teams]
    extra = [layer for layer in teams if layer not in moe_layers]
    if missing or extra:
        raise CompressError(f"--tiers must cover exactly the MoE layers {moe_layers[0]}-{moe_layers[-1]}: "
                            + (f"missing {missing}" if missing else f"{extra} are not MoE layers"))
    if any(count < 1 for count in teams.values()):
        raise CompressError("--tiers: every layer needs at least one team")
    return teams
