"""The one in-memory record every reader returns and every writer takes.

Plain numpy arrays so that trainers, converters and preflight share one shape contract and
nothing here needs torch; conversion to and from PyG ``Data`` lives in :mod:`data.pyg`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ase import Atoms

_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def stress_to_3x3(stress: Any) -> np.ndarray:
    """Return a (3,3) float64 stress from a Voigt 6-vector (ASE order), a 9-vector or a (1,3,3)."""
    arr = np.asarray(stress, dtype=np.float64)
    if arr.size == 6:
        v = arr.reshape(6)
        out = np.empty((3, 3), dtype=np.float64)
        for k, (i, j) in enumerate(_VOIGT):
            out[i, j] = out[j, i] = v[k]
        return out
    if arr.size == 9:
        return arr.reshape(3, 3).copy()
    raise ValueError(f"stress has {arr.size} components, expected 6 (Voigt) or 9 (3x3)")


def values_problem(positions: Any, cell: Any = None, energy: Any = None, forces: Any = None,
                   stress: Any = None) -> str | None:
    """What makes a structure's values unusable for a model, in words (None when nothing does): no atoms, or a
    NaN/inf position, cell entry or label. A NaN position makes the neighbour search run without end, so the
    readers refuse it by name rather than hand it on."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    if pos.size == 0:
        return "holds no atoms (a structure needs at least one)"
    for name, value in (("positions", pos), ("cell", cell), ("energy", energy), ("forces", forces),
                        ("stress", stress)):
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            where = f" at atom {bad[0] // 3}" if name in ("positions", "forces") else ""
            return f"{name} not finite ({arr[bad[0]]}{where}); expected finite numbers"
    return None


@dataclass
class Structure:
    """One labelled (or unlabelled) atomic structure.

    ``energy`` is kept as a Python float (float64) so that it round-trips bit for bit;
    arrays are float64/int64 whatever the storage precision was.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    natoms: int = -1
    tags: np.ndarray | None = None
    fixed: np.ndarray | None = None
    sid: Any = None
    fid: Any = None
    index: int = -1
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        n = self.positions.shape[0]
        numbers = np.asarray(self.numbers)
        if numbers.dtype.kind == "f":
            numbers = np.rint(numbers)
        self.numbers = numbers.astype(np.int64).reshape(-1)
        if self.numbers.shape[0] != n:
            raise ValueError(f"{self.numbers.shape[0]} atomic numbers for {n} positions")
        if self.natoms >= 0 and self.natoms != n:
            raise ValueError(f"natoms={self.natoms} but {n} positions")
        self.natoms = int(n)
        self.cell = (
            np.zeros((3, 3)) if self.cell is None
            else np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        )
        if self.pbc is None:
            self.pbc = np.linalg.norm(self.cell, axis=1) > 0
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if self.pbc.size == 1:
            self.pbc = np.repeat(self.pbc, 3)
        if self.pbc.shape != (3,):
            raise ValueError(f"pbc has shape {self.pbc.shape}, expected (3,)")
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
            if self.forces.size != 3 * n:
                raise ValueError(f"forces has shape {self.forces.shape}, expected ({n}, 3)")
            self.forces = self.forces.reshape(n, 3)
        if self.stress is not None:
            self.stress = stress_to_3x3(self.stress)
        self.tags = (np.zeros(n, dtype=np.int64) if self.tags is None
                     else np.asarray(self.tags).astype(np.int64).reshape(-1))
        self.fixed = (np.zeros(n, dtype=np.int64) if self.fixed is None
                      else np.asarray(self.fixed).astype(np.int64).reshape(-1))
        for name in ("tags", "fixed"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} entries for {n} atoms")

    def problem(self) -> str | None:
        """:func:`values_problem` of this structure."""
        return values_problem(self.positions, self.cell, self.energy, self.forces, self.stress)

    @property
    def config_type(self) -> str:
        return str(self.info.get("config_type", "Default"))

    @property
    def isolated(self) -> bool:
        return bool(self.info.get("isolated", False))

    def to_atoms(self) -> "Atoms":
        """An ``ase.Atoms`` with the labels in a SinglePointCalculator and ``info`` copied."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.constraints import FixAtoms

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                      pbc=self.pbc, tags=self.tags)
        if self.fixed.any():
            atoms.set_constraint(FixAtoms(mask=self.fixed.astype(bool)))
        atoms.info.update(self.info)
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            results["stress"] = self.stress.copy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms
