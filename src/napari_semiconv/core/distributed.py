"""The process group of a ``torchrun`` launch, as the trainer needs it (world 1 without one).

Under ``torchrun`` (WORLD_SIZE > 1) the trainer joins the group (gloo on CPU, nccl on CUDA); rank
0 alone writes checkpoints and validates; every rank must stop at the same step.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from napari_semiconv.core.devices import resolve_device


class ProcessGroup:
    """The process group of a ``torchrun`` launch (world 1 without one)."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = False
        device = resolve_device(device_name)
        if self.world > 1 and device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def agree(self, flag: bool) -> bool:
        """True on every rank when any rank says so (ranks must stop at the same step)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
