"""The ``reconstruct`` criterion: per layer, the kept set whose routed output stays closest to the
full layer's on calibration tokens (in the spirit of NAEE, Lu et al. 2024).

For a sample of calibration tokens the experts' inputs and the router logits of every MoE layer are
captured in one forward pass; each expert's output f_j(x) is computed once for every sampled token.
The output of a kept set S is the family's routing over S alone (the other experts' logits at
−inf) applied to those outputs; its error is Σ_x ‖y_S(x) − y_all(x)‖². Every set is tried when
there are few (at most `EXHAUSTIVE_LIMIT`), otherwise experts are removed greedily, each time the
one whose removal raises the error least. Protected experts are never removed; with group-limited
routing only groups holding the most experts lose one, so every group ends with the same count.
"""

from __future__ import annotations

import itertools
import math

import torch
from tqdm.auto import tqdm

from ..errors import CompressError
from ..families import family_for_config
from ..kernels.reference import routed_expert_outputs

EXHAUSTIVE_LIMIT = 2000
DEFAULT_MAX_TOKENS = 2048


@torch.inference_mode()
def capture_layer_inputs(model, windows: torch.Tensor, batch_size: int, max_tokens: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{MoE layer: (experts' input hidden states [T, H], router logits [T, E])} for up to `max_tokens`
    tokens, from windows spread evenly over `windows`."""
    family = family_for_config(model.config)
    captured: dict[int, list] = {layer: [[], []] for layer in family.moe_layer_indices(model)}
    hooks = []
    for layer in captured:
        hooks.append(family.experts(model, layer).register_forward_pre_hook(
            lambda module, args, layer=layer: captured[layer][0].append(args[0].detach().float().cpu())))
        hooks.append(family.router(model, layer).register_forward_hook(
            lambda module, args, output, layer=layer: captured[layer][1].append(
                (output[0] if isinstance(output, tuple) else output).detach().float().cpu())))
    device = model.get_input_embeddings().weight.device
    rows = min(len(windows), max(1, math.ceil(max_tokens / windows.shape[1])))
    spread = torch.linspace(0, len(windows) - 1, rows).round().long()  # a sample of the whole calibration set
    try:
        for batch in windows[spread].split(batch_size):
            model.base_model(input_ids=batch.to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: (torch.cat(h)[:max_tokens], torch.cat(logits)[:max_tokens]) for layer, (h, logits) in captured.items()}


class LayerReconstruction:
    """Error of the layer output for candidate kept sets, from precomputed expert outputs."""

    def __init__(self, model, layer: int, hidden: torch.Tensor, logits: torch.Tensor):
        self.family = family_for_config(model.config)
        self.config = model.config
        self.buffers = {name: t.detach().float().cpu() for name, t in self.family.router_buffers(model, layer).items()}
        self.logits = logits
        experts = self.family.experts(model, layer)
        num_experts = logits.shape[1]
        all_ids = torch.arange(num_experts).expand(hidden.shape[0], num_experts)
        parameter = next(experts.parameters())
        with torch.inference_mode():
            outputs = routed_expert_outputs(experts, hidden.to(parameter.device, parameter.dtype), all_ids.to(parameter.device))
        self.outputs = outputs.float().cpu()  # [T, E, H]: f_j(x) for every expert
        self.full = self._output(torch.ones(num_experts, dtype=torch.bool))

    def _output(self, kept: torch.Tensor) -> torch.Tensor:
        dropped = ~kept
        logits = self.logits.masked_fill(dropped, float("-inf"))
        buffers = {name: t.masked_fill(dropped, float("-inf")) for name, t in self.buffers.items()}
        weights, index = self.family.route(logits, self.config, buffers)
        chosen = self.outputs.gather(1, index.unsqueeze(-1).expand(-1, -1, self.outputs.shape[-1]))
        return (chosen * weights.float().unsqueeze(-1)).sum(dim=1)

    def error(self, kept: list[int]) -> float:
        mask = torch.zeros(self.logits.shape[1], dtype=torch.bool)
        mask[kept] = True
        return float(((self._output(mask) - self.full) ** 2).sum())


def removal_path(layer: LayerReconstruction, down_to: int, protected: set[int], groups: int) -> list[tuple[list[int], float]]:
    """Greedy removal from every expert down to `down_to`: (kept set, error) after each step, each
    time removing the expert whose loss raises the error least (never a protected one; with
    group-limited routing only from the groups holding the most experts)."""
    num_experts = layer.logits.shape[1]
    group_size = num_experts // groups
    kept = list(range(num_experts))
    path = [(list(kept), 0.0)]
    while len(kept) > down_to:
        counts = [sum(1 for e in kept if e // group_size == g) for g in range(groups)]
        removable = [e for e in kept if e not in protected and counts[e // group_size] == max(counts)]
        if not removable:
            break
        errors = {e: layer.error([x for x in kept if x != e]) for e in removable}
        removed = min(removable, key=errors.get)
        kept.remove(removed)
        path.append((list(kept), errors[removed]))
    return path


def best_kept_set(layer: LayerReconstruction, keep: int, protected: set[int], groups: int) -> list[int]:
    num_experts = layer.logits.shape[1]
    free = [e for e in range(num_experts) if e not in protected]
    candidates = math.comb(len(free), keep - len(protected))
    if groups == 1 and candidates <= EXHAUSTIVE_LIMIT:
        options = (sorted([*protected, *extra]) for extra in itertools.combinations(free, keep - len(protected)))
        return min(options, key=layer.error)
    return removal_path(layer, keep, protected, groups)[-1][0]


def global_kept_sets(paths: dict[int, list[tuple[list[int], float]]], scale: dict[int, float], total: int) -> dict[int, list[int]]:
    """Per-layer kept sets under a total budget: starting from every expert, repeatedly take the next
    step of whichever layer's removal path raises its relative error (error / ‖full output‖²) least."""
    position = {layer: 0 for layer in paths}
    kept_count = sum(len(path[0][0]) for path in paths.values())
    while kept_count > total:
        steps = [((path[position[layer] + 1][1] - path[position[layer]][1]) / scale[layer], layer)
                 for layer, path in paths.items() if position[layer] + 1 < len(path)]
        if not steps:
            break
        _, layer = min(steps)
        position[layer] += 1
        kept_count -= 1
    return {layer: path[position[layer]][0] for layer, path in paths.items()}


def reconstruction_selection(
    model, windows: torch.Tensor, keep: int, *, batch_size: int = 8, protect: dict[int, set[int]] | None = None,
    groups: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = True, budget: str = "uniform",
    min_per_layer: int | None = None,
) -> dict[int, list[int]]:
    """Kept expert ids per MoE layer (ascending) that best reconstruct each layer's output.

    ``budget="uniform"`` keeps `keep` experts in every layer; ``"global"`` keeps `keep` × layers in
    total, at least `min_per_layer` (default: top-k) in each, spending the removals where they cost
    the least relative error (`global_kept_sets`)."""
    protect = protect or {}
    if any(len(experts) > keep for experts in protect.values()) and budget == "uniform":
        raise CompressError(f"more experts are protected in a layer than --keep {keep}: keep more or protect fewer")
    if budget == "global" and groups > 1:
        raise CompressError("--budget global is not available with group-limited routing (n_group > 1): use --budget uniform")
    family = family_for_config(model.config)
    minimum = max(family.top_k(model.config), min_per_layer or 0)
    if budget == "global" and keep < minimum:
        raise CompressError(f"--keep {keep} is below the per-layer minimum {minimum} (at least top-k) of a global budget")
    captured = capture_layer_inputs(model, windows, batch_size, max_tokens)
    kept, paths, scale = {}, {}, {}
    for layer, (hidden, logits) in tqdm(captured.items(), desc="reconstruction search", unit="layer", disable=not progress):
        reconstruction = LayerReconstruction(model, layer, hidden, logits)
        if budget == "uniform":
            kept[layer] = sorted(best_kept_set(reconstruction, keep, protect.get(layer, set()), groups))
        else:
            paths[layer] = removal_path(reconstruction, max(minimum, len(protect.get(layer, ()))), protect.get(layer, set()), groups)
            scale[layer] = max(float((reconstruction.full ** 2).sum()), 1e-30)
    if budget == "global":
        kept = {layer: sorted(ids) for layer, ids in global_kept_sets(paths, scale, keep * len(paths)).items()}
    return kept
