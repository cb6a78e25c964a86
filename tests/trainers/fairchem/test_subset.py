"""FairChem's reader unpickles every record without an allow-list, so preflight checks a bounded sample of the
records a run selects: its first and last, an even spread and a seeded draw, the same on every run. A hostile
record anywhere in a small split (not only record 0) is refused, deterministically, before anything runs."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.core.schema import IndexSampling, RunSpec, check
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.subset import SAMPLE_LIMIT, record_sample, refused_record

from .conftest import TEST_CONFIGS

LAUNCH_RUN = Path(sys.executable).with_name("launch-run")
EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"


class Payload:
    """Unpickling this calls ``target(*args)``: what a hostile LMDB value does."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _with_payload(src: Path, out: Path, position: int, marker: Path) -> Path:
    """A copy of the LMDB ``src`` whose record ``position`` would create ``marker`` if it were ever unpickled."""
    import lmdb

    shutil.copyfile(src, out)
    env = lmdb.open(str(out), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        assert txn.get(str(position).encode()) is not None
        txn.put(str(position).encode(), pickle.dumps(Payload(os.system, f"touch {marker}")))
    env.close()
    return out


def _venv_with_fairchem(root: Path) -> str:
    """An interpreter path whose env's files hold FairChem (never started: preflight reads files only)."""
    site = root / "lib" / "python3.11" / "site-packages"
    for pkg in ("fairchem/core", "torch_scatter", "torch_sparse"):
        (site / pkg).mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("")
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text("#!/bin/sh\nexit 3\n")
    (root / "bin" / "python").chmod(0o755)
    return str(root / "bin" / "python")


def test_the_sample_is_bounded_spread_and_the_same_every_time():
    pool = np.arange(100_000, 300_000, 2)
    a, b = record_sample(pool), record_sample(pool)
    assert np.array_equal(a, b) and a.size == np.unique(a).size and a.size <= SAMPLE_LIMIT
    assert a[0] == pool[0] and a[-1] == pool[-1] and np.isin(a, pool).all()
    assert all(((a >= lo) & (a < lo + 20_000)).any() for lo in range(100_000, 300_000, 20_000))   # every tenth
    assert not np.array_equal(a, record_sample(pool, seed=1))                                   # a seeded draw too
    assert np.array_equal(record_sample(np.arange(50)), np.arange(50))                          # small: all of it


@pytest.mark.parametrize("position", [37, 63])
def test_a_hostile_record_past_the_first_is_refused_every_time(tmp_path, demo_data, fairchem_fixtures, position):
    marker = tmp_path / "ran"
    train = _with_payload(Path(demo_data["train"]), tmp_path / "train.lmdb", position, marker)
    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=_venv_with_fairchem(tmp_path / "venv"))
    spec.train.config_yml = str(EQV2)
    spec.data.train, spec.data.val = str(train), str(demo_data["val"])
    spec = check(spec)
    for _ in range(3):
        problems = FairchemBackend().check(spec)
        assert problems == [f"data.train: {train}: key '{position}': refusing to unpickle posix.system (not a class "
                            "FairChem LMDB records store; if you trust this file set data.trust_pickles=true, or "
                            "pass --trust-pickles to launch-data)"]
    spec.data.trust_pickles = True                                  # the user's word: not checked
    assert FairchemBackend().check(spec) == []
    spec.data.trust_pickles = False
    spec.data.train_indices = IndexSampling(max_samples=8)          # FairChem would not read it: not refused
    assert FairchemBackend().check(spec) == []
    assert not marker.exists()


def test_a_hostile_record_is_refused_by_the_dry_run_and_the_run_alike(tmp_path, demo_data, fairchem_fixtures):
    marker = tmp_path / "ran"
    train = _with_payload(Path(demo_data["train"]), tmp_path / "train.lmdb", 29, marker)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"backend": "equiformer_v2", "task": "train", "device": "cpu",
                               "run_dir": str(tmp_path / "run"), "train": {"config_yml": str(EQV2)},
                               "backend_python": _venv_with_fairchem(tmp_path / "venv"),
                               "data": {"train": str(train), "val": str(demo_data["val"])}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for extra in (["--dry-run"], ["--dry-run"], []):
        out = subprocess.run([str(LAUNCH_RUN), "--config", str(cfg), *extra], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=120)
        assert out.returncode == 2, out.stderr
        assert f"data.train: {train}: key '29': refusing to unpickle posix.system" in out.stderr
        assert not marker.exists() and not (tmp_path / "run").exists()


def test_refused_record_reads_only_the_selection(tmp_path, demo_data):
    marker = tmp_path / "ran"
    train = _with_payload(Path(demo_data["train"]), tmp_path / "train.lmdb", 10, marker)
    assert "key '10'" in refused_record(str(train), None)
    assert refused_record(str(train), [0, 1, 2, 11, 63]) is None
    assert "key '10'" in refused_record(str(train), [63, 10])
    assert not marker.exists()
