"""Several processes, one run: torch.distributed from torchrun's or SLURM's environment.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_*``; under SLURM (submitit with
several tasks) submitit's helper exports the same variables. Rank 0 alone writes to the run dir.

``python -m trainers.mace.distributed RUN_YAML`` is the per-process entry for multi-process
runs: rank 0 goes through ``launcher.job.run_job`` (run-dir state, lock, resume decision), the
other ranks join the backend directly and take the resume decision from rank 0.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Optional


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


def main(argv: Optional[list] = None) -> int:
    """Per-process entry of a multi-process run (torchrun / srun)."""
    from launcher.job import run_job
    from launcher.layout import RunLayout
    from launcher.translate import load_run_yaml_spec
    from trainers.base import JobContext

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainers.mace.distributed RUN_YAML", file=sys.stderr)
        return 2
    spec = load_run_yaml_spec(args[0])
    rank, _, _ = world_from_env()
    if rank == 0:
        result = run_job(spec)
        return 0 if result.status in ("finished", "skipped") else 1
    from launcher.job import SKIP, classify

    if classify(spec, RunLayout.of(spec.run_dir)) == SKIP:
        return 0                  # rank 0 skips the finished run too: nobody joins the group
    from trainers.mace.backend import MaceBackend

    backend = MaceBackend()
    backend.name = spec.backend
    # resume is decided by rank 0 (run_job) and broadcast inside the backend
    backend.run(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir), resume=False, extra={"follower": True}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
