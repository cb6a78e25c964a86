"""How many FairChem ranks a job runs: FairChem's own distributed mode, started by the job's rank 0.

With ``hydra.launcher.tasks_per_node=N`` every submitit task (a local process, or a SLURM task) runs the job.
The FairChem runner in task 0 starts ``torchrun --standalone --nproc_per_node N`` in the FairChem env:
N FairChem processes in one DDP group (gloo with ``device=cpu``, NCCL on GPUs), which FairChem v1 supports
natively (its ``distutils.setup`` reads torchrun's variables). The other tasks of the job return at once:
their share of the allocation (CPUs, GPUs) is used by those N processes. No torch.

One rank-0 torchrun cannot span nodes, so ``nodes > 1`` is refused before anything is queued.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

from launcher.core.ranks import place


@dataclass(frozen=True)
class JobTasks:
    rank: int = 0           # this task's rank in the job
    per_node: int = 1       # tasks of the job on this node
    nodes: int = 1


def job_tasks(environ: Optional[Mapping[str, str]] = None) -> JobTasks:
    """Where this process stands in the job the launcher runs in (submitit's local tasks, a SLURM step, torchrun),
    read by :func:`launcher.core.ranks.place`, the parser every backend and the worker share. A plain process is
    task 0 of 1."""
    p = place(environ)
    return JobTasks(p.rank, p.local_world, p.nodes)


def launch_problems(backend: str, params: Any) -> List[str]:
    """The launcher settings FairChem's distributed mode cannot honour, one line each (before queueing)."""
    problems = []
    nodes = int(getattr(params, "nodes", 1) or 1)
    if nodes > 1:
        problems.append(f"hydra.launcher.nodes: backend={backend} runs FairChem's ranks from one torchrun on one "
                        f"node (tasks_per_node ranks), got nodes={nodes}; use nodes=1")
    return problems


def torchrun_command(python: str, ranks: int) -> List[str]:
    """The prefix that starts ``ranks`` FairChem processes on this node (torchrun of the FairChem env's torch)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(ranks)]
