"""FairChem evaluate: errors_by_group.csv and parity.png from the real predictions on the demo data (slow)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launcher.core.layout import RunLayout

from .test_end_to_end import make_spec, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(fairchem_python, fairchem_fixtures, demo_data, tmp_path_factory):
    """A 1-epoch EquiformerV2 and its evaluate on the test split (default eval.group_by=config_type)."""
    root = tmp_path_factory.mktemp("fc-groups")
    res, _ = run(make_spec(root / "train", "equiformer_v2", demo_data, epochs=1))
    best = str(RunLayout.of(root / "train").checkpoints / "best_checkpoint.pt")
    run_dir = root / "eval"
    run(make_spec(run_dir, "equiformer_v2", demo_data, task="evaluate", model_in=best))
    return run_dir


def _by_hand(out, test_lmdb):
    from data.lmdb_dataset import LmdbDataset

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    npz = np.load(out / "predictions_forces.npz")
    pf = np.split(npz["forces"], np.cumsum(npz["natoms"])[:-1])
    ds = LmdbDataset(test_lmdb)
    acc: dict = {}
    for r, f in zip(rows, pf):
        s = ds[int(r["index"])]
        g = acc.setdefault(s.info["config_type"], {"de": [], "df": [], "n": 0, "atoms": 0})
        g["de"].append((float(r["energy"]) - s.energy) / int(r["natoms"]))
        keep = ~np.isnan(f[:, 0])                       # fixed atoms: FairChem predicts no force
        g["df"].append((f[keep] - s.forces[keep]).reshape(-1))
        g["n"] += 1
        g["atoms"] += int(r["natoms"])
    ds.close()
    return {name: {"n_structures": g["n"], "n_atoms": g["atoms"],
                   "energy_mae_per_atom": np.mean(np.abs(g["de"])),
                   "energy_rmse_per_atom": np.sqrt(np.mean(np.square(g["de"]))),
                   "force_mae": np.mean(np.abs(np.concatenate(g["df"]))),
                   "force_rmse": np.sqrt(np.mean(np.concatenate(g["df"]) ** 2))} for name, g in acc.items()}


@pytest.mark.slow
@pytest.mark.fairchem
def test_errors_by_config_type_match_predictions(evaluated, demo_data):
    out = RunLayout.of(evaluated).eval_dir
    want = _by_hand(out, demo_data["test"])
    assert set(want) == {"bulk", "slab"}
    rows = list(csv.DictReader(open(out / "errors_by_group.csv")))
    assert [r["group"] for r in rows] == ["bulk", "slab"]
    for r in rows:
        w = want[r["group"]]
        assert int(r["n_structures"]) == w["n_structures"] and int(r["n_atoms"]) == w["n_atoms"]
        for k in ("energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "force_rmse"):
            assert float(r[k]) == pytest.approx(w[k], rel=1e-5, abs=1e-9), (r["group"], k)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["by_group"]) == {"bulk", "slab"}
    assert sum(g["n_structures"] for g in m["by_group"].values()) == m["n_structures"]
    png = (out / "parity.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


@pytest.mark.slow
@pytest.mark.fairchem
def test_group_by_null_and_absent_key_on_the_same_predictions(evaluated, demo_data, tmp_path):
    """FairChem's own predictions npz and the LMDB, through the evaluate path's writer."""
    from trainers.fairchem.predictions import evaluate_predictions, find_predictions, read_labels

    npz = find_predictions(next(p.parent for p in evaluated.rglob("*_predictions.npz")))
    test = demo_data["test"]
    labels = read_labels(test)
    m = evaluate_predictions(npz, labels, np.arange(len(labels.ids)), tmp_path / "null", with_metrics=True)
    assert "by_group" not in m and not (tmp_path / "null" / "errors_by_group.csv").exists()
    assert (tmp_path / "null" / "parity.png").read_bytes().startswith(PNG_MAGIC)

    notes: list = []
    labels = read_labels(test, group_by="no_such_key")
    m = evaluate_predictions(npz, labels, np.arange(len(labels.ids)), tmp_path / "absent", with_metrics=True,
                             group_by="no_such_key", note=notes.append)
    assert len(notes) == 1 and "eval.group_by=no_such_key" in notes[0]
    rows = list(csv.DictReader(open(tmp_path / "absent" / "errors_by_group.csv")))
    assert [r["group"] for r in rows] == ["(none)"] and int(rows[0]["n_structures"]) == m["n_structures"]
    assert float(rows[0]["force_rmse"]) == pytest.approx(m["force_rmse"])


def test_labels_read_from_a_scalar_field_of_fairchem_style_records(tmp_path):
    """LMDBs made by FairChem's own tools carry tags as record attributes, not in our ``info``."""
    import pickle

    import lmdb
    import torch
    from torch_geometric.data import Data

    from trainers.fairchem.predictions import read_labels

    env = lmdb.open(str(tmp_path / "x.lmdb"), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for i, subset in enumerate(["md", "relax", None]):
            fields = dict(pos=torch.zeros(2, 3), atomic_numbers=torch.Tensor([8, 1]), natoms=2,
                          cell=torch.eye(3).view(1, 3, 3) * 10, tags=torch.zeros(2).long(),
                          fixed=torch.zeros(2).long(), sid=i, fid=0, energy=-1.0 * i, forces=torch.zeros(2, 3))
            if subset is not None:
                fields["subset"] = subset
            txn.put(f"{i}".encode("ascii"), pickle.dumps(Data(**fields), protocol=-1))
        txn.put(b"length", pickle.dumps(3, protocol=-1))
    env.close()
    assert read_labels(tmp_path / "x.lmdb", group_by="subset").groups == ["md", "relax", None]
    assert read_labels(tmp_path / "x.lmdb", group_by="sid").groups == ["0", "1", "2"]
    assert read_labels(tmp_path / "x.lmdb").groups is None
