"""FairChem's predictions (sorted string ids, free atoms only) back in dataset order."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainers.fairchem.predictions import Labels, align, duplicate_ids, evaluate_predictions


def _labels():
    # dataset order: ids 2_0, 10_0, 1_0 (FairChem sorts them as strings: 10_0, 1_0, 2_0)
    natoms = np.array([2, 3, 1])
    fixed = [np.array([False, True]), np.array([False, False, False]), np.array([False])]
    forces = [np.full((2, 3), 1.0), np.full((3, 3), 2.0), np.full((1, 3), 3.0)]
    return Labels(ids=["2_0", "10_0", "1_0"], natoms=natoms, energy=np.array([-1.0, -2.0, -3.0]),
                  forces=forces, fixed=fixed)


def _npz(tmp_path, energy_by_id, forces_by_id):
    ids = sorted(energy_by_id)
    flat = np.concatenate([forces_by_id[i] for i in ids]).astype(np.float32)
    chunk = np.cumsum([forces_by_id[i].shape[0] for i in ids])[:-1]
    path = tmp_path / "s2ef_predictions.npz"
    np.savez_compressed(path, ids=np.array(ids), energy=np.array([energy_by_id[i] for i in ids], np.float32),
                        forces=flat, chunk_idx=chunk)
    return path


def test_align_restores_dataset_order_and_marks_fixed_atoms(tmp_path):
    labels = _labels()
    npz = _npz(tmp_path, {"2_0": -1.5, "10_0": -2.0, "1_0": -3.25},
               {"2_0": np.full((1, 3), 1.5), "10_0": np.full((3, 3), 2.0), "1_0": np.full((1, 3), 3.0)})
    out = align(npz, labels)
    assert out["energy"].tolist() == [-1.5, -2.0, -3.25]
    assert out["forces"][0][0].tolist() == [1.5, 1.5, 1.5]
    assert np.isnan(out["forces"][0][1]).all()               # the fixed atom: FairChem gives no force
    assert out["forces"][1].shape == (3, 3)


def test_metrics_and_files(tmp_path):
    labels = _labels()
    npz = _npz(tmp_path, {"2_0": -1.5, "10_0": -2.0, "1_0": -3.25},
               {"2_0": np.full((1, 3), 1.5), "10_0": np.full((3, 3), 2.0), "1_0": np.full((1, 3), 3.0)})
    m = evaluate_predictions(npz, labels, [7, 8, 9], tmp_path / "eval", with_metrics=True)
    assert m["n_structures"] == 3
    assert m["energy_mae"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert m["energy_mae_per_atom"] == pytest.approx((0.25 + 0 + 0.25) / 3)
    assert m["force_mae"] == pytest.approx(0.5 * 3 / 15)   # 5 free atoms x 3 components, one off by 0.5
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_structures"] == 3
    rows = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,energy,energy_per_atom,natoms" and rows[1].startswith("7,-1.5,-0.75,2")
    f = np.load(tmp_path / "eval" / "predictions_forces.npz")
    assert f["forces"].shape == (6, 3) and f["natoms"].tolist() == [2, 3, 1]


def test_missing_predictions_are_an_error(tmp_path):
    labels = _labels()
    npz = _npz(tmp_path, {"2_0": -1.5, "10_0": -2.0}, {"2_0": np.ones((1, 3)), "10_0": np.ones((3, 3))})
    with pytest.raises(RuntimeError, match="2 predictions for 3 structures"):
        align(npz, labels)


def test_duplicate_ids():
    assert duplicate_ids(["1_0", "2_0", "1_0"]) == ["1_0"]
    assert duplicate_ids(["1_0", "2_0"]) == []


def test_subset_copies_selected_records_with_unique_ids(demo_data, tmp_path):
    from data.lmdb_dataset import LmdbDataset
    from trainers.fairchem.predictions import read_labels
    from trainers.fairchem.subset import write_subset

    out = write_subset(demo_data["val"], [5, 2, 9], tmp_path / "sub.lmdb", rekey=True)
    src, sub = LmdbDataset(demo_data["val"]), LmdbDataset(out)
    try:
        assert len(sub) == 3
        assert np.array_equal(sub[0].positions, src[5].positions) and sub[1].energy == src[2].energy
    finally:
        src.close()
        sub.close()
    labels = read_labels(out)
    assert labels.ids == ["5_0", "2_0", "9_0"] and labels.energy.shape == (3,)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*-lock"))
