"""What the reduction jobs (prune, merge, tiered conversion, their size frontiers) share: how many
experts or teams a size keeps, the source as a plan records it, statistics checked against the
model, compensation fits, the merged-weights writer that compensated prunes also use, and how a
written checkpoint and a result are described. The jobs import from here, never from each other.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CompressError
from ..families.derived import TIERED
from .options import CalibrationOptions, SelectionOptions


def team_sizes(source) -> dict[int, int] | None:
    if source.derived != TIERED:
        return None
    return {int(layer): int(spec["team_size"]) for layer, spec in source.config.tiered_layers.items()}


def units_per_layer(source) -> dict[int, int]:
    """What a plan keeps per layer: experts, or a tiered source's teams."""
    sizes = team_sizes(source)
    return source.experts_per_layer if sizes is None else {layer: source.experts_per_layer[layer] // sizes[layer] for layer in sizes}


def keep_count(selection: SelectionOptions, source) -> int:
    units = units_per_layer(source)
    what = "teams" if source.derived == TIERED else "experts"
    if selection.keep is None and selection.keep_ratio is None:
        raise CompressError(f"say how many {what} to keep: --keep N or --keep-ratio R")
    if selection.keep_ratio is not None:
        return max(1, round(selection.keep_ratio * min(units.values())))
    if selection.keep > min(units.values()):
        raise CompressError(f"--keep {selection.keep} is more than the {min(units.values())} {what} per layer this model has")
    return selection.keep


def checked_statistics(stats, source):
    """Statistics (a file, or `RoutingStats`), refused when they were measured on another model."""
    from ..stats.routing_stats import RoutingStats

    where = "the statistics" if isinstance(stats, RoutingStats) else str(stats)
    stats = stats if isinstance(stats, RoutingStats) else RoutingStats.load(stats)
    if stats.metadata.get("fingerprint") != source.fingerprint:
        raise CompressError(
            f"{where} was measured on {stats.metadata.get('model')}, a different model than {source.name} "
            f"(fingerprints {stats.metadata.get('fingerprint')} vs {source.fingerprint}): profile this model")
    return stats


def plan_source(source) -> dict:
    return {"model": source.name, "fingerprint": source.fingerprint, "family": source.family.name,
            "num_experts": source.num_experts, "top_k": source.top_k,
            "experts_per_layer": {str(layer): count for layer, count in source.experts_per_layer.items()}}


def describe_written(staging: Path):
    """The description of a checkpoint just written (reading it back checks it as a source)."""
    from .source import open_model

    return open_model(str(staging), flag="").info


def result_record(result, **how) -> dict:
    """A prune or merge result as JSON (`how`: its criterion or grouping); a plan-only run's is its plan."""
    if result.after is None:
        return {"out": str(result.out), "plan": result.plan.to_dict()}
    b, a = result.before.parameters, result.after.parameters
    return {"out": str(result.out), **how, "experts_per_layer": result.plan.experts_per_layer,
            "top_k": {"before": result.plan.source["top_k"], "after": result.plan.top_k},
            "compensation": compensation_record(result.compensation),
            "parameters": {"before": b.total, "after": a.total}, "active_parameters": {"before": b.active, "after": a.active},
            "bytes": result.after.checkpoint_bytes, "shards": result.after.shards, "seconds": round(result.seconds, 2)}


def compensation(source, plan, calibration: CalibrationOptions, spill: Path, *, compensate: bool = True,
                 progress: bool = True) -> dict:
    """{layer: `CompensationFit`} of a merge plan (or a prune plan's `from_prune_plan`), fitted on
    every window of settled `calibration` in one streamed pass (`merging.compensate.LayerFit`): the
    down projections with `compensate`, the router rows with ``router: fitted``; each layer's refitted
    tensors are written into the directory `spill` as soon as they are made (in the dtype the
    output will store them in, bf16 for MXFP4), so memory holds one layer's at a time."""
    from ..merging.requests import CompensationRequest
    from .profile import collect

    _, _, fits = collect(source, calibration, search=CompensationRequest(plan, spill, spill_dtype(source), compensate),
                         statistics=False, progress=progress)
    return fits


def spill_dtype(source):
    """The dtype refitted tensors are spilled in: the one the output will store them in (bf16 for MXFP4;
    float32 for FP8, quantised on the source's block grid when written)."""
    import torch

    from ..checkpoint import fp8
    from ..checkpoint.dtypes import TORCH_DTYPES

    if source.layout.name == "mxfp4":
        return torch.bfloat16
    if fp8.is_fp8(source.raw_config):
        return torch.float32
    probe = source.layout.probe_keys(source.moe_layers[0])[-1]
    return TORCH_DTYPES[source.reader.entries[probe].dtype]


def compensation_record(fits: dict | None) -> dict | None:
    """The relative layer-output errors before and after compensation, per layer, on the tokens
    fitted and on the held-out ones."""
    if not fits or next(iter(fits.values())).error_before is None:
        return None
    return {str(layer): {"error_before": round(fit.error_before, 6), "error_after": round(fit.error_after, 6),
                         "heldout_error_before": round(fit.heldout_before, 6), "heldout_error_after": round(fit.heldout_after, 6)}
            for layer, fit in sorted(fits.items())}


def compensation_text(fits: dict | None) -> str:
    if not fits or next(iter(fits.values())).error_before is None:
        return ""

    def mean(name: str) -> float:
        return sum(getattr(fit, name) for fit in fits.values()) / len(fits)

    return (f", compensated: mean relative layer error {mean('error_before'):.4f} → {mean('error_after'):.4f} "
            f"(held out of the fit: {mean('heldout_before'):.4f} → {mean('heldout_after'):.4f})")


def write_weights(source, plan, staging: Path, *, fits: dict | None = None, dequantize: bool = False, progress: bool = True,
                  max_shard_size: int | None = None):
    """The merged (or compensated) checkpoint's weights and config, without provenance; its description."""
    from ..checkpoint.files import DEFAULT_MAX_SHARD_BYTES
    from ..merging.apply import write_merged_checkpoint

    write_merged_checkpoint(source, staging, plan, compensation=fits, dequantize=dequantize,
                            max_shard_bytes=max_shard_size or DEFAULT_MAX_SHARD_BYTES, progress=progress)
    return describe_written(staging)


def expert_format(source, dequantize: bool) -> str:
    """How the output stores its experts (said in the card and compress.json)."""
    from ..checkpoint import fp8

    if dequantize:
        return "bf16 (dequantised from MXFP4)"
    if source.layout.name == "mxfp4":
        return "MXFP4 (tensors that merging or compensation changed are re-quantised; the others are copied byte for byte)"
    if fp8.is_fp8(source.raw_config):
        return ("block-scaled FP8 (tensors that merging or compensation changed are re-quantised on the source's block grid; "
                "the others are copied byte for byte)")
    return "in the source's dtype"
