"""The routing analyses of the research notes, as functions returning plain data (JSON-ready).

Token-level (a forward or a generation): `trace`, `context`, `dynamics`, `force`.
Interventions measured by perplexity with a bootstrap interval: `ablate`, `topk`.
From statistics or weights: `circuits`, `specialists`, `similarity`. A learned probe: `predict`.
"""

from __future__ import annotations

import copy
import math

import torch

from ..errors import CompressError
from ..families import family_for_config
from ..kernels.reference import routed_expert_outputs
from ..pruning.apply import apply_plan_to_model
from ..pruning.plan import PrunePlan
from ..stats import RoutingStats
from .routing import forced_routing, forward_with_router_outputs, perplexity_change, routed, token_routing, top_k_override, window_nll


def _check_length(model, length: int) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise CompressError(f"the prompt has {length} tokens, beyond the model's {positions} positions: shorten it")


def _encode(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise CompressError("the prompt is empty")
    _check_length(model, ids.shape[1])
    return ids


# --- token level -----------------------------------------------------------------------------------
def trace(model, tokenizer, prompt: str) -> dict:
    """Each token's top-k experts and weights at every MoE layer, with top-1 weight and entropy."""
    ids = _encode(model, tokenizer, prompt)
    routing = token_routing(model, ids)
    tokens = [tokenizer.decode([t]) for t in ids[0].tolist()]
    return {"tokens": [
        {"token": text, "position": position, "layers": {
            str(layer): {"experts": r.experts[position].tolist(), "weights": [round(w, 4) for w in r.weights[position].tolist()],
                         "top1_weight": round(float(r.top1_weight[position]), 4), "entropy": round(float(r.entropy[position]), 4)}
            for layer, r in routing.items()}}
        for position, text in enumerate(tokens)]}


def context(model, tokenizer, token: str, contexts: list[str]) -> dict:
    """The routing of the same token in different contexts: its experts per layer, and the mean
    overlap (Jaccard) of its expert sets between every pair of occurrences."""
    token_ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(token_ids) != 1:
        raise CompressError(f"{token!r} is {len(token_ids)} tokens for this tokenizer: pick a single token")
    occurrences = []
    for text in contexts:
        ids = _encode(model, tokenizer, text)
        positions = (ids[0] == token_ids[0]).nonzero().flatten().tolist()
        if not positions:
            raise CompressError(f"the context {text!r} does not contain the token {token!r}")
        routing = token_routing(model, ids)
        for position in positions:
            occurrences.append({"context": text, "position": position,
                                "experts": {str(layer): sorted(r.experts[position].tolist()) for layer, r in routing.items()}})
    overlap = {}
    for layer in occurrences[0]["experts"]:
        sets = [set(o["experts"][layer]) for o in occurrences]
        pairs = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]
        overlap[layer] = round(sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs), 4) if pairs else 1.0
    return {"token": token, "occurrences": occurrences, "mean_jaccard_by_layer": overlap}


def dynamics(model, tokenizer, prompt: str, max_new_tokens: int = 32) -> dict:
    """Routing while generating greedily: per layer, the overlap (Jaccard) of consecutive generated
    tokens' expert sets and the experts changed per token (handoffs)."""
    ids = _encode(model, tokenizer, prompt)
    _check_length(model, ids.shape[1] + max_new_tokens)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id or 0)
    new = generated.shape[1] - ids.shape[1]
    routing = token_routing(model, generated)
    layers = {}
    for layer, r in routing.items():
        sets = [set(r.experts[p].tolist()) for p in range(ids.shape[1], generated.shape[1])]
        pairs = list(zip(sets, sets[1:]))
        if not pairs:
            continue
        jaccard = sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs)
        handoffs = sum(len(b - a) for a, b in pairs) / len(pairs)
        layers[str(layer)] = {"consecutive_jaccard": round(jaccard, 4), "handoffs_per_token": round(handoffs, 4)}
    return {"generated_tokens": new, "text": tokenizer.decode(generated[0, ids.shape[1]:]), "layers": layers,
            "mean_consecutive_jaccard": round(sum(v["consecutive_jaccard"] for v in layers.values()) / max(len(layers), 1), 4),
            "mean_handoffs_per_token": round(sum(v["handoffs_per_token"] for v in layers.values()) / max(len(layers), 1), 4)}


def force(model, tokenizer, prompt: str, experts: dict[int, int], max_new_tokens: int = 32) -> dict:
    """Generate with every token routed to one expert per listed layer (weight 1)."""
    ids = _encode(model, tokenizer, prompt)
    _check_length(model, ids.shape[1] + max_new_tokens)
    with torch.no_grad():
        normal = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id or 0)
        with forced_routing(model, experts):
            forced = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id or 0)
    return {"forced": {str(layer): expert for layer, expert in experts.items()},
            "normal": tokenizer.decode(normal[0, ids.shape[1]:]), "text": tokenizer.decode(forced[0, ids.shape[1]:])}


# --- interventions -----------------------------------------------------------------------------------
def ablate(model, windows: torch.Tensor, experts: dict[int, list[int]], progress: bool = False) -> dict:
    """Perplexity with the listed experts removed (in memory) against the unablated model."""
    family = family_for_config(model.config)
    num_experts, top_k = family.num_experts(model.config), family.top_k(model.config)
    layers = family.moe_layer_indices(model)
    kept = {layer: [e for e in range(num_experts) if e not in set(experts.get(layer, []))] for layer in layers}
    if any(not k for k in kept.values()):
        raise CompressError("the ablation removes every expert of a layer: keep at least one")
    plan = PrunePlan({"num_experts": num_experts, "top_k": top_k}, kept, min(top_k, min(len(k) for k in kept.values())))
    ablated = copy.deepcopy(model)
    apply_plan_to_model(ablated, plan)
    result = perplexity_change(window_nll(model, windows, desc="base" if progress else None),
                               window_nll(ablated, windows, desc="ablated" if progress else None))
    return {"ablated": {str(layer): sorted(e) for layer, e in experts.items()}, "windows": len(windows), **result}


def topk(model, windows: torch.Tensor, ks: list[int], progress: bool = False) -> dict:
    """Perplexity at each top-k against the model's own k (the seeds' interference experiment)."""
    base = window_nll(model, windows, desc="base" if progress else None)
    rows = {}
    for k in ks:
        with top_k_override(model, k):
            rows[str(k)] = perplexity_change(base, window_nll(model, windows, desc=f"k={k}" if progress else None))
    return {"model_top_k": family_for_config(model.config).top_k(model.config), "windows": len(windows), "k": rows}


# --- statistics and weights --------------------------------------------------------------------------
def circuits(stats: RoutingStats, top: int = 3) -> dict:
    """Layer-to-layer alignment from the transition counts: for consecutive MoE layers, the share of
    each expert's onward selections that go to its most frequent successor (mass-weighted), the
    strongest pipelines (followed by most frequent successor), and the full-path consistency =
    product of the alignments — the seeds' 0.875^23 argument, measured."""
    layers = stats.layer_indices
    alignment, pipelines = {}, []
    for previous, layer in zip(layers, layers[1:]):
        t = stats.layers[layer]["transitions"].double()
        alignment[f"{previous}->{layer}"] = round(float(t.max(dim=1).values.sum() / t.sum().clamp(min=1)), 4)
    first = stats.layers[layers[0]]["selections"]
    for start in torch.argsort(first, descending=True, stable=True)[:top].tolist():
        path, probability, expert = [start], 1.0, start
        for layer in layers[1:]:
            row = stats.layers[layer]["transitions"][expert].double()
            nxt = int(row.argmax())
            probability *= float(row[nxt] / row.sum().clamp(min=1))
            path.append(nxt)
            expert = nxt
        pipelines.append({"experts": path, "probability": round(probability, 6)})
    consistency = math.prod(alignment.values()) if alignment else 1.0
    mean = sum(alignment.values()) / len(alignment) if alignment else 1.0
    return {"alignment": alignment, "mean_alignment": round(mean, 4), "full_path_consistency": consistency,
            "uniform_baseline": round(1 / stats.num_experts(layers[0]), 4), "pipelines": pipelines}


def specialists(stats_by_domain: dict[str, RoutingStats], threshold: float | None = None) -> dict:
    """Per expert, how its usage rate is shared across domains; specialists have a share of at
    least `threshold` in one domain (default: twice the uniform share 1/D, at most 0.9)."""
    if len(stats_by_domain) < 2:
        raise CompressError("specialists compares domains: pass statistics of at least two domains")
    threshold = threshold if threshold is not None else min(0.9, 2 / len(stats_by_domain))
    fingerprints = {s.metadata.get("fingerprint") for s in stats_by_domain.values()}
    if len(fingerprints) != 1:
        raise CompressError("the statistics come from different models: profile one model on every domain")
    first = next(iter(stats_by_domain.values()))
    found, concentration = [], []
    for layer in first.layer_indices:
        rates = torch.stack([s.layers[layer]["selections"].double() / max(int(s.layers[layer]["tokens"]), 1)
                             for s in stats_by_domain.values()])  # [domains, E]
        shares = rates / rates.sum(dim=0, keepdim=True).clamp(min=1e-12)
        best = shares.max(dim=0)
        concentration.append(float(best.values.mean()))
        for expert in range(rates.shape[1]):
            if float(best.values[expert]) >= threshold and float(rates[:, expert].sum()) > 0:
                found.append({"layer": layer, "expert": expert, "domain": list(stats_by_domain)[int(best.indices[expert])],
                              "share": round(float(best.values[expert]), 4)})
    return {"domains": list(stats_by_domain), "threshold": threshold, "specialists": found,
            "mean_max_share": round(sum(concentration) / len(concentration), 4),
            "uniform_share": round(1 / len(stats_by_domain), 4),
            "verdict": f"{len(found)} domain specialists" if found else "no expert is a domain specialist at this threshold"}


@torch.no_grad()
def similarity(model, layer: int, windows: torch.Tensor | None = None, threshold: float = 0.9, max_tokens: int = 1024) -> dict:
    """Pairwise expert similarity in one layer: cosine of the flattened weights and, on calibration
    tokens, cosine of the experts' outputs; pairs above `threshold` on both are merge candidates."""
    family = family_for_config(model.config)
    if layer not in family.moe_layer_indices(model):
        raise CompressError(f"layer {layer} is not a MoE layer of this model")
    experts = family.experts(model, layer)
    # Fused module tensors hold the experts along dim 0 in every family.
    flat = torch.cat([getattr(experts, name).detach().float().flatten(1) for name in family.expert_tensors], dim=1)
    flat = torch.nn.functional.normalize(flat, dim=1)
    weight_cosine = flat @ flat.T
    output_cosine = None
    if windows is not None:
        from ..layer_sample import capture_layer_inputs

        hidden, _ = capture_layer_inputs(model, windows, batch_size=8, max_tokens=max_tokens)[layer]
        count = family.num_experts_in(experts)
        parameter = next(experts.parameters())
        outputs = routed_expert_outputs(experts, hidden.to(parameter.device, parameter.dtype),
                                        torch.arange(count, device=parameter.device).expand(len(hidden), count)).float().cpu()
        per_expert = torch.nn.functional.normalize(outputs.permute(1, 0, 2).reshape(count, -1), dim=1)
        output_cosine = per_expert @ per_expert.T
    count = weight_cosine.shape[0]
    candidates = [
        {"experts": [i, j], "weight_cosine": round(float(weight_cosine[i, j]), 4),
         **({"output_cosine": round(float(output_cosine[i, j]), 4)} if output_cosine is not None else {})}
        for i in range(count) for j in range(i + 1, count)
        if weight_cosine[i, j] >= threshold and (output_cosine is None or output_cosine[i, j] >= threshold)
    ]
    off_diagonal = ~torch.eye(count, dtype=torch.bool)
    return {"layer": layer, "threshold": threshold, "merge_candidates": candidates,
            "max_weight_cosine": round(float(weight_cosine[off_diagonal].max()), 4),
            "max_output_cosine": round(float(output_cosine[off_diagonal].max()), 4) if output_cosine is not None else None,
            "weight_cosine": [[round(float(v), 4) for v in row] for row in weight_cosine]}


# --- probe -------------------------------------------------------------------------------------------
def predict(model, windows: torch.Tensor, probe_layer: int, steps: int = 300, lr: float = 0.05, seed: int = 0,
            progress: bool = False) -> dict:
    """A linear probe from decoder layer `probe_layer`'s output to every later MoE layer's expert
    choices; on held-out tokens (the last fifth of windows): exact top-k set accuracy, precision and
    recall of the predicted top-k, and prefetch efficiency = the share of the experts a token uses
    that the prediction would have prefetched (recall of a k-expert prefetch)."""
    family = family_for_config(model.config)
    layers = [layer for layer in family.moe_layer_indices(model) if layer > probe_layer]
    if not 0 <= probe_layer < len(family.decoder_layers(model)) or not layers:
        raise CompressError(f"--probe-layer {probe_layer} must be a decoder layer with MoE layers after it")
    out, router_outputs = forward_with_router_outputs(model, windows, output_hidden_states=True)
    features = out.hidden_states[probe_layer + 1].reshape(-1, out.hidden_states[0].shape[-1]).float().cpu()
    features = (features - features.mean(0)) / features.std(0).clamp(min=1e-6)
    split = int(len(windows) * 0.8) * windows.shape[1]
    if split == 0 or split >= len(features):
        raise CompressError("predict needs at least 5 windows (4/5 to train the probe, 1/5 to test it)")
    torch.manual_seed(seed)
    per_layer, total_hits, total_used = {}, 0, 0
    from tqdm.auto import tqdm

    for layer in tqdm(layers, desc="training probes", unit="layer", disable=not progress):
        _, _, experts = routed(model, layer, router_outputs[layer])
        experts = experts.cpu()
        num_experts, k = family.num_experts_in(family.experts(model, layer)), experts.shape[1]
        target = torch.zeros(len(experts), num_experts).scatter_(1, experts, 1.0)
        probe = torch.nn.Linear(features.shape[1], num_experts)
        optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(features[:split]), target[:split])
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = probe(features[split:]).topk(k, dim=-1).indices
        actual = experts[split:]
        hits = torch.zeros(len(actual), num_experts).scatter_(1, predicted, 1.0) * target[split:]
        hit_count = int(hits.sum())
        exact = float((hits.sum(1) == k).float().mean())
        per_layer[str(layer)] = {"exact_set_accuracy": round(exact, 4), "precision": round(hit_count / predicted.numel(), 4),
                                 "recall": round(hit_count / actual.numel(), 4)}
        total_hits += hit_count
        total_used += actual.numel()
    return {"probe_layer": probe_layer, "held_out_tokens": len(features) - split, "layers": per_layer,
            "prefetch_efficiency": round(total_hits / max(total_used, 1), 4)}
