"""Data order and RNG state: what makes a resumed run replay exactly the same updates.

The order of epoch ``e`` is a pure function of ``(seed, e)`` (numpy PCG64), so a checkpoint needs
only the position in it; RNG states are saved too, for anything else that draws random numbers.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List

import numpy as np


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: the same on every machine and after any resume."""
    return np.random.Generator(np.random.PCG64([int(seed), int(epoch)])).permutation(n)


def rank_batches(order: np.ndarray, batch_size: int, drop_last: bool, rank: int, world: int) -> List[List[int]]:
    if world > 1:
        order = order[: (len(order) // world) * world][rank::world]
    out = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


def rng_state() -> Dict[str, Any]:
    import torch

    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
          "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))
    np.random.set_state(("MT19937", np.asarray(st["numpy"], dtype=np.uint32), st["numpy_pos"], 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
