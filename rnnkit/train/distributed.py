"""Data-parallel context from ``torchrun`` (torch.distributed): gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistContext:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return DistContext(rank, world_size, torch.device("cuda", local))
    return DistContext(rank, world_size, torch.device("cpu"))


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    if context.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_cat(tensor: torch.Tensor, context: DistContext, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's tensor (same shape on all ranks) in rank order."""
    if not context.active:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=dim)
