"""`RoutingStats`: additive routing statistics of one model, and their safetensors file.

Every statistic is a sum over tokens, so runs over shards, domains or processes merge by
addition. Per MoE layer (keyed by its decoder-layer index, so DeepSeek's dense layers are simply
absent), with E that layer's expert count:

===============  =========  =======  ===========================================================
name             shape      dtype    sum over the tokens that passed the layer of ...
===============  =========  =======  ===========================================================
tokens           []         int64    1
selections       [E]        int64    1 for each expert in the token's top-k
top1             [E]        int64    1 for the expert with the largest routing weight
position0        [E]        int64    selections, counting only the first token of each sequence
gate_mass        [E]        float64  the routing weight g_j(x) (after the family's normalisation)
reap_sum         [E]        float64  g_j(x)·‖f_j(x)‖₂ (REAP saliency = reap_sum / selections)
ean_sum          [E]        float64  ‖f_j(x)‖₂, the routed expert's output norm (EAN; MAN = ean_sum / selections)
ean_sq_sum       [E]        float64  ‖f_j(x)‖₂² (MSAN = ean_sq_sum / selections; absent from files written before it)
coactivation     [E, E]     int64    1 for each pair (i, j) both in the top-k (diagonal = selections)
entropy_sum      []         float64  entropy (nats) of the router's distribution over all experts
transitions      [E', E]    int64    1 for each (i at the previous MoE layer, j here); not on the first
===============  =========  =======  ===========================================================

Float sums are accumulated in multiples of 2⁻²⁰ (`FIXED_POINT_STEP`): each batch's contribution
is rounded once, after which additions are exact in float64 (up to 2³³ ≈ 8.6e9 per entry), so
merging halves, or summing over processes in any order, gives bit-identical files.

The file is plain safetensors: tensors ``layers.<layer>.<name>`` plus one metadata entry,
``routing_stats``, holding JSON (see `RoutingStats.metadata`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .. import __version__
from ..checkpoint.output import atomic_file
from ..errors import CompressError, DataError

FORMAT = "moe-compress routing statistics"
FORMAT_VERSION = 1
FIXED_POINT_STEP = 2.0**-20

COUNT_STATS = ("selections", "top1", "position0")
FLOAT_STATS = ("gate_mass", "reap_sum", "ean_sum", "ean_sq_sum")
ALL_STATS = ("tokens", *COUNT_STATS, *FLOAT_STATS, "coactivation", "entropy_sum", "transitions")


def to_fixed_point(values: torch.Tensor) -> torch.Tensor:
    """float64 `values` rounded to multiples of `FIXED_POINT_STEP` (so later sums are exact)."""
    return torch.round(values.double() / FIXED_POINT_STEP) * FIXED_POINT_STEP


def empty_layer_stats(num_experts: int, previous_experts: int | None, device=None) -> dict[str, torch.Tensor]:
    """Zeroed statistics of one MoE layer; `previous_experts` is None for the first MoE layer."""
    counts = dict(dtype=torch.int64, device=device)
    floats = dict(dtype=torch.float64, device=device)
    stats = {
        "tokens": torch.zeros((), **counts),
        **{name: torch.zeros(num_experts, **counts) for name in COUNT_STATS},
        **{name: torch.zeros(num_experts, **floats) for name in FLOAT_STATS},
        "coactivation": torch.zeros(num_experts, num_experts, **counts),
        "entropy_sum": torch.zeros((), **floats),
    }
    if previous_experts is not None:
        stats["transitions"] = torch.zeros(previous_experts, num_experts, **counts)
    return stats


@dataclass
class RoutingStats:
    """Per-MoE-layer sums (see the module docstring) plus what they were measured on.

    ``metadata``: ``fingerprint`` (config hash + expert tensor shapes: only statistics of the same
    model merge), ``model``, ``family``, ``top_k``, ``domain``, ``sources`` (one record per profiling
    run: domain, data, samples, seq_len, tokens), ``samples``, ``tokens``, ``seq_len`` (None when
    merged runs differ) and ``tool_version``.
    """

    layers: dict[int, dict[str, torch.Tensor]]
    metadata: dict = field(default_factory=dict)

    # --- reading ---------------------------------------------------------------------------------
    @property
    def layer_indices(self) -> list[int]:
        return sorted(self.layers)

    def num_experts(self, layer: int) -> int:
        return self.layers[layer]["selections"].shape[0]

    def stacked(self, name: str) -> torch.Tensor:
        """A per-expert statistic of every MoE layer as one [layers, E] tensor (layers must agree on E)."""
        sizes = {self.num_experts(layer) for layer in self.layer_indices}
        if len(sizes) != 1:
            raise CompressError(f"the MoE layers have different expert counts ({sorted(sizes)}); read them one layer at a time")
        return torch.stack([self.layers[layer][name] for layer in self.layer_indices])

    # --- combining -------------------------------------------------------------------------------
    def merged_with(self, other: RoutingStats) -> RoutingStats:
        """The sum of two statistics of the same model (refuses different fingerprints)."""
        if self.metadata.get("fingerprint") != other.metadata.get("fingerprint"):
            raise CompressError(
                f"these statistics come from different models ({self.metadata.get('model')} with fingerprint "
                f"{self.metadata.get('fingerprint')} vs {other.metadata.get('model')} with "
                f"{other.metadata.get('fingerprint')}); only statistics of the same model can be merged"
            )
        # a statistic only one side has (a file written before it existed) is left out of the sum
        layers = {
            layer: {name: tensor + other.layers[layer][name] for name, tensor in stats.items() if name in other.layers[layer]}
            for layer, stats in self.layers.items()
        }
        sources = self.metadata["sources"] + other.metadata["sources"]
        return RoutingStats(layers, metadata_for_sources(self.metadata, sources))

    # --- file ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The safetensors file's exact bytes (the same inputs always give the same bytes)."""
        tensors = {
            f"layers.{layer}.{name}": tensor.detach().cpu().contiguous()
            for layer, stats in self.layers.items()
            for name, tensor in stats.items()
        }
        metadata = {"routing_stats": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **self.metadata})}
        return save(tensors, metadata=metadata)

    def sha256(self) -> str:
        """The hash of the file these statistics are saved as (recorded in plans and provenance)."""
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the safetensors file atomically."""
        with atomic_file(Path(path)) as temporary:
            temporary.write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RoutingStats:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"statistics file {path} does not exist: create one with `compress profile`")
        try:
            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("routing_stats")
                metadata = json.loads(raw) if raw else {}
                if metadata.get("format") != FORMAT:
                    raise DataError(f"{path} is not a routing statistics file written by `compress profile`")
                if metadata.get("format_version") != FORMAT_VERSION:
                    raise DataError(
                        f"{path} has statistics format version {metadata.get('format_version')}; this moe-compress "
                        f"reads version {FORMAT_VERSION}: profile the model again"
                    )
                layers: dict[int, dict[str, torch.Tensor]] = {}
                for key in handle.keys():
                    _, layer, name = key.split(".", 2)
                    layers.setdefault(int(layer), {})[name] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable safetensors statistics file ({exc})") from None
        for key in ("format", "format_version"):
            metadata.pop(key)
        return cls(dict(sorted(layers.items())), metadata)


def is_routing_stats_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a statistics file written by `compress profile` (read from its header only)."""
    from ..checkpoint.reader import read_safetensors_header

    try:
        raw = (read_safetensors_header(Path(path)).get("__metadata__") or {}).get("routing_stats")
        return json.loads(raw).get("format") == FORMAT if raw else False
    except (CompressError, ValueError, AttributeError):
        return False


def metadata_for_sources(base: dict, sources: list[dict]) -> dict:
    """Metadata for statistics made of `sources` (one record per profiling run) of the model in `base`."""
    domains = list(dict.fromkeys(source["domain"] for source in sources))
    seq_lens = {source["seq_len"] for source in sources}
    return {
        **{key: base.get(key) for key in ("fingerprint", "model", "family", "top_k")},
        "domain": "+".join(domains),
        "sources": sources,
        "samples": sum(source["samples"] for source in sources),
        "tokens": sum(source["tokens"] for source in sources),
        "seq_len": seq_lens.pop() if len(seq_lens) == 1 else None,
        "tool_version": __version__,
    }


def merge_all(stats: list[RoutingStats], names: list[str] | None = None) -> RoutingStats:
    """The sum of several statistics of one model; refuses to count the same calibration windows twice."""
    names = names or [f"input {i + 1}" for i in range(len(stats))]
    seen: dict[str, str] = {}
    for name, item in zip(names, stats):
        for source in item.metadata.get("sources", []):
            key = json.dumps(source, sort_keys=True)
            if key in seen:
                raise CompressError(
                    f"{name} and {seen[key]} both contain the same profiling run ({source.get('samples')} windows of "
                    f"{source.get('data')}, skipping {source.get('skip_samples', 0)}): merging would count those tokens twice")
            seen[key] = name
    merged = stats[0]
    for other in stats[1:]:
        merged = merged.merged_with(other)
    return merged
