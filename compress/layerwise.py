"""The layer-wise calibration engine: calibration text through a checkpoint one decoder layer at a
time, the routed experts in bounded groups, with the model's own transformers code.

What `compress profile`, `prune` and `convert tiered` run (the in-memory `stats.RoutingStatsCollector`
stays for models already loaded). Memory is set by one layer without its experts plus one group
of experts plus the calibration activations, never by the model, so gpt-oss-120b calibrates where
it prunes:

1. **Embeddings**: only the rows of the tokens the calibration text uses are read.
2. **Layer arguments**: the model's own forward runs once per batch on the meta-device skeleton
   with its decoder layers replaced by recorders, so each layer later receives exactly what it
   receives in a whole-model forward (causal, sliding-window and padding masks, rotary
   embeddings, position ids) — nothing about attention is re-implemented here.
3. **Layers**: each decoder layer gets its own tensors from the checkpoint (router rows through
   the family's on-disk layout; attention, norms, shared experts and dense MLPs by name), runs
   every batch, and goes back to the meta device. The experts module stays on the meta device:
   its outputs are computed through the routed-expert reference reading `experts_per_group`
   experts at a time from the checkpoint (MXFP4 dequantised per group), exactly as for a loaded
   model (`kernels.reference.routed_expert_outputs`).
4. **Statistics** are recorded by the same collector, one `BatchState` per batch, so the sums
   are the whole-model path's. Under torchrun each process takes its share of the batches of
   every layer and the sums are all-reduced, as in `stats.profile`.
5. **Per-layer searches** (the ``reconstruct`` criterion, merge groupings) get each MoE layer's
   input for free: the search's sample windows run through the same layers, and every expert's
   outputs for them are computed in groups too (they also give those windows' routed outputs). A
   search alone (``statistics=False``) runs only the sample windows. A streamed search
   (compensation, fitted router rows) instead runs every window and is given each chunk's experts'
   inputs, router logits and routed output as a `LayerSample` (`_moe_layer`), after a sweep of
   the router's inputs and logits alone when it asks for one (``routing_first``).

Each MoE layer runs twice per batch, once up to its experts (`capture`) and once whole with the
experts' outputs given (`replay`); the second reuses the first's attention output.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import fp8
from .errors import CheckpointError, CompressError
from .families.derived import split_model_type
from .families.saved_names import saved_name

EXPERT_GROUP_BYTES = 512 * 2**20  # default budget for one group of experts in the compute dtype
# (token, expert) pairs whose outputs are computed together, each expert group read once for them:
# 2**17 pairs of gpt-oss's 2880-wide outputs are 1.5 GB in fp32.
CHUNK_PAIRS = 2**17


def compute_device(device: str, local_rank: int | None = None) -> torch.device:
    """The one device a layer-wise run computes on: the CPU or this process's GPU (`--device`
    checked as for a whole-model load)."""
    from .model_loading import device_map_for

    return torch.device("cpu") if device_map_for(device, local_rank) is None else torch.device("cuda", local_rank or 0)


def compute_dtype(dtype: str, device: torch.device, config) -> torch.dtype:
    """``auto``: float32 on the CPU, the checkpoint's dtype on a GPU (see `model_loading`)."""
    from .model_loading import compute_dtype as load_dtype

    chosen = load_dtype(dtype, None if device.type == "cpu" else "gpu")
    if chosen != "auto":
        return chosen
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.bfloat16
    return getattr(torch, stored) if isinstance(stored, str) else stored


class _ArgumentRecorder(nn.Module):
    """Stands in for a decoder layer: remembers what the model's forward passes it, returns its input."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, hidden_states, *args, **kwargs):
        self.calls.append((args, kwargs))
        return hidden_states


class LayerwiseModel:
    """A `SourceModel` run one decoder layer at a time (see the module docstring)."""

    def __init__(self, source, *, dtype: str = "auto", device: str = "auto", experts_per_group: int | None = None,
                 local_rank: int | None = None):
        from .model_loading import prepare_transformers

        prepare_transformers(source.raw_config["model_type"])
        self.source, self.family, self.meta = source, source.family, source.meta
        self.device = compute_device(device, local_rank)
        self.dtype = compute_dtype(dtype, self.device, source.config)
        self.layers = self.family.decoder_layers(self.meta)
        self.layers_path = self.family.modules["layers"]
        self.base_model_type = split_model_type(source.raw_config["model_type"])[0]
        self.experts_per_group = experts_per_group or self._default_group()

    def _default_group(self) -> int:
        """As many experts as fit in `EXPERT_GROUP_BYTES` in the compute dtype."""
        layer = self.source.moe_layers[0]
        experts = self.family.experts(self.meta, layer)
        count = self.family.num_experts_in(experts)
        per_expert = sum(t.numel() for t in self.family.expert_tensors_of(experts).values()) // count
        size = torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(count, EXPERT_GROUP_BYTES // max(per_expert * size, 1)))

    # --- inputs ----------------------------------------------------------------------------------
    def embeddings(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """Input embeddings of each batch, from the embedding rows of the tokens they use only."""
        if not batches:  # a torchrun process with no share of the batches
            return []
        embedding = self.meta.get_input_embeddings()
        name = next(name for name, module in self.meta.named_modules() if module is embedding)
        ids = torch.cat([b.reshape(-1) for b in batches]).unique()
        rows = self.source.reader.read_experts(f"{name}.weight", ids.tolist(), 0).to(self.device, self.dtype)
        position = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        position[ids] = torch.arange(len(ids))
        return [rows[position[b].to(self.device)] for b in batches]

    @contextmanager
    def _skeleton(self):
        """The base model with recorders for layers, an identity for the final norm and a real rotary embedding."""
        parent_path, _, attribute = self.layers_path.rpartition(".")
        base = self.meta.get_submodule(parent_path)
        saved = {name: getattr(base, name) for name in (attribute, "norm", "rotary_emb") if hasattr(base, name)}
        recorders = nn.ModuleList([_ArgumentRecorder() for _ in self.layers])
        setattr(base, attribute, recorders)
        if "norm" in saved:
            base.norm = nn.Identity()
        if "rotary_emb" in saved:
            base.rotary_emb = type(saved["rotary_emb"])(config=base.config).to(self.device)
        try:
            yield base, recorders
        finally:
            for name, module in saved.items():
                setattr(base, name, module)

    def layer_arguments(self, embeds: list[torch.Tensor], masks: list | None = None) -> list[list[tuple[tuple, dict]]]:
        """[batch][layer] → (args, kwargs) the model's forward gives that decoder layer."""
        calls = []
        with torch.inference_mode(), self._skeleton() as (base, recorders):
            for index, embedded in enumerate(embeds):
                mask = None if masks is None or masks[index] is None else masks[index].to(self.device)
                base(inputs_embeds=embedded, attention_mask=mask, use_cache=False)
                calls.append([recorder.calls.pop() for recorder in recorders])
        return calls

    # --- layers ----------------------------------------------------------------------------------
    def _disk_key(self, layer: int, name: str) -> str:
        router = self.family.modules["router"] + "."
        if layer in self.source.moe_layers and name.startswith(router):
            key = self.source.layout.router_key(layer, name[len(router):])
        else:
            key = f"{self.layers_path}.{layer}.{name}"
        return key if key in self.source.reader else saved_name(self.base_model_type, f"{self.layers_path}.{layer}.{name}")

    @contextmanager
    def materialized(self, layer: int):
        """Decoder layer `layer` with its own tensors from the checkpoint (experts excepted), on the
        compute device; back on the meta device afterwards."""
        module = self.layers[layer]
        experts_path = self.family.modules["experts"] if layer in self.source.moe_layers else None
        try:
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                if experts_path and name.startswith(experts_path + "."):
                    continue
                value = fp8.read_values(self.source.reader, self._disk_key(layer, name))
                if tuple(value.shape) != tuple(tensor.shape):
                    raise CheckpointError(f"{self._disk_key(layer, name)} has shape {list(value.shape)} but the config "
                                          f"implies {list(tensor.shape)}")
                value = value.to(self.device, self.dtype if value.is_floating_point() else value.dtype)
                owner_path, _, leaf = name.rpartition(".")
                owner = module.get_submodule(owner_path) if owner_path else module
                if leaf in owner._parameters:
                    owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
                else:
                    owner._buffers[leaf] = value
            yield module
        finally:
            if experts_path:
                module.get_submodule(experts_path).__dict__.pop("_routed_outputs", None)
            module.to("meta")

    def expert_tensors(self, layer: int, experts: list[int], names=None) -> dict[str, torch.Tensor]:
        """The fused expert tensors of `experts` in layer `layer` (all, or those in `names`), in the
        module's layout, on the compute device."""
        return {name: self.family.read_module_tensor(self.source.reader, layer, name, experts, self.source.layout,
                                                     dtype=self.dtype, device=self.device)
                for name in self.family.expert_tensors if names is None or name in names}

    def run_layer(self, module, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
        args, kwargs = call
        out = module(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def capture(self, module, hidden: torch.Tensor, call) -> Captured:
        """Run MoE layer `module` up to its experts (see `Captured`)."""
        experts = module.get_submodule(self.family.modules["experts"])
        router = module.get_submodule(self.family.modules["router"])
        seen = {}

        def stop(experts, hidden_states, top_k_index):
            raise _ExpertsReached(hidden_states, top_k_index)

        experts._routed_outputs = stop
        hooks = [router.register_forward_hook(lambda m, args, output: seen.__setitem__("logits", output))]
        if isinstance(getattr(module, "self_attn", None), nn.Module):
            # only the output: eager attention also returns its weights ([B, heads, L, L], 0.5 GB for
            # 8 × 512 tokens of gpt-oss), which the decoder layer discards
            hooks.append(module.self_attn.register_forward_hook(
                lambda m, args, output: seen.__setitem__("attention", (output[0], None) if isinstance(output, tuple) else output)))
        try:
            self.run_layer(module, hidden, call)
        except _ExpertsReached as reached:
            logits = seen["logits"][0] if isinstance(seen["logits"], tuple) else seen["logits"]
            return Captured(reached.hidden_states, reached.top_k_index, logits.reshape(len(reached.top_k_index), -1),
                            seen.get("attention"))
        finally:
            for hook in hooks:
                hook.remove()
        raise CompressError(f"decoder layer {type(module).__name__} never called its experts module")

    def replay(self, module, hidden: torch.Tensor, call, captured: Captured, outputs: torch.Tensor) -> torch.Tensor:
        """Run MoE layer `module` whole, its experts' outputs [T, k, H] given (computed by
        `chunk_outputs`) and its attention's output taken from `capture` (attention is the layer's
        largest cost besides the experts, and its output cannot change)."""
        module.get_submodule(self.family.modules["experts"])._routed_outputs = lambda experts, hidden_states, index: outputs
        attention = captured.attention
        if attention is not None:
            module.self_attn.forward = lambda *args, **kwargs: attention
        try:
            return self.run_layer(module, hidden, call)
        finally:
            if attention is not None:
                del module.self_attn.forward

    def chunk_outputs(self, layer: int, routed: list[tuple[torch.Tensor, torch.Tensor]], every_expert: torch.Tensor | None):
        """For several batches at once, each expert group read once: the routed experts' outputs
        [T, k, H] of each (inputs, ids) in `routed`, and every expert's outputs [T, E, H] for the
        inputs `every_expert` (the reconstruction search's tokens)."""
        from .kernels.reference import pair_outputs_in_groups

        experts = self.family.experts(self.meta, layer)
        count = self.family.num_experts_in(experts)
        batches = []
        for hidden_states, index in routed:
            tokens = torch.arange(len(index), device=index.device).repeat_interleave(index.shape[1])
            batches.append((hidden_states, tokens, index.reshape(-1)))
        if every_expert is not None:
            tokens = torch.arange(len(every_expert), device=every_expert.device).repeat_interleave(count)
            batches.append((every_expert, tokens, torch.arange(count, device=every_expert.device).repeat(len(every_expert))))
        outputs = pair_outputs_in_groups(experts, batches, lambda group: self.expert_tensors(layer, group), self.experts_per_group)
        routed_outputs = [out.view(len(index), index.shape[1], -1) for out, (_, index) in zip(outputs, routed)]
        search = outputs[-1].view(len(every_expert), count, -1) if every_expert is not None else None
        return routed_outputs, search


class Captured(NamedTuple):
    """An MoE layer's state where its experts are called: their inputs [T, H], the routed ids
    [T, k], the router logits [T, E], and the attention's output (None when the layer has no
    `self_attn`) for `replay` to reuse."""

    inputs: torch.Tensor
    ids: torch.Tensor
    logits: torch.Tensor
    attention: tuple | torch.Tensor | None


class _ExpertsReached(Exception):
    """Raised from inside a layer's forward once its experts' inputs are known (see `capture`)."""

    def __init__(self, hidden_states, top_k_index):
        super().__init__("experts reached")
        self.hidden_states, self.top_k_index = hidden_states, top_k_index


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system after a layer. glibc keeps them otherwise,
    and each layer's temporaries leave the heap a little larger (≈ 50 MB a layer on gpt-oss
    shapes), so memory would grow with depth. (Fixing glibc's mmap threshold at 1 MiB instead
    makes even the peak exactly flat, but costs ≈ 20% in time: every buffer is then fresh pages.)"""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _chunks(pairs: list[int], budget: int) -> list[list[int]]:
    """Consecutive batch indices whose (token, expert) pairs fit in `budget` together (at least one batch each)."""
    chunks, current, used = [], [], 0
    for index, count in enumerate(pairs):
        if current and used + count > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(index)
        used += count
    return chunks + ([current] if current else [])


@torch.inference_mode()
def calibrate(source, windows: torch.Tensor, *, batch_size: int, domain: str, data: str, skip_samples: int = 0,
              dtype: str = "auto", device: str = "auto", experts_per_group: int | None = None,
              search=None, statistics: bool = True, attention_mask: torch.Tensor | None = None,
              local_rank: int | None = None, progress: bool = True):
    """(routing statistics or None, `search`'s result or None) of `source` on token `windows`
    [N, L], one decoder layer at a time. `search` is a per-layer search (a `pruning.reconstruct.ReconstructRequest`, a
    merge grouping, compensation: see `ReconstructRequest`) answered on the sample windows of the
    same pass; without `statistics` only those windows run. `attention_mask` [N, L] marks padding
    (left out of every statistic, as in the whole-model collector)."""
    from .layer_sample import search_windows
    from .stats.collector import RoutingStatsCollector, batch_state
    from .stats.profile import all_reduce, world
    from .stats.routing_stats import metadata_for_sources

    engine = LayerwiseModel(source, dtype=dtype, device=device, experts_per_group=experts_per_group, local_rank=local_rank)
    rank, world_size = world()
    streamed = getattr(search, "streamed", False)  # given every window, in chunks, not a sample
    if streamed and statistics:
        raise ValueError("a streamed search runs without statistics")
    batches = list(windows.split(batch_size))[rank::world_size] if statistics else list(windows.split(batch_size)) if streamed else []
    masks = None if attention_mask is None or not statistics else list(attention_mask.split(batch_size))[rank::world_size]
    samples, search_tokens = [], 0
    if search is not None:
        search.check(source.top_k)
    if search is not None and not streamed:
        sample, search_tokens = search_windows(windows, source.top_k, source.num_experts,
                                                             source.config.hidden_size)
        samples = list(sample.split(batch_size))
    hidden = engine.embeddings(batches + samples)
    calls = engine.layer_arguments(hidden, None if masks is None else [*masks, *[None] * len(samples)])
    states = [batch_state(*batch.shape, None if masks is None else masks[index]) if statistics else None
              for index, batch in enumerate(batches)]
    states += [None] * len(samples)  # the search's windows are run, not counted
    # A search that also streams every counted window once it has answered a layer (a merge's fitted
    # router rows and compensation) is given them when this pass runs them all (with statistics, in one process).
    observe = search is not None and not streamed and statistics and world_size == 1 and getattr(search, "observes", False)
    answers = {}
    with RoutingStatsCollector(source.meta) as collector:
        bar = tqdm(total=len(engine.layers), desc="calibrating layers", unit="layer", disable=not progress or rank != 0)
        for layer in range(len(engine.layers) if hidden else 0):
            with engine.materialized(layer) as module:
                if layer not in source.moe_layers:
                    for index in range(len(hidden)):
                        hidden[index] = engine.run_layer(module, hidden[index], calls[index][layer])
                else:
                    stream = search.start(layer, windows.numel()) if streamed else None
                    answer = _moe_layer(engine, module, layer, hidden, calls, states, collector, len(batches), search_tokens,
                                        search, stream, observe, windows.numel())
                    if answer is not None:
                        answers[layer] = answer
            release_freed_memory()
            bar.update(1)
        bar.close()
    family = source.family
    record = {"fingerprint": source.fingerprint, "model": source.name, "family": family.name, "top_k": source.top_k}
    run = {"domain": domain, "data": data, "skip_samples": skip_samples, "samples": windows.shape[0],
           "seq_len": windows.shape[1], "tokens": windows.numel()}
    stats = collector.stats(metadata_for_sources(record, [run])) if statistics else None
    if world_size > 1 and statistics:
        import torch.distributed as dist

        all_reduce(stats, "cuda" if dist.get_backend() == "nccl" else "cpu")
    return stats, (search.finish(answers) if search is not None else None)


def _moe_layer(engine, module, layer: int, hidden: list, calls: list, states: list, collector, first_sample: int,
               search_tokens: int, search, stream=None, observe: bool = False, tokens: int = 0):
    """One MoE layer over every batch, in chunks: capture each batch's experts' inputs, compute the
    chunk's expert outputs reading each expert group once, answer the search on its sample
    windows (or give a streamed search's `stream` every chunk), and replay the batches with those
    outputs (recording statistics). With `observe` the sample windows come first and the answer
    opens a stream for the layer's `tokens` (``search.stream(layer, answer, tokens)``, closed by
    ``search.end_stream``) that every later chunk is given, as a streamed search's is."""
    from .layer_sample import LayerSample

    buffers = {name: t.detach().float().cpu() for name, t in engine.family.router_buffers(engine.meta, layer).items()}
    rows = {name: t.detach().float().cpu() for name, t in engine.family.router_parameters(engine.meta, layer).items()}

    def layer_sample(inputs, logits, outputs=None, full=None):
        return LayerSample(layer, engine.family, engine.source.config, buffers, inputs, logits.float().cpu(), outputs,
                           engine.family.experts(engine.meta, layer), functools.partial(engine.expert_tensors, layer),
                           engine.experts_per_group, full, rows)

    top_k = engine.source.top_k
    count = engine.source.experts_per_layer[layer]
    pairs = [len(h.reshape(-1, h.shape[-1])) * (count if index >= first_sample else top_k) for index, h in enumerate(hidden)]
    answer = None
    chunks = _chunks(pairs[:first_sample], CHUNK_PAIRS)
    sample = list(range(first_sample, len(hidden)))
    if sample and observe:
        chunks.insert(0, sample)
    elif sample:  # the search's windows stay together, with the last chunk when they fit beside it
        if chunks and sum(pairs[i] for i in chunks[-1] + sample) <= CHUNK_PAIRS:
            chunks[-1] += sample
        else:
            chunks.append(sample)

    def route_first(stream) -> None:
        if getattr(stream, "routing_first", False):  # the router's inputs and logits of every batch, before the main sweep
            for index in range(first_sample):
                captured = engine.capture(module, hidden[index], calls[index][layer])
                stream.add_routing(layer_sample(captured.inputs, captured.logits))

    route_first(stream)
    for chunk in chunks:
        captured = {index: engine.capture(module, hidden[index], calls[index][layer]) for index in chunk}
        counted = [index for index in chunk if index < first_sample]
        searched = [index for index in chunk if index >= first_sample]
        routed_inputs = [(captured[index].inputs, captured[index].ids) for index in counted]
        inputs = None
        if searched:
            sample_ids = torch.cat([captured[index].ids for index in searched])
            inputs = torch.cat([captured[index].inputs for index in searched])[:search_tokens]
            logits = torch.cat([captured[index].logits for index in searched])[:search_tokens]
        routed, every = engine.chunk_outputs(layer, routed_inputs, inputs)
        streamed = None
        if stream is not None and counted:
            full = torch.cat([_routed_sum(engine, buffers, captured[index], outputs) for index, outputs in zip(counted, routed)])
            streamed = layer_sample(torch.cat([captured[index].inputs for index in counted]),
                                    torch.cat([captured[index].logits for index in counted]), full=full)
        if searched:
            answer = search.answer(layer_sample(inputs, logits, every.float().cpu()))
            if observe:
                stream = search.stream(layer, answer, tokens)
                route_first(stream)
            # The search tokens' routed outputs are among every expert's outputs. The sample's later
            # tokens (past the search's last) get none: in a causal decoder they never reach it.
            ids = sample_ids[:search_tokens]
            sample_outputs = every.new_zeros(*sample_ids.shape, every.shape[-1])
            sample_outputs[:len(ids)] = every[torch.arange(len(ids), device=ids.device)[:, None], ids]
            routed += sample_outputs.split([len(captured[index].ids) for index in searched])
        for position, index in enumerate(chunk):
            collector.current = states[index]
            hidden[index] = engine.replay(module, hidden[index], calls[index][layer], captured[index], routed[position])
            routed[position] = None  # the chunk's outputs go as they are used (1.5 GB for a chunk of gpt-oss)
        collector.current = None
        if streamed is not None:
            del captured, routed
            stream.add(streamed)
    if observe:
        search.end_stream(layer, stream)
        return answer
    return search.end(layer, stream) if stream is not None else answer


def _routed_sum(engine, buffers: dict, captured: Captured, outputs: torch.Tensor) -> torch.Tensor:
    """Σ_k g_k·f_k(x) [T, H] (float32, CPU) of a batch from its routed experts' outputs [T, k, H]
    (in the order of the ids the model chose), weighted as the family's routing weighs them
    (with the layer's router `buffers`)."""
    weights, ids = engine.family.route(captured.logits.float().cpu(), engine.source.config, buffers)
    chosen = captured.ids.cpu()
    position = (chosen.unsqueeze(1) == ids.unsqueeze(2)).int().argmax(dim=2)  # where each of `ids` is among `chosen`
    outputs = outputs.float().cpu().gather(1, position.unsqueeze(-1).expand(-1, -1, outputs.shape[-1]))
    return (outputs * weights.float().unsqueeze(-1)).sum(dim=1)
