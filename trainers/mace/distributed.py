"""Several processes, one run: torch.distributed from torchrun's or SLURM's environment.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_*``; a task of a submitit job with
several tasks (``hydra.launcher.tasks_per_node`` x ``nodes``, SLURM or local) gets them from
:func:`launcher.core.ranks.torch_env`, a pure mapping of the job's variables shared by every backend. Rank 0 alone
writes to the run dir; ``launcher.worker.run_rank`` is the entry of every rank.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from launcher.core.ranks import torch_env


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

    def gather_object(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: List[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def weights_by_rank(self, model: Any) -> List[str]:
        """sha256 of ``model``'s weights on every rank: DDP keeps them equal, so a difference is a bug."""
        return self.gather_object(weights_digest(model))

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


def weights_digest(model: Any) -> str:
    """sha256 over the state dict (names and exact bytes, in key order)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: Up to this many indices a share record lists them; beyond, its count and digest stand for them (bounded log).
SHARE_INDICES_LIMIT = 2000


def share_record(epoch: int, rank: int, world: int, indices: Any) -> Dict[str, Any]:
    """What one rank trains on in one epoch: the dataset indices of its batches in the order it reads them
    (``logs/shares.jsonl``), so that every rank reading its own share, and only it, can be checked."""
    import hashlib

    import numpy as np

    idx = np.ascontiguousarray(indices, dtype=np.int64)
    rec: Dict[str, Any] = {"epoch": int(epoch), "rank": int(rank), "world": int(world), "n": int(idx.size),
                           "sha256": hashlib.sha256(idx.tobytes()).hexdigest()}
    if idx.size <= SHARE_INDICES_LIMIT:
        rec["indices"] = idx.tolist()
    return rec


def world_from_env() -> Tuple[int, int, int]:
    """(rank, world, local rank), after exporting the env:// variables torch.distributed reads."""
    env = torch_env(os.environ)  # launcher.core.ranks: the one parser every backend and the worker use
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return (int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


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

