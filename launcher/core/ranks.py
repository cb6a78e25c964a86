"""Where this process stands in a multi-process job: the one parser of rank and world every backend uses.

A job may run as several processes: torchrun's, the tasks of a submitit job (``hydra.launcher.tasks_per_node``
x ``nodes``, local or SLURM), or ``srun`` steps. :func:`place` reads the job's variables (a pure function of a
mapping, unit-tested without a cluster); :func:`torch_env` gives torch.distributed's env:// variables for it.

Precedence, first match wins, innermost launcher first:

1. ``WORLD_SIZE`` (torchrun, or set by the user): whoever started this very process decides its place. A
   torchrun inside a SLURM step or a submitit task sees the outer launcher's variables too, and those describe
   the torchrun process, not its children;
2. submitit's local executor (``SUBMITIT_LOCAL_*``, one node);
3. a task of a SLURM *step* (``SLURM_STEP_NUM_TASKS`` > 1, ``SLURM_PROCID``, ``SLURM_LOCALID``...). The step's
   variables, never the job's: a batch script, or a ``launch`` started inside ``salloc -n 4``, sees
   ``SLURM_NTASKS=4`` but is one process and must not wait for three others.

Anything else is rank 0 of 1. Standard library only.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

#: The torch.distributed variables (env:// initialisation) :func:`torch_env` provides.
TORCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Place:
    """This process's place in its job; the defaults are a process running alone."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1          # processes of the job on this node
    master_addr: str = ""
    master_port: str = ""

    @property
    def nodes(self) -> int:
        return max(1, self.world // max(1, self.local_world))

    @property
    def alone(self) -> bool:
        return self.world <= 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-004,7],cpu1`` -> ``gpu003`` (no ``scontrol`` needed)."""
    out, i = "", 0
    while i < len(nodelist) and nodelist[i] != ",":
        if nodelist[i] == "[":
            close = nodelist.index("]", i)
            out += nodelist[i + 1:close].split(",")[0].split("-")[0]
            i = close + 1
        else:
            out += nodelist[i]
            i += 1
    return out


def job_port(key: str) -> int:
    """A port in 20000-59999 that every task of one job derives alike (tasks cannot agree otherwise)."""
    return 20000 + zlib.crc32(key.encode()) % 40000


def _int(value: Optional[str], default: int) -> int:
    """The leading integer of ``value`` (SLURM writes ``2(x3)`` for 3 nodes of 2 tasks), else ``default``."""
    digits = ""
    for c in str(value or "").strip():
        if not c.isdigit():
            break
        digits += c
    return int(digits) if digits else default


def place(environ: Optional[Mapping[str, str]] = None) -> Place:
    """This process's :class:`Place`, from ``environ`` (default: ``os.environ``); see the module docstring."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        world = _int(env["WORLD_SIZE"], 1)
        return Place(_int(env.get("RANK"), 0), world, _int(env.get("LOCAL_RANK"), 0),
                     _int(env.get("LOCAL_WORLD_SIZE"), world), env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", ""))
    found = Place()
    if env.get("SUBMITIT_EXECUTOR") == "local" and _int(env.get("SUBMITIT_LOCAL_NTASKS"), 1) > 1:
        world = _int(env["SUBMITIT_LOCAL_NTASKS"], 1)
        found = Place(_int(env.get("SUBMITIT_LOCAL_GLOBALID"), 0), world, _int(env.get("SUBMITIT_LOCAL_LOCALID"), 0),
                      world, "127.0.0.1", str(job_port("local-" + env.get("SUBMITIT_LOCAL_JOB_ID", "0"))))
    elif _int(env.get("SLURM_STEP_NUM_TASKS"), 1) > 1:
        world = _int(env["SLURM_STEP_NUM_TASKS"], 1)
        nodes = _int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_JOB_NUM_NODES")), 1)
        per_node = _int(env.get("SLURM_STEP_TASKS_PER_NODE"), max(1, world // max(1, nodes)))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        port = job_port(f"slurm-{env.get('SLURM_JOB_ID', '0')}-{env.get('SLURM_STEP_ID', '0')}")
        found = Place(_int(env.get("SLURM_PROCID"), 0), world, _int(env.get("SLURM_LOCALID"), 0), per_node,
                      first_host(nodelist), str(port))
    if found.alone:
        return Place()
    # an explicit rendezvous in the environment (a faster interface, a pinned port) wins over the derived one
    return Place(found.rank, found.world, found.local_rank, found.local_world,
                 env.get("MASTER_ADDR") or found.master_addr, env.get("MASTER_PORT") or found.master_port)


def torch_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """torch.distributed's env:// variables for this process ({} when it runs alone). Under torchrun, the
    variables it set, as they are."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        return {k: env[k] for k in TORCH_KEYS if k in env}
    p = place(env)
    if p.alone:
        return {}
    return {"RANK": str(p.rank), "WORLD_SIZE": str(p.world), "LOCAL_RANK": str(p.local_rank),
            "LOCAL_WORLD_SIZE": str(p.local_world), "MASTER_ADDR": p.master_addr, "MASTER_PORT": p.master_port}


def rank_and_world(environ: Optional[Mapping[str, str]] = None) -> tuple:
    """(rank, world size) of this process; (0, 1) when it runs alone."""
    p = place(environ)
    return p.rank, p.world
