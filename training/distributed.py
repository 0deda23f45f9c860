"""Multi-process training under ``torchrun`` with DistributedDataParallel.

``torchrun --nproc_per_node N retrain.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` joins
the process group (gloo on CPU, nccl on CUDA) and returns this process' place in it. Without those
variables everything runs in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> DistInfo:
    """Join the torchrun process group if there is one; return rank information."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info


def local_device(device: str, info: DistInfo) -> torch.device:
    """``cuda`` becomes ``cuda:<local_rank>`` under torchrun; CPU stays CPU."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda given but CUDA is not available on this machine")
        return torch.device(f"cuda:{info.local_rank}") if device == "cuda" else torch.device(device)
    return torch.device(device)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group together: a rank that tears gloo down while another still works (rank 0
    exporting the model) can abort at exit ("terminate called without an active exception")."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def param_checksums(model: torch.nn.Module, info: DistInfo) -> list:
    """Per-rank (sum, sum of squares) of all parameters and buffers, gathered on every rank.

    Used after DDP training to check that every rank holds identical weights.
    """
    vals = [t.detach().double() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    mine = torch.tensor([sum(float(v.sum()) for v in vals), sum(float((v * v).sum()) for v in vals)],
                        dtype=torch.float64)
    if not info.enabled:
        return [mine.tolist()]
    out = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(out, mine)
    return [o.tolist() for o in out]


@torch.no_grad()
def average_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    DDP broadcasts rank 0's buffers before each forward, but the last forward leaves every rank with
    statistics updated on its own batch; averaging makes the saved model the same on every rank.
    """
    if not info.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(info.world_size)
