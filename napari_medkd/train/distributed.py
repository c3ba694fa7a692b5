"""torch.distributed (DDP) set-up for runs started by ``torchrun``; a no-op for one process."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device) -> DistInfo:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def any_true(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank if it is true on any rank (used for stop requests and budgets)."""
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo, sync: bool = True) -> None:
    """Leave the process group; after a normal end all ranks meet first, so no rank tears down its
    connections while another still uses them (gloo then aborts the process at exit)."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if sync:
                dist.barrier()
            dist.destroy_process_group()
