"""Converters from extxyz files and ASE databases to :class:`Structure` lists and LMDB shards.

Label keys are options; by default the common names are tried, looking in ``atoms.info`` /
``atoms.arrays`` and then in the calculator results ASE's readers fill in. One key per label
is chosen for the whole file (mixing keys across entries would silently mix levels of theory).
Isolated atoms (``config_type=IsolatedAtom``, or one atom without periodicity) are kept and
flagged ``info["isolated"] = True``: MACE uses them for the atomic reference energies.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from launcher.core.errors import ConfigError

from data.structure import Structure
from data.util import one_line
from data.util import progress_bar

ENERGY_KEYS = ("energy", "REF_energy", "energy_xtb", "DFT_energy", "dft_energy", "free_energy",
               "total_energy", "TotEnergy", "Energy", "y")
FORCES_KEYS = ("forces", "REF_forces", "forces_xtb", "DFT_forces", "dft_forces", "force",
               "Forces")
STRESS_KEYS = ("stress", "REF_stress", "stress_xtb", "DFT_stress", "dft_stress")
NONE = "none"  # pass as a key to drop that label
ISOLATED_TYPE = "IsolatedAtom"
FORMATS = ("extxyz", "asedb", "lmdb", "aselmdb")
_FORMAT_NAMES = {"lmdb": "a FairChem LMDB (pickled PyG records; --format lmdb)",
                 "aselmdb": "an ASE-database LMDB (--format aselmdb)"}


def _lookup(atoms: Any, key: str) -> Any:
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return results.get(key)


def _choose_key(frames: Sequence[Any], given: str | None, candidates: tuple[str, ...],
                label: str, source: Path) -> str | None:
    if given is not None:
        if given.lower() == NONE:
            return None
        if not any(_lookup(a, given) is not None for a in frames):
            raise ConfigError(f"{source}: {label} key '{given}' found in no entry "
                              f"({_available(frames[0])})", key=f"--{label}-key")
        return given
    for cand in candidates:
        if any(_lookup(a, cand) is not None for a in frames):
            return cand
    return None


def _available(atoms: Any) -> str:
    calc = getattr(atoms, "calc", None)
    results = sorted((getattr(calc, "results", None) or {}).keys())
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return f"info keys: {sorted(atoms.info)}, arrays: {arrays}, calculator results: {results}"


def _info(atoms: Any, drop: set[str]) -> dict:
    info: dict[str, Any] = {}
    for k, v in atoms.info.items():
        if k in drop:
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (str, int, float, bool)):
            info[k] = v
    return info


def atoms_to_structure(atoms: Any, index: int, energy_key: str | None, forces_key: str | None,
                       stress_key: str | None, source: Path) -> Structure:
    """One ``ase.Atoms`` -> :class:`Structure` with the chosen label keys."""
    n = len(atoms)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    info = _info(atoms, {k for k in (energy_key, forces_key, stress_key) if k})
    isolated = info.get("config_type") == ISOLATED_TYPE or (n == 1 and not pbc.any())
    if isolated:
        info.setdefault("config_type", ISOLATED_TYPE)
        info["isolated"] = True
    else:
        info["isolated"] = False

    def label(key: str | None, name: str) -> Any:
        if key is None:
            return None
        value = _lookup(atoms, key)
        if value is None and name in ("forces", "stress") and isolated:
            return np.zeros((n, 3) if name == "forces" else (3, 3))
        if value is None:
            raise ConfigError(f"{source}: entry {index}: lacks {name} key '{key}' that other "
                              f"entries have (pass --{name}-key none to drop {name})",
                              key=f"--{name}-key")
        return value

    fixed = np.zeros(n, dtype=np.int64)
    for c in atoms.constraints:
        if type(c).__name__ == "FixAtoms":
            fixed[c.get_indices()] = 1
    try:
        return Structure(
            positions=atoms.positions, numbers=atoms.numbers, cell=np.asarray(atoms.cell),
            pbc=pbc, energy=label(energy_key, "energy"), forces=label(forces_key, "forces"),
            stress=label(stress_key, "stress"), tags=atoms.get_tags(), fixed=fixed,
            fid=0, index=index, info=info,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: entry {index}: {one_line(exc)}") from None


class _Entries(Sequence):
    """An open dataset as a read-on-access sequence of :class:`Structure` (what the writer iterates)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.ds[j] for j in range(*i.indices(len(self)))]
        return self.ds[i]


def guess_format(path: Path, fmt: str | None = None) -> str:
    """The input format: ``fmt`` when given, else from the suffix (our LMDBs also by content)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got '{fmt}'",
                              key="--format")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix in (".db", ".json"):
        return "asedb"
    if suffix in (".lmdb", ".aselmdb") or path.is_dir():
        from data.datasets import detect_format

        return detect_format(path)
    raise ConfigError(f"{path}: cannot tell the format from the suffix '{suffix}' (pass --format "
                      f"extxyz|asedb)", key="--format")


def _read_frames(path: Path, fmt: str, show: bool) -> list[Any]:
    if fmt == "extxyz":
        from ase.io import read

        try:
            frames = read(str(path), index=":", format="extxyz")
        except Exception as exc:  # noqa: BLE001 - ASE raises many types on bad text
            raise ConfigError(f"{path}: not a readable extxyz file "
                              f"({one_line(exc)})") from None
        return list(frames)
    import ase.db

    try:
        db = ase.db.connect(str(path), type="json" if path.suffix == ".json" else "db")
        rows = list(db.select())
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{path}: not a readable ASE database "
                          f"({one_line(exc)})") from None
    frames = []
    for row in progress_bar(rows, show, desc="read", unit="row"):
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        for k, v in (row.get("data") or {}).items():
            arr = np.asarray(v)
            if arr.ndim >= 1 and arr.shape[0] == len(atoms) and k not in atoms.arrays:
                atoms.arrays[k] = arr
            else:
                atoms.info.setdefault(k, v)
        frames.append(atoms)
    return frames


def _check_lmdb_options(path: Path, fmt: str, keys: dict[str, str | None],
                        trust_pickles: bool) -> None:
    """Refuse options that mean nothing for LMDB input, naming them (never ignore them silently)."""
    from data.datasets import detect_format

    for label, key in keys.items():
        if key is not None:
            raise ConfigError(f"--{label}-key: applies to extxyz and ASE database input only; {path} "
                              f"is an LMDB, whose records store {label} under a fixed name",
                              key=f"--{label}-key")
    actual = detect_format(path)
    if actual != fmt:
        raise ConfigError(f"--format {fmt}: {path} is {_FORMAT_NAMES[actual]}", key="--format")
    if trust_pickles and fmt == "aselmdb":
        raise ConfigError(f"--trust-pickles: applies to FairChem LMDB input only ({path} is an "
                          f"ASE-database LMDB, whose rows are JSON, not pickles)",
                          key="--trust-pickles")


def read_structures(path: str | os.PathLike, *, energy_key: str | None = None,
                    forces_key: str | None = None, stress_key: str | None = None,
                    fmt: str | None = None, progress: bool = True,
                    trust_pickles: bool = False, stream: bool = False) -> Sequence[Structure]:
    """Read every entry of an extxyz file, an ASE database, or one of our LMDBs (a list).

    ``stream``: an LMDB comes back as a sequence that reads entry ``i`` when asked, so converting one
    holds one entry at a time in memory, never the dataset.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or folder (expected an extxyz file or ASE database)")
    if not (p.is_file() or p.is_dir()):
        raise ConfigError(f"{p}: not a regular file or folder")
    fmt = guess_format(p, fmt)
    if fmt in ("lmdb", "aselmdb"):
        _check_lmdb_options(p, fmt, {"energy": energy_key, "forces": forces_key,
                                     "stress": stress_key}, trust_pickles)
        from data.datasets import open_dataset

        ds = open_dataset(p, trust_pickles=trust_pickles)
        if len(ds) == 0:
            raise ConfigError(f"{p}: holds no structures")
        if stream:
            return _Entries(ds)
        return [ds[i] for i in progress_bar(range(len(ds)), progress, desc="read", unit="struct")]
    if trust_pickles:
        raise ConfigError(f"--trust-pickles: applies to FairChem LMDB input only ({p} is read as "
                          f"{fmt}, which holds no pickles)", key="--trust-pickles")
    if p.is_dir():
        raise ConfigError(f"{p}: a folder (expected an {fmt} file)")
    frames = _read_frames(p, fmt, progress)
    if not frames:
        raise ConfigError(f"{p}: holds no structures")
    ekey = _choose_key(frames, energy_key, ENERGY_KEYS, "energy", p)
    if ekey is None and (energy_key or "").lower() != NONE:
        raise ConfigError(f"{p}: no energy found under any of {', '.join(ENERGY_KEYS)} "
                          f"({_available(frames[0])}); pass --energy-key KEY, or --energy-key "
                          f"none for unlabelled data", key="--energy-key")
    fkey = _choose_key(frames, forces_key, FORCES_KEYS, "forces", p)
    skey = _choose_key(frames, stress_key, STRESS_KEYS, "stress", p)
    items = progress_bar(enumerate(frames), progress, total=len(frames), desc="convert",
                         unit="struct")
    return [atoms_to_structure(a, i, ekey, fkey, skey, p) for i, a in items]


def convert(input_path: str | os.PathLike, out: str | os.PathLike, *, shards: int = 1,
            energy_key: str | None = None, forces_key: str | None = None,
            stress_key: str | None = None, fmt: str | None = None, overwrite: bool = False,
            progress: bool = True, trust_pickles: bool = False) -> list[Path]:
    """Convert ``input_path`` into FairChem-layout LMDB shards at ``out`` (atomically)."""
    from data.writer import check_shards, check_target, write_lmdb

    out = Path(out)
    check_shards(shards)
    if Path(input_path).exists() and out.exists() and out.resolve() == Path(input_path).resolve() \
            and guess_format(Path(input_path), fmt) not in ("lmdb", "aselmdb"):
        raise ConfigError(f"{out}: OUT is the input file; write the LMDB elsewhere (the input would be lost)")
    check_target(out, overwrite)
    structures = read_structures(input_path, energy_key=energy_key, forces_key=forces_key,
                                 stress_key=stress_key, fmt=fmt, progress=progress,
                                 trust_pickles=trust_pickles, stream=True)
    return write_lmdb(structures, out, shards=shards, overwrite=overwrite, progress=progress)
