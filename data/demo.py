"""A small, real, deterministic dataset from ASE's EMT potential.

Backs the embedded default run and the tests: fcc Cu/Au/Pt/Ni/Ag bulk cells and slabs
(8-32 atoms), some alloyed, strained and rattled, labelled with EMT energy, forces and stress.
Everything follows from one ``numpy`` PCG64 seed, so every machine makes the same structures.

A second domain, ``shifted``, is for fine-tuning examples and tests: the same structures (same seed, same
draws), compressed by 4-8% on every axis, a region the ``base`` domain (+-3% strain) never visits.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from launcher.core.errors import ConfigError

from data.util import progress_bar

ELEMENTS = ("Cu", "Au", "Pt", "Ni", "Ag")
DEMO_VERSION = "demo-v1"
DOMAINS = ("base", "shifted")
SPLITS = ("train", "val", "test")
_BULK_CUBIC_REPEATS = ((1, 1, 2), (2, 2, 1), (2, 2, 2), (2, 1, 3))  # 8, 16, 32, 24 atoms
_BULK_PRIM_REPEATS = ((2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3))  # 8, 12, 18, 27 atoms
_SLAB_SIZES = ((2, 2, 3), (2, 2, 4), (3, 3, 3), (2, 3, 4))  # 12, 16, 27, 24 atoms


def _one(rng: np.random.Generator, i: int, shift: Any = None) -> Any:
    """One structure; ``shift`` (a generator of its own, so the base draws stay as they are) shifts it."""
    from ase.build import bulk, fcc100, fcc111

    host = ELEMENTS[int(rng.integers(len(ELEMENTS)))]
    kind = int(rng.integers(3))
    if kind == 0:
        atoms = bulk(host, "fcc", cubic=True).repeat(_BULK_CUBIC_REPEATS[int(rng.integers(4))])
        config_type = "bulk"
    elif kind == 1:
        atoms = bulk(host, "fcc").repeat(_BULK_PRIM_REPEATS[int(rng.integers(4))])
        config_type = "bulk"
    else:
        build = fcc111 if rng.random() < 0.5 else fcc100
        atoms = build(host, size=_SLAB_SIZES[int(rng.integers(4))], vacuum=5.0)
        config_type = "slab"
    if rng.random() < 0.5:  # substitutional alloy
        guest = ELEMENTS[int(rng.integers(len(ELEMENTS)))]
        mask = rng.random(len(atoms)) < rng.uniform(0.1, 0.4)
        numbers = atoms.numbers.copy()
        numbers[mask] = _z(guest)
        atoms.numbers = numbers
    eps = rng.uniform(-0.03, 0.03, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    if shift is not None:
        eps = eps / 3.0 - np.eye(3) * shift.uniform(0.04, 0.08)
    if config_type == "slab":
        eps[2, :] = eps[:, 2] = 0.0
    atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    atoms.positions = atoms.positions + rng.normal(0.0, rng.uniform(0.02, 0.15),
                                                   size=atoms.positions.shape)
    atoms.info["config_type"] = config_type
    atoms.info["demo_id"] = i
    return atoms


def _z(symbol: str) -> int:
    from ase.data import atomic_numbers

    return atomic_numbers[symbol]


def make_emt_structures(n: int, seed: int = 0, *, progress: bool = False, domain: str = "base") -> list[Any]:
    """``n`` EMT-labelled ``ase.Atoms`` (energy, forces, stress in a SinglePointCalculator) of ``domain``."""
    if domain not in DOMAINS:
        raise ConfigError(f"--domain: expected one of {', '.join(DOMAINS)}, got {domain!r}")
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.Generator(np.random.PCG64(seed))
    shift = np.random.Generator(np.random.PCG64([seed, 1])) if domain == "shifted" else None
    out = []
    calc = EMT()
    for i in progress_bar(range(n), progress, desc="EMT", unit="struct"):
        atoms = _one(rng, i, shift)
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces().copy()
        stress = atoms.get_stress().copy()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        out.append(atoms)
    return out


def make_demo_dataset(out_dir: str | os.PathLike, *, seed: int = 0, n_train: int = 64,
                      n_val: int = 16, n_test: int = 16, progress: bool = False,
                      overwrite: bool = False, domain: str = "base") -> dict[str, Path]:
    """Write ``train.lmdb``, ``val.lmdb``, ``test.lmdb`` under ``out_dir``; return split -> path.

    All splits are written into one temporary folder and moved into place together at the end: an
    error or interruption leaves ``out_dir`` as it was (absent, or holding what it held).
    """
    from data.convert import atoms_to_structure
    from data.writer import check_target, replace_all, staging, write_staged

    out = Path(out_dir)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    _check_sizes(sizes, seed)
    if domain not in DOMAINS:
        raise ConfigError(f"--domain: expected one of {', '.join(DOMAINS)}, got {domain!r}")
    splits = [s for s in SPLITS if sizes[s]]
    for split in splits:  # an existing or unwritable target: say so before computing anything
        check_target(out / f"{split}.lmdb", overwrite)
    frames = make_emt_structures(sum(sizes.values()), seed, progress=progress, domain=domain)
    structures = [atoms_to_structure(a, i, "energy", "forces", "stress", out)
                  for i, a in enumerate(frames)]
    inside = out.is_dir()  # an existing folder keeps what else it holds; else it is made whole
    try:
        with staging(out if inside else out.parent, out.name) as tmp:
            stage = tmp if inside else tmp / out.name
            stage.mkdir(exist_ok=True)
            start = 0
            for split in SPLITS:
                part = structures[start:start + sizes[split]]
                start += sizes[split]
                if part:
                    write_staged(part, stage / f"{split}.lmdb", 1, progress, split)
            pairs = ([(stage / f"{s}.lmdb", out / f"{s}.lmdb") for s in splits] if inside
                     else [(stage, out)])
            replace_all(pairs, overwrite)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot be written ({exc.strerror or exc})") from None
    return {split: out / f"{split}.lmdb" for split in splits}


def _check_sizes(sizes: dict[str, int], seed: int) -> None:
    for split, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"--n-{split}: expected a non-negative integer, got {n!r}")
    if not any(sizes.values()):
        raise ConfigError("--n-train, --n-val, --n-test: all 0, nothing to write")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed: expected a non-negative integer, got {seed!r}")


def ensure_demo_dataset(root: str | os.PathLike | None = None, *, seed: int = 0) -> dict[str, Path]:
    """The cached demo dataset ``<root>/demo-v1-seed<seed>/``, generated atomically on first use.

    ``root`` defaults to :func:`launcher.core.env.cache_root`. Concurrent first uses each build into a private
    temporary folder; the first rename wins and the others discard their copy.
    """
    from launcher.core.env import cache_root

    base = Path(root) if root is not None else cache_root()
    target = base / f"{DEMO_VERSION}-seed{seed}"
    paths = {s: target / f"{s}.lmdb" for s in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=base))
    try:
        make_demo_dataset(tmp / "d", seed=seed)
        try:
            os.rename(tmp / "d", target)
        except OSError:
            if not all(p.is_file() for p in paths.values()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
