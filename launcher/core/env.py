"""Environment helpers every layer shares: thread defaults, the cache root, the one GPU check.

torch's default thread count oversubscribes a shared node (20-30x slower steps), so every job sets
OMP_NUM_THREADS to the CPUs it was given, unless the user already set it; MKL follows OMP.
"""
from __future__ import annotations

import os
from pathlib import Path
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


def cache_root() -> Path:
    """``$MLIP_LAUNCH_CACHE``, else ``~/.cache/mlip-launch`` (demo data, benchmark data, the FairChem env)."""
    return Path(os.environ.get("MLIP_LAUNCH_CACHE", "~/.cache/mlip-launch")).expanduser()


def gpu_visible() -> bool:
    """A CUDA device is visible to this process, read from the driver's files (no torch import).

    Masked out by an empty or ``-1`` CUDA_VISIBLE_DEVICES; otherwise the driver must list a GPU
    (``/proc/driver/nvidia/gpus``) or expose a device node (``/dev/nvidiaN``).
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return any(Path("/dev").glob("nvidia[0-9]*"))
