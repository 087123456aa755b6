"""Applying a `MergePlan` (with optional compensation): to a loaded model, or streaming to a
checkpoint on disk through the same writer as pruning (`checkpoint.tensor_plan.write_tensors`).

On disk, a planned layer's expert tensors are replaced by the new experts' (in the source's key
convention), each computed from its group's members only, so memory holds one group's members and
one output tensor at a time:

* fused and per-expert layouts: Σ_m w_m·W_m in float64, stored in the source dtype;
* block-scaled FP8 (per-expert keys): the members are dequantised, merged and quantised again on
  the source's block grid, each weight with its ``weight_scale_inv``;
* MXFP4: the members are dequantised, merged and re-quantised to MXFP4 (or, with ``dequantize``,
  every expert of the output is written in bf16 in the fused layout and ``quantization_config``
  goes); an expert tensor that neither merging nor compensation changed is copied byte for byte, so a plan of one-expert groups
  writes exactly what pruning writes;
* compensation (`compensate.CompensationFit`) replaces each new expert's down projection and bias
  by the refitted ones; the gate/up projections of an unmerged expert are still copied as stored.

Router rows (weights, biases, DeepSeek's correction bias) are `router_matrix` times the source's,
or with ``router: fitted`` the weights and biases the fit made (`router_fit`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import fp8, mxfp4
from ..checkpoint.dtypes import TORCH_DTYPES
from ..checkpoint.files import write_config
from ..checkpoint.tensor_plan import CheckpointPlan, TensorCopy, write_tensors
from ..checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, TensorSpec
from ..errors import CompressError
from ..families import MoEFamily, family_for_config
from ..models.modeling_moe_compress import set_counts
from ..pruning.apply import copy_modeling_files, pruned_config, set_config_counts, stack_keys
from . import align
from .compensate import ROUTER_PREFIX
from .plan import MergePlan


def combine(tensor: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """`matrix` [G, E] times `tensor` along its expert dimension `dim` (float64), in the tensor's dtype."""
    out = torch.tensordot(matrix.to(tensor.device), tensor.movedim(dim, 0).double(), dims=1)
    return out.movedim(0, dim).to(tensor.dtype)


def router_rows(tensor: torch.Tensor, matrix: torch.Tensor, dim: int, fitted: torch.Tensor | None) -> torch.Tensor:
    """A new router tensor: the `fitted` rows (``router: fitted``) where the fit made them, else
    `matrix` times the source's `tensor`."""
    if fitted is None:
        return combine(tensor, matrix, dim)
    shape = list(tensor.shape)
    shape[dim] = matrix.shape[0]
    return fitted.reshape(shape).to(tensor.device, tensor.dtype)


def apply_merge_to_model(model, plan: MergePlan, compensation: dict | None = None) -> None:
    """Merge a loaded model's experts in place (routers, counts and config too), with the refitted
    down projections of `compensation` {layer: `CompensationFit`} when given."""
    family = family_for_config(model.config)
    layers = family.decoder_layers(model)
    for layer in plan.layers:
        experts = family.experts(model, layer)
        refitted = compensation[layer].load() if compensation is not None else {}
        present = {name: getattr(experts, name).detach() for name in family.expert_tensors if getattr(experts, name, None) is not None}
        matrix = plan.merge_matrix(layer)
        groups = [align.merge_members(family, {name: t.index_select(family.expert_tensors[name]["expert_dim"],
                                                                    torch.tensor(members, device=t.device))
                                               for name, t in present.items()}, matrix[g, members], plan.alignment,
                                              plan.stored_permutations(layer, g), plan.merge_method)
                  for g, members in enumerate(plan.layers[layer])]
        new_tensors = {name: refitted[name].to(t.device, t.dtype) if name in refitted
                       else torch.stack([group[name] for group in groups], dim=family.expert_tensors[name]["expert_dim"])
                       for name, t in present.items()}
        router_owners, router_matrix = family.router_tensor_modules(model, layer), plan.router_matrix(layer)
        new_tensors |= {name: router_rows(getattr(router_owners[name], name).detach(), router_matrix, spec["expert_dim"],
                                          refitted.get(ROUTER_PREFIX + name))
                        for name, spec in family.router_tensors.items() if getattr(router_owners[name], name, None) is not None}
        owners = {name: experts for name in present} | router_owners
        for name, new in new_tensors.items():
            module, old = owners[name], getattr(owners[name], name)
            if isinstance(old, torch.nn.Parameter):
                setattr(module, name, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module.register_buffer(name, new)
        set_counts(layers[layer], family.moe_layout, len(plan.layers[layer]), plan.top_k)
    set_config_counts(model, family, plan)


class _LayerMerger:
    """The new experts of one layer, computed from the checkpoint group by group."""

    def __init__(self, reader, family: MoEFamily, layout, plan: MergePlan, layer: int, compensation=None):
        self.reader, self.family, self.layout, self.plan, self.layer = reader, family, layout, plan, layer
        self.merge_matrix = plan.merge_matrix(layer)
        self.compensation = compensation  # the layer's `CompensationFit`, loaded when first needed
        self._refitted = None
        self._last = None  # (name, group, tensor): per-expert parts reuse their group's module tensor
        self._quantized: dict[str, tuple] = {}
        self._permutations: dict[int, list] = {}  # the last group's
        self._fp8_part: tuple = (None, None)  # ((name, group, part), quantised): the last FP8 part's

    def refitted(self) -> dict:
        if self._refitted is None:
            self._refitted = {} if self.compensation is None else self.compensation.load()
        return self._refitted

    def unchanged(self, name: str, group: int) -> bool:
        """Whether new expert `group`'s tensor `name` is a source expert's, as stored."""
        return self.plan.is_copy(self.layer, group) and name not in self.refitted()

    def _read(self, name: str, members: list[int]) -> torch.Tensor:
        return self.family.read_module_tensor(self.reader, self.layer, name, members, self.layout, dtype=torch.float32)

    def permutations(self, group: int) -> list:
        """Each member's neuron permutation (`align.group_permutations`), found once per group from
        all of its members' tensors."""
        if group not in self._permutations:
            members = self.plan.layers[self.layer][group]
            found = self.plan.stored_permutations(self.layer, group) or [None] * len(members)
            if self.plan.alignment == "weights" and len(members) > 1:
                tensors = {name: self._read(name, members) for name in self.family.expert_tensors}
                found = align.group_permutations(self.family, tensors, self.plan.alignment)
            self._permutations = {group: found}
        return self._permutations[group]

    def module_tensor(self, name: str, group: int) -> torch.Tensor:
        """New expert `group`'s tensor `name` in the module orientation (float32, no expert dimension)."""
        if self._last is not None and self._last[:2] == (name, group):
            return self._last[2]
        if name in self.refitted():
            return self.refitted()[name][group].float()
        members = self.plan.layers[self.layer][group]
        merged = align.merge_members(self.family, {name: self._read(name, members)}, self.merge_matrix[group, members],
                                     permutations=self.permutations(group), method=self.plan.merge_method)
        self._last = (name, group, merged[name])
        return self._last[2]

    def stacked(self, name: str, dtype: torch.dtype, source_key: str | None) -> torch.Tensor:
        """All new experts' tensor `name`, [G, …] in `dtype` (unchanged experts read as stored from `source_key`)."""
        dim = self.family.expert_tensors[name]["expert_dim"]
        parts = []
        for g, members in enumerate(self.plan.layers[self.layer]):
            if source_key is not None and self.unchanged(name, g):
                parts.append(self.reader.read_experts(source_key, members, dim).select(dim, 0))
            else:
                parts.append(self.module_tensor(name, g).to(dtype))
        return torch.stack(parts, dim=dim)

    def quantized(self, name: str, base: str, part: int) -> torch.Tensor:
        """MXFP4 ``_blocks`` (part 0) or ``_scales`` (part 1) of all new experts' tensor `name`."""
        if base not in self._quantized:
            blocks, scales = [], []
            for g, members in enumerate(self.plan.layers[self.layer]):
                if self.unchanged(name, g):
                    blocks.append(self.reader.read_experts(base + "_blocks", members, 0)[0])
                    scales.append(self.reader.read_experts(base + "_scales", members, 0)[0])
                else:
                    b, s = mxfp4.quantize(self.module_tensor(name, g).transpose(-1, -2))
                    blocks.append(b)
                    scales.append(s)
            self._quantized = {base: (torch.stack(blocks), torch.stack(scales))}
        return self._quantized[base][part]

    def per_expert_part(self, name: str, group: int, index: int, sizes: list[int], dtype: torch.dtype,
                        fp8_entries: tuple | None = None) -> tuple[torch.Tensor, ...]:
        """Part `index` of new expert `group`'s per-expert keys making module tensor `name` (split on
        dim 0), in `dtype`; with `fp8_entries` (the part's weight and multiplier entries) quantised
        to FP8 on the source's block grid: (weight, block multipliers)."""
        part = self.module_tensor(name, group).split(sizes, dim=0)[index]
        if not fp8_entries:
            return (part.to(dtype),)
        if self._fp8_part[0] != (name, group, index):  # the weight and its multipliers are written one after the other
            weight, scale = fp8_entries
            block = (weight.shape[0] // scale.shape[0], weight.shape[1] // scale.shape[1])
            self._fp8_part = ((name, group, index), fp8.quantize(part, block))
        return self._fp8_part[1]


def plan_merged_tensors(reader, family: MoEFamily, layout, plan: MergePlan, num_layers: int,
                        compensation: dict | None = None, dequantize: bool = False) -> CheckpointPlan:
    """What the merged checkpoint holds, decided from headers alone (see the module docstring)."""
    result = CheckpointPlan()
    done: set[int] = set()
    for key in stack_keys(reader, family, num_layers, result.dropped_keys):
        entry = reader.entries[key]
        role = family.classify_key(key)
        if role.kind == "other":
            result.copies.append(TensorCopy(key, key))
            result.specs.append(TensorSpec(key, TORCH_DTYPES[entry.dtype], tuple(entry.shape)))
            continue
        if role.layer not in plan.layers:
            raise CompressError(f"{key} holds experts of layer {role.layer}, which the plan does not cover")
        groups = len(plan.layers[role.layer])
        if role.kind == "router":
            shape = list(entry.shape)
            shape[role.expert_dim] = groups
            matrix = plan.router_matrix(role.layer)
            fit = compensation[role.layer] if compensation is not None and plan.router == "fitted" else None
            result.copies.append(TensorCopy(key, key, compute=lambda t, m=matrix, d=role.expert_dim, f=fit, n=role.suffix:
                                            router_rows(t, m, d, None if f is None else f.tensor(ROUTER_PREFIX + n))))
            result.specs.append(TensorSpec(key, TORCH_DTYPES[entry.dtype], tuple(shape)))
            continue
        result.dropped_keys.append(key)
        if role.layer not in done:
            done.add(role.layer)
            merger = _LayerMerger(reader, family, layout, plan, role.layer, None if compensation is None else compensation[role.layer])
            for copy, spec in _layer_tensors(reader, family, layout, merger, groups, dequantize):
                result.copies.append(copy)
                result.specs.append(spec)
    return result


def _layer_tensors(reader, family: MoEFamily, layout, merger: _LayerMerger, groups: int, dequantize: bool):
    """(copy, spec) of every output tensor of one merged layer, in the output's key convention."""
    layer = merger.layer
    fused = family.layouts["fused"]
    for name, spec in layout.module_tensors.items():
        if isinstance(spec, list):  # per-expert keys, concatenated on dim 0 into the module tensor
            prefix = layout.expert_prefix
            entries = [reader.entries[prefix.format(layer=layer, expert=0) + part] for part in spec]
            scales = [reader.entries.get(fp8.scale_key(prefix.format(layer=layer, expert=0) + part)) for part in spec]
            sizes = [entry.shape[0] for entry in entries]
            for g, members in enumerate(merger.plan.layers[layer]):
                for index, (part, entry, scale) in enumerate(zip(spec, entries, scales)):
                    key, stored = prefix.format(layer=layer, expert=g) + part, prefix.format(layer=layer, expert=members[0]) + part
                    outputs = [(key, entry)] + ([(fp8.scale_key(key), scale)] if scale is not None else [])
                    if merger.unchanged(name, g):  # as stored (with its FP8 block multipliers)
                        for (new_key, new_entry), source_key in zip(outputs, (stored, fp8.scale_key(stored))):
                            yield TensorCopy(source_key, new_key), TensorSpec(new_key, TORCH_DTYPES[new_entry.dtype], new_entry.shape)
                        continue
                    for which, (new_key, new_entry) in enumerate(outputs):
                        compute = (lambda _, n=name, g=g, i=index, s=sizes, e=entry, c=scale, w=which:
                                   merger.per_expert_part(n, g, i, s, TORCH_DTYPES[e.dtype], c and (e, c))[w])
                        yield TensorCopy(None, new_key, compute=compute), TensorSpec(new_key, TORCH_DTYPES[new_entry.dtype],
                                                                                     new_entry.shape)
        elif isinstance(spec, dict):  # MXFP4
            base = layout.experts_prefix.format(layer=layer) + spec["mxfp4"]
            blocks = reader.entries[base + "_blocks"]
            if dequantize:
                key = fused.experts_prefix.format(layer=layer) + fused.module_tensors[name]
                shape = (groups, blocks.shape[2] * mxfp4.BLOCK_VALUES, blocks.shape[1])
                yield (TensorCopy(None, key, compute=lambda _, n=name: merger.stacked(n, torch.bfloat16, None)),
                       TensorSpec(key, torch.bfloat16, shape))
                continue
            for part, suffix in enumerate(("_blocks", "_scales")):
                entry = reader.entries[base + suffix]
                yield (TensorCopy(None, base + suffix, compute=lambda _, n=name, b=base, p=part: merger.quantized(n, b, p)),
                       TensorSpec(base + suffix, torch.uint8, (groups, *entry.shape[1:])))
        else:  # a fused tensor (also an MXFP4 layout's biases)
            key = layout.experts_prefix.format(layer=layer) + spec
            if fp8.scale_key(key) in reader:
                raise CompressError(f"{key} holds every expert in FP8 in one tensor; merging and compensation re-quantise "
                                    "FP8 experts stored one key per expert (as published FP8 checkpoints are) only")
            dtype = TORCH_DTYPES[reader.entries[key].dtype]
            yield (TensorCopy(None, key, compute=lambda _, n=name, k=key, d=dtype: merger.stacked(n, d, k)),
                   TensorSpec(key, dtype, (groups, *reader.entries[key].shape[1:])))


def merged_config(config: dict, family: MoEFamily, plan: MergePlan, dequantize: bool) -> dict:
    config = pruned_config(config, family, plan)
    return {key: value for key, value in config.items() if key != "quantization_config"} if dequantize else config


def write_merged_checkpoint(source, staging: str | Path, plan: MergePlan, *, compensation: dict | None = None,
                            dequantize: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                            progress: bool = False) -> CheckpointPlan:
    """Write the merged weights, config and support files of `source` (an opened `jobs.SourceModel`)
    into `staging` (a claimed output's staging directory)."""
    staging = Path(staging)
    if dequantize and source.layout.name != "mxfp4":
        raise CompressError("--dequantize writes an MXFP4 source's experts in bf16; this model's experts are not MXFP4")
    config, family, reader = source.raw_config, source.family, source.reader
    tensors = plan_merged_tensors(reader, family, source.layout, plan, int(config.get("num_hidden_layers") or 0), compensation,
                                  dequantize)
    write_tensors(reader, staging, tensors, max_shard_bytes, progress)
    written = merged_config(config, family, plan, dequantize)
    write_config(staging, written)
    copy_modeling_files(source.path, staging, written)
    return tensors
