"""Explicit thread counts for a job and the processes it starts.

torch's default thread count oversubscribes a shared node (20-30x slower steps), so every job sets
OMP_NUM_THREADS to the CPUs it was given, unless the user already set it; MKL follows OMP.
"""
from __future__ import annotations

import os
from typing import MutableMapping


def cpu_count() -> int:
    """CPUs this job may use: SLURM's allocation, else the affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def set_thread_defaults(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """OMP_NUM_THREADS (the job's CPUs) and MKL_NUM_THREADS (= OMP) where ``env`` does not set them."""
    env.setdefault("OMP_NUM_THREADS", str(cpu_count()))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    return env
