"""Several processes, one run: torch.distributed from torchrun's or SLURM's environment.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_*``; under SLURM (submitit with
several tasks) submitit's helper exports the same variables. Rank 0 alone writes to the run dir.

``python -m launcher.worker RUN_YAML`` is the per-process entry of a multi-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Any) -> Any:
        """Sum a float64 numpy array over ranks (identity with one process)."""
        if not self.enabled:
            return values
        import numpy as np
        import torch
        import torch.distributed as td

        t = torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float64)
        if td.get_backend() == "nccl":
            t = t.cuda()
        td.all_reduce(t)
        return t.cpu().numpy()

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        return bool(self.all_sum([1.0 if flag else 0.0])[0] > 0)

    def broadcast_object(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        import torch.distributed as td

        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


def _slurm_env() -> None:
    """Export torch.distributed variables from SLURM's when several tasks run and torchrun did not."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except Exception:  # noqa: BLE001 - not inside a submitit job: use SLURM's variables as they are
        os.environ.setdefault("RANK", os.environ.get("SLURM_PROCID", "0"))
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))


def world_from_env() -> tuple:
    _slurm_env()
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def setup(device_type: str) -> Dist:
    """Join the process group when launched with several processes (gloo on CPU, nccl on CUDA)."""
    rank, world, local = world_from_env()
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as td

    if td.is_initialized():
        return Dist(rank=td.get_rank(), world=td.get_world_size(), local_rank=local)
    if device_type == "cuda":
        torch.cuda.set_device(local)
    td.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world=world, local_rank=local, initialized_here=True)

