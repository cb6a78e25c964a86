"""trainers.mace.heap: freed tensor memory is reused instead of faulted in again on every step (glibc)."""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = r"""
import resource, statistics, sys
import torch
if sys.argv[1] == "held":
    from trainers.mace.heap import hold_freed_memory
    print(hold_freed_memory(), file=sys.stderr)
w = torch.randn(256, 256, requires_grad=True)
def step(i):                            # forward + backward over batches of varying size, like graphs
    x = torch.randn(4000 + (i * 37) % 3000, 256)
    for _ in range(6):
        x = torch.tanh(x @ w) * x
    x.sum().backward()
for i in range(10):                     # warm
    step(i)
faults = []
for i in range(10, 40):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(i)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(statistics.median(faults))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steps_after_hold_freed_memory_fault_no_pages_in():
    from trainers.mace.heap import hold_freed_memory

    line = hold_freed_memory()
    assert hold_freed_memory() is line                     # once per process
    if line is None:
        pytest.skip("not glibc")
    assert line.startswith("memory: glibc ")
    plain, held = _faults("plain"), _faults("held")   # median page faults per step
    assert plain > 500                   # glibc gave freed pages back and faulted them in again: the case at hand
    assert held <= plain / 20, (plain, held)   # (0 measured: the heap grows now and then, a step at most)
