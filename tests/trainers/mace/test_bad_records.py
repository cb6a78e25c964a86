"""A record preflight did not sample, with a NaN position or no atoms, met while training: the run stops at once
(exit 1, one line naming the LMDB file and entry), never hangs in the neighbour search, and its run directory is
marked failed and resumes once the data is fixed. Real LMDBs written by the project's writer, a real MACE run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
LAUNCH = Path(sys.executable).with_name("launch")
N, STATS = 40, 4


def _structures(demo_data, at: int, how: str) -> List:
    from data.datasets import open_dataset
    from data.structure import Structure

    s = open_dataset(demo_data["train"])[0]  # one structure throughout: the stats sample sees every element
    items = [s] * N
    if how == "nan-position":
        pos = s.positions.copy()
        pos[1, 2] = np.nan
        items[at] = Structure(positions=pos, numbers=s.numbers, cell=s.cell, pbc=s.pbc, energy=s.energy,
                              forces=s.forces, stress=s.stress)
    elif how == "no-atoms":
        items[at] = Structure(positions=np.zeros((0, 3)), numbers=np.zeros(0), cell=s.cell, pbc=s.pbc,
                              energy=0.0, forces=np.zeros((0, 3)), stress=s.stress)
    return items


def _unsampled() -> int:
    """An entry in a later batch that neither preflight's sample nor the statistics sample reads."""
    from data.datasets import sample_positions
    from trainers.mace.stream import stats_positions

    seen = set(sample_positions(N)) | set(stats_positions(N, STATS, 0).tolist())
    return next(i for i in range(N // 2, N) if i not in seen)


def _launch(tmp_path: Path, demo_data, data: Path, workers: int) -> subprocess.CompletedProcess:
    from data.writer import write_lmdb

    val = tmp_path / "val.lmdb"  # the same elements as the training structure
    if not val.exists():
        write_lmdb(_structures(demo_data, 0, "fixed")[:4], val, progress=False)
    args = ["device=cpu", f"train.input_json={REPO / 'conf' / 'mace' / 'tiny.json'}", f"data.train={data}",
            f"data.val={val}", "train.epochs=1",
            "train.dtype=float32", "train.batch_size=8", f"train.num_workers={workers}",
            f"data.stats_samples={STATS}", "data.cache=none", "run_dir=run"]
    return subprocess.run([str(LAUNCH), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("how, words, workers", [("nan-position", "positions not finite (nan at atom 1)", 2),
                                                 ("no-atoms", "holds no atoms", 0)])
def test_a_bad_record_met_while_training_fails_the_run_by_name(tmp_path, demo_data, how, words, workers):
    from data.writer import write_lmdb

    at = _unsampled()
    data = tmp_path / "train.lmdb"
    write_lmdb(_structures(demo_data, at, how), data, progress=False)
    r = _launch(tmp_path, demo_data, data, workers)  # the timeout above is the "no hang" assertion
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(errors) == 1 and f"BadRecord: {data}: key '{at}': {words}" in errors[0], r.stderr[-2000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["status"] == "failed" and f"key '{at}'" in state["error"]
    if how != "nan-position":
        return
    write_lmdb(_structures(demo_data, at, "fixed"), data, progress=False, overwrite=True)  # the data fixed
    again = _launch(tmp_path, demo_data, data, workers)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "finished"
