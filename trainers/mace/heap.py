"""Keep the C heap's freed blocks for reuse in a process that trains or evaluates (glibc).

Why: torch's CPU allocator is ``malloc``. glibc serves a block above its mmap threshold with a fresh ``mmap`` and
returns a freed heap top to the kernel, so each training step faults in the pages of its large activations and
gradients again, every page zeroed by the kernel: 25-35 thousand page faults per update on the 400-structure
benchmark (``scripts/bench_mace``), the same or more in ``mace_run_train``. With the threshold fixed at glibc's
largest (32 MiB) and the trim threshold at 2 GiB, a step reuses the blocks the previous one freed: no page faults
once warm. The cost: the process keeps its peak heap until it ends; a training process is at that peak every step.
"""
from __future__ import annotations

import sys
from typing import Optional

M_TRIM_THRESHOLD = -1    # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = (2 << 30) - 1   # mallopt takes an int


def hold_freed_memory() -> Optional[str]:
    """Set glibc's thresholds as above, once per process; a line for train.log, or None where the C library is not
    glibc (musl, macOS: nothing is changed)."""
    global _line
    if _line is _UNSET:
        _line = _set_thresholds()
    return _line  # type: ignore[return-value]


def _set_thresholds() -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    return (f"memory: glibc {version().decode()} keeps freed blocks for reuse (mmap threshold "
            f"{MMAP_THRESHOLD >> 20} MiB, trim threshold 2 GiB): no page faults per step once warm")


_UNSET = object()
_line: object = _UNSET
