"""The profiling job: routing statistics of a model on calibration text, to a file or in memory.

Under ``torchrun`` every process joins the group (gloo on CPU, nccl on GPU), profiles its share of
the batches and the sums are all-reduced; only rank 0 claims and writes the output.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .calibration import calibration_windows, settle
from .options import CalibrationOptions


@dataclass(frozen=True)
class ProfileResult:
    stats: object  # `stats.RoutingStats`
    out: Path | None
    model: str
    domain: str
    windows: int
    seq_len: int
    seconds: float
    processes: int

    def to_dict(self) -> dict:
        tokens = self.stats.metadata["tokens"]
        return {"out": str(self.out) if self.out else None, "model": self.model, "domain": self.domain,
                "data": self.stats.metadata["sources"][-1]["data"], "samples": self.windows, "seq_len": self.seq_len,
                "tokens": tokens, "moe_layers": len(self.stats.layers), "processes": self.processes,
                "seconds": round(self.seconds, 2), "tokens_per_second": round(tokens / self.seconds, 1)}

    def summary(self) -> str:
        from ..display import human_count

        tokens = self.stats.metadata["tokens"]
        return (f"profiled {human_count(tokens)} tokens ({self.windows} × {self.seq_len}) of {self.domain} on {self.model}, "
                f"{len(self.stats.layers)} MoE layers, in {self.seconds:.1f} s ({human_count(round(tokens / self.seconds))} tok/s"
                f"{f', {self.processes} processes' if self.processes > 1 else ''}) → {self.out}")


def collect(source, calibration: CalibrationOptions, *, search=None, statistics: bool = True, progress: bool = True,
            local_rank: int | None = None):
    """(calibration windows, statistics or None, the result of a per-layer `search` such as a
    `pruning.reconstruct.ReconstructRequest`, or None) for settled `calibration` options, one decoder layer
    at a time (`compress.layerwise.calibrate`)."""
    from ..layerwise import calibrate

    windows, data = calibration_windows(calibration, source.tokenizer())
    stats, kept = calibrate(source, windows, batch_size=calibration.batch_size, domain=calibration.domain, data=data,
                            skip_samples=calibration.skip_samples, dtype=calibration.dtype, device=calibration.device,
                            experts_per_group=calibration.experts_per_group, search=search, statistics=statistics, local_rank=local_rank,
                            progress=progress)
    return windows, stats, kept


@contextlib.contextmanager
def torchrun_group():
    """Join the torchrun process group when launched by torchrun; yields the local rank or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield local_rank
    finally:
        dist.destroy_process_group()


def profile(source, calibration: CalibrationOptions, *, out: str | os.PathLike | None = None, overwrite: bool = False,
            progress: bool = True) -> ProfileResult:
    """Profile `source` (a `SourceModel`) on the calibration text; with `out`, save the statistics
    there (checked and claimed before any work; replaced only with `overwrite`, and only when it
    is a statistics file)."""
    from ..checkpoint.output import claim_output
    from ..stats.profile import world
    from ..stats.routing_stats import is_routing_stats_file

    calibration = settle(calibration, source)
    main_process = int(os.environ.get("RANK", "0")) == 0
    claim = (claim_output(out, kind="file", overwrite=overwrite, sources=(source.path,), recognise=is_routing_stats_file,
                          what="statistics file") if out is not None and main_process else contextlib.nullcontext())
    with claim as claimed, torchrun_group() as local_rank:
        start = time.perf_counter()
        windows, stats, _ = collect(source, calibration, progress=progress, local_rank=local_rank)
        seconds = time.perf_counter() - start
        if claimed is not None:
            with claimed.write() as staging:
                stats.save(staging)
        processes = world()[1]
    return ProfileResult(stats, claimed.path if claimed is not None else None, source.name, calibration.domain,
                         len(windows), calibration.seq_len, seconds, processes)
