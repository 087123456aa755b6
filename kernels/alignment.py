"""Sorting (token, slot) pairs by expert into blocks of BLOCK_M rows, without host synchronisation.

The grouped GEMMs give each program one block of rows that all belong to one expert. Pairs are
flattened ids ``p = token * k + slot``; each expert's pairs are padded to a multiple of BLOCK_M
with the sentinel ``T * k``, which the kernels mask (the layout of vLLM's ``moe_align_block_size``).
Every size here is an upper bound known from the shapes alone (``T·k + E·(BLOCK_M − 1)`` rows), so
nothing waits for the device; blocks past the real end get expert −1 and exit at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockAlignment:
    sorted_pairs: torch.Tensor  # [capacity] int32: pair ids grouped by expert, sentinel-padded
    block_experts: torch.Tensor  # [capacity / BLOCK_M] int32: the expert of each block, −1 past the end
    num_pairs: int  # T * k, also the sentinel


def count_per_expert(expert_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many of `expert_ids` name each expert: [num_experts] int64. Unlike `torch.bincount`,
    which reads the largest id back to the host on CUDA, this never synchronises, so it can run inside
    a CUDA graph."""
    expert_ids = expert_ids.reshape(-1).long()
    counts = torch.zeros(num_experts, dtype=torch.int64, device=expert_ids.device)
    return counts.scatter_add_(0, expert_ids, torch.ones_like(expert_ids))


def align_block_size(top_k_index: torch.Tensor, num_experts: int, block_m: int) -> BlockAlignment:
    experts = top_k_index.reshape(-1).to(torch.int64)
    num_pairs = experts.numel()
    capacity = -(-(num_pairs + num_experts * (block_m - 1)) // block_m) * block_m
    counts = count_per_expert(experts, num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, dim=0)
    padded_start = padded_end - padded
    order = torch.argsort(experts, stable=True)  # pair ids by expert, in token order within an expert
    sorted_experts = experts[order]
    rank = torch.arange(num_pairs, device=experts.device) - (torch.cumsum(counts, dim=0) - counts)[sorted_experts]
    sorted_pairs = torch.full((capacity,), num_pairs, dtype=torch.int32, device=experts.device)
    sorted_pairs[padded_start[sorted_experts] + rank] = order.to(torch.int32)
    block_starts = torch.arange(0, capacity, block_m, device=experts.device)
    block_experts = torch.searchsorted(padded_end, block_starts, right=True)
    block_experts = torch.where(block_starts < padded_end[-1], block_experts, -1).to(torch.int32)
    return BlockAlignment(sorted_pairs, block_experts, num_pairs)
