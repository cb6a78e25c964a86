"""Fixtures for the data-layer tests: tiny labelled structures and the real solvent set.

The demo dataset and the shared/ folder come from tests/conftest.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.structure import Structure


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def _symmetric(rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(3, 3))
    return a + a.T


def random_structures(n: int, seed: int = 0, *, stress: bool = True) -> list[Structure]:
    """Small labelled structures with awkward float64 values (not float32-representable)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        natoms = int(rng.integers(1, 7))
        out.append(Structure(
            positions=rng.normal(scale=3.0, size=(natoms, 3)),
            numbers=rng.integers(1, 90, size=natoms),
            cell=np.diag(rng.uniform(5, 9, size=3)) + rng.normal(scale=0.1, size=(3, 3)),
            pbc=[True, True, bool(i % 2)],
            energy=float(rng.normal(scale=100.0)) + 1e-13 * i,
            forces=rng.normal(size=(natoms, 3)),
            stress=_symmetric(rng) if stress else None,
            tags=rng.integers(0, 3, size=natoms),
            fixed=rng.integers(0, 2, size=natoms),
            info={"config_type": "random", "k": i},
        ))
    return out


@pytest.fixture
def structures() -> list[Structure]:
    return random_structures(10)


@pytest.fixture(scope="session")
def solvent_train(shared_dir) -> Path:
    """The MACE-tutorial solvent training file, used in place from the shared/ folder."""
    path = shared_dir / "datasets" / "mace-tutorial-solvent-xtb" / "solvent_xtb_train_200.xyz"
    if not path.is_file():
        pytest.skip(f"shared dataset absent: {path}")
    return path


@pytest.fixture
def make_structures():
    """The :func:`random_structures` factory, for tests that need other sizes or seeds."""
    return random_structures


def raw_lmdb(path: Path, items: dict) -> Path:
    """An LMDB file holding exactly ``items`` ({ascii key: bytes}), written with no checks."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k.encode("ascii"), v)
    env.close()
    return path
