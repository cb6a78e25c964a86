"""Values no model can use (no atoms, NaN/inf positions, cell or labels): refused by name, by preflight's seeded
sample and by every reader, in real LMDB files written by the project's writer."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

from launcher.core.errors import BadRecord, ConfigError

N = 40


@pytest.fixture(scope="module")
def structures(demo_data) -> List:
    from data.datasets import open_dataset

    ds = open_dataset(demo_data["train"])
    base = [ds[i] for i in range(len(ds))]
    return [base[i % len(base)] for i in range(N)]


def _spoil(s, how: str):
    from data.structure import Structure

    if how == "no-atoms":
        return Structure(positions=np.zeros((0, 3)), numbers=np.zeros(0), cell=s.cell, pbc=s.pbc, energy=0.0,
                         forces=np.zeros((0, 3)), stress=s.stress)
    pos, cell, energy, forces = s.positions.copy(), s.cell.copy(), s.energy, s.forces.copy()
    if how == "nan-position":
        pos[3, 1] = np.nan
    elif how == "inf-cell":
        cell[2, 2] = np.inf
    elif how == "nan-energy":
        energy = float("nan")
    elif how == "nan-forces":
        forces[1, 0] = np.nan
    return Structure(positions=pos, numbers=s.numbers, cell=cell, pbc=s.pbc, energy=energy, forces=forces,
                     stress=s.stress)


def _write(tmp_path: Path, structures: List, at: int, how: str) -> Path:
    from data.writer import write_lmdb

    items = list(structures)
    items[at] = _spoil(items[at], how)
    out = tmp_path / f"{how}-{at}.lmdb"
    write_lmdb(items, out, progress=False)
    return out


def test_sample_positions_are_seeded_and_span_the_set():
    from data.datasets import RANDOM_SAMPLE, sample_positions

    picks = sample_positions(1000)
    assert picks == sample_positions(1000), "the same positions on every call"
    assert picks[0] == 0 and 500 in picks and picks[-1] == 999 and len(picks) <= RANDOM_SAMPLE + 3
    inner = [p for p in picks if p not in (0, 500, 999)]
    strata = {p * RANDOM_SAMPLE // 1000 for p in inner}
    assert len(strata) == len(inner) >= RANDOM_SAMPLE - 1, picks   # one per stretch, not bunched at the start
    assert sample_positions(1) == [0] and sample_positions(0) == []
    assert all(0 <= p < 7 for p in sample_positions(7))


@pytest.mark.parametrize("how, words", [("nan-position", "positions not finite (nan at atom 3)"),
                                        ("no-atoms", "holds no atoms"), ("inf-cell", "cell not finite"),
                                        ("nan-energy", "energy not finite"),
                                        ("nan-forces", "forces not finite (nan at atom 1)")])
def test_sampled_values_are_refused_naming_file_and_entry(tmp_path, structures, how, words):
    from data.datasets import check_values, sample_positions

    at = sample_positions(N)[2]  # a sampled record in the middle of the set
    assert 0 < at < N - 1
    path = _write(tmp_path, structures, at, how)
    verdicts = set()
    for _ in range(5):  # the same verdict every time
        with pytest.raises(ConfigError) as e:
            check_values(path, sample_positions(N))
        verdicts.add(str(e.value))
    [line] = verdicts
    assert line.startswith(f"{path}: key '{at}': {words}"), line
    with pytest.raises(ConfigError, match=f"key '{at}'"):  # trusted pickles: the values are still checked
        check_values(path, sample_positions(N), trust_pickles=True)
    check_values(path, [i for i in range(N) if i != at])  # the other records are fine


def _spec(path: Path, val: Path, **data):
    from launcher.core.schema import RunSpec

    spec = RunSpec(backend="mace", task="train", device="cpu", run_dir="/nonexistent/r")
    spec.data.train, spec.data.val = str(path), str(val)
    for k, v in data.items():
        setattr(spec.data, k, v)
    return spec


def test_preflight_samples_the_selection_and_reads_nothing_it_excludes(tmp_path, structures, demo_data):
    from data.datasets import sample_positions
    from launcher.preflight import _check_values

    at = sample_positions(N)[-1]  # the last record
    path = _write(tmp_path, structures, at, "nan-position")
    problems: list = []
    _check_values(_spec(path, demo_data["val"]), {"train": N, "val": 8}, problems)
    assert problems == [f"data.train: {path}: key '{at}': positions not finite (nan at atom 3); expected finite "
                        "numbers"]
    problems = []  # a selection without that record: preflight does not read it, and the run would not either
    _check_values(_spec(path, demo_data["val"], indices=list(range(at))), {"train": N, "val": 8}, problems)
    assert problems == []


def test_every_reader_refuses_a_record_the_sample_missed(tmp_path, structures):
    from data.datasets import check_readable, check_values, open_dataset, sample_positions

    at = next(i for i in range(1, N) if i not in sample_positions(N))
    path = _write(tmp_path, structures, at, "nan-position")
    check_readable(path)
    check_values(path, sample_positions(N))  # not in the sample: preflight cannot see it
    ds = open_dataset(path)
    assert np.isfinite(ds[at - 1].positions).all()
    with pytest.raises(BadRecord) as e:
        ds[at]
    assert str(e.value).startswith(f"{path}: key '{at}': positions not finite")


def test_the_sample_check_imports_no_torch(tmp_path, structures):
    from data.datasets import sample_positions

    path = _write(tmp_path, structures, sample_positions(N)[1], "nan-position")
    code = ("import sys\nfrom data.datasets import check_values, sample_positions\ntry:\n"
            f"    check_values(sys.argv[1], sample_positions({N}))\n"
            "except Exception as e:\n    print(type(e).__name__)\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["ConfigError", "False"], (out.stdout, out.stderr)
