"""Every reader checks every record it reads against the pickle allow-list, not only a shard's first.

A real dataset of three shards written with the project's writer gets one record replaced by a pickle
that would create a marker file, at the middle or the last index of a shard; each reader path (the
MACE stream, ``launch-data info`` and ``convert``, the FairChem-side readers, preflight's sample) must
refuse it with one line naming the shard and the key, and the marker must never appear.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from data.cli import main
from data.datasets import check_readable
from data.lmdb_dataset import LmdbDataset
from data.writer import write_lmdb
from launcher.core.errors import ConfigError

PER_SHARD = 5
SHARDS = 3


class Payload:
    """Unpickling this calls ``target(*args)``: what a hostile LMDB value does."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _payloads(marker: Path) -> dict[str, bytes]:
    run = Payload(os.system, f"touch {marker}")
    return {"bare": pickle.dumps(run, protocol=4),
            "in a field": pickle.dumps(Data(pos=torch.zeros(2, 3), atomic_numbers=torch.ones(2), natoms=2,
                                            energy=1.0, x=run), protocol=4)}


POSITIONS = {"middle of a shard": (1, PER_SHARD // 2), "last of a shard": (1, PER_SHARD - 1),
             "last of the dataset": (SHARDS - 1, PER_SHARD - 1)}


@pytest.fixture(params=[(p, k) for p in POSITIONS for k in ("bare", "in a field")],
                ids=lambda v: f"{v[0]}, {v[1]}")
def planted(request, tmp_path, make_structures):
    """(dataset folder, shard path, local key, global index, marker) with the payload planted."""
    position, kind = request.param
    folder = tmp_path / "data"
    write_lmdb(make_structures(PER_SHARD * SHARDS, seed=4), folder, shards=SHARDS, progress=False)
    shard_no, local = POSITIONS[position]
    shard = sorted(folder.glob("*.lmdb"))[shard_no]
    marker = tmp_path / "payload-ran"
    env = lmdb.open(str(shard), subdir=False, lock=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        assert txn.get(f"{local}".encode()) is not None
        txn.put(f"{local}".encode(), _payloads(marker)[kind])
    env.close()
    from data.shards import close_all

    close_all()
    yield folder, shard, local, shard_no * PER_SHARD + local, marker
    close_all()


def _refused(read: Callable[[], object], shard: Path, local: int) -> str:
    with pytest.raises(ConfigError) as e:
        read()
    msg = str(e.value)
    assert "\n" not in msg and str(shard) in msg and f"key '{local}'" in msg, msg
    assert "posix.system" in msg, msg
    return msg


def test_dataset_item_and_neighbours(planted):
    folder, shard, local, i, marker = planted
    ds = LmdbDataset(folder)
    assert ds[i - 1].natoms >= 1  # the records around it read normally
    if i + 1 < len(ds):
        assert ds[i + 1].natoms >= 1
    _refused(lambda: ds[i], shard, local)
    _refused(lambda: [ds[j] for j in range(len(ds))], shard, local)
    assert not marker.exists()


def test_fairchem_layout_record_reader(planted):
    """``get_data``: the PyG ``Data`` FairChem-side code (evaluation labels) reads."""
    folder, shard, local, i, marker = planted
    ds = LmdbDataset(folder)
    assert ds.get_data(i - 1).pos.shape[1] == 3
    _refused(lambda: ds.get_data(i), shard, local)
    assert not marker.exists()


def test_mace_stream(planted):
    from trainers.mace.stream import SplitGraphs, open_lmdb

    folder, shard, local, i, marker = planted
    n = len(open_lmdb(str(folder)))
    graphs = SplitGraphs(str(folder), np.arange(n), [1], 5.0, ["Default"], "Default", what="data.train")
    assert graphs.structure(i - 1).natoms >= 1
    _refused(lambda: [graphs.structure(j) for j in range(n)], shard, local)
    sample = SplitGraphs(str(folder), np.array([0, i]), [1], 5.0, ["Default"], "Default", what="data.train")
    _refused(lambda: sample.structure(1), shard, local)  # a sampled index reads only what it names
    assert not marker.exists()


def test_fairchem_evaluation_labels(planted):
    from trainers.fairchem.predictions import read_labels

    folder, shard, local, _i, marker = planted
    _refused(lambda: read_labels(folder), shard, local)
    assert not marker.exists()


def test_fairchem_index_selection_copy(planted, tmp_path):
    """``write_subset(rekey=True)`` loads each record it copies; the copy is not written."""
    from trainers.fairchem.subset import write_subset

    folder, shard, local, i, marker = planted
    out = tmp_path / "subset.lmdb"
    _refused(lambda: write_subset(folder, list(range(i + 1)), out, rekey=True), shard, local)
    assert not out.exists() and not marker.exists()


def test_preflight_sample(planted, monkeypatch):
    import data.datasets

    # the random part of the sample must not be what finds the payload: the fixed picks must
    monkeypatch.setattr(data.datasets, "RANDOM_SAMPLE", 0)
    folder, shard, local, _i, marker = planted
    _refused(lambda: check_readable(folder), shard, local)
    check_readable(folder, trust_pickles=True)  # the user's word lifts the check (nothing is unpickled here)
    assert not marker.exists()


def test_launch_data_info_and_convert(planted, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLIP_DEBUG", raising=False)
    folder, shard, local, _i, marker = planted
    assert main(["info", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(shard) in err and f"key '{local}'" in err, err
    out = tmp_path / "copy"
    assert main(["convert", str(folder), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(shard) in err and f"key '{local}'" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert not marker.exists()


def test_launch_dry_run_preflight(planted, tmp_path, monkeypatch):
    """``launch ... dry_run=true``: preflight's sample of data.train refuses the record, in one line."""
    import data.datasets
    from tests.launcher.conftest import run_launch

    monkeypatch.setattr(data.datasets, "RANDOM_SAMPLE", 0)
    folder, shard, local, _i, marker = planted
    repo = Path(__file__).resolve().parents[2]
    code, _out, err = run_launch(["device=cpu", f"train.input_json={repo / 'conf' / 'mace' / 'tiny.json'}",
                                  f"data.train={folder}", "dry_run=true"], monkeypatch, cwd=tmp_path)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data.train" in lines[0] and str(shard) in lines[0], err
    assert f"key '{local}'" in lines[0] and not marker.exists()
