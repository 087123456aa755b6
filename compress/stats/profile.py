"""Profiling: run calibration windows through a model under a `RoutingStatsCollector`.

Under ``torchrun`` (torch.distributed initialised) the windows are cut into the same batches as
in a single process and dealt out round-robin, batch b to rank b mod world size; each rank
collects its own sums and one all-reduce adds them. Because every batch is computed exactly as
in one process and float sums are kept in fixed point (`routing_stats.to_fixed_point`), N
processes write the same file as one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..model_info import model_fingerprint
from .collector import RoutingStatsCollector
from .routing_stats import RoutingStats, metadata_for_sources


def world() -> tuple[int, int]:
    """(rank, world size) of the current torch.distributed group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.inference_mode()
def profile_windows(
    model, windows: torch.Tensor, *, batch_size: int, model_name: str, domain: str, data: str, progress: bool = True,
    skip_samples: int = 0,
) -> RoutingStats:
    """Routing statistics of `model` over token `windows` [N, L], summed over all processes;
    `skip_samples` records how many windows of the data came before these (shards of one run)."""
    rank, world_size = world()
    batches = list(windows.split(batch_size))[rank::world_size]
    input_device = model.get_input_embeddings().weight.device
    with RoutingStatsCollector(model) as collector:
        bar = tqdm(
            total=sum(batch.numel() for batch in batches), unit="tok", unit_scale=True, desc="profiling",
            disable=not progress or rank != 0, dynamic_ncols=True,
        )
        with bar:
            for batch in batches:
                model.base_model(input_ids=batch.to(input_device), use_cache=False)
                bar.update(batch.numel())
    family = collector.family
    model_record = {
        "fingerprint": model_fingerprint(model),
        "model": model_name,
        "family": family.name,
        "top_k": family.top_k(model.config),
    }
    source = {"domain": domain, "data": data, "skip_samples": skip_samples, "samples": windows.shape[0],
              "seq_len": windows.shape[1], "tokens": windows.numel()}
    stats = collector.stats(metadata_for_sources(model_record, [source]))
    if world_size > 1:
        all_reduce(stats, "cuda" if dist.get_backend() == "nccl" else "cpu")
    return stats


def all_reduce(stats: RoutingStats, device) -> None:
    """Sum `stats` over all processes in place: one all-reduce per dtype."""
    for dtype in (torch.int64, torch.float64):
        tensors = [t for layer in stats.layers.values() for t in layer.values() if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(device)
        dist.all_reduce(flat)
        for tensor, reduced in zip(tensors, flat.cpu().split([t.numel() for t in tensors])):
            tensor.copy_(reduced.view_as(tensor))
