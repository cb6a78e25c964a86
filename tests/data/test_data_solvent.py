"""The real MACE-tutorial solvent set (xTB labels, isolated atoms first, not periodic)."""
import numpy as np
import pytest
from ase.io import read

from data import open_dataset
from data.convert import convert


def _check_round_trip(src, out, shards):
    convert(src, out, shards=shards, progress=False)
    frames = read(src, ":")
    ds = open_dataset(out)
    assert len(ds) == len(frames)
    for i, a in enumerate(frames):
        s = ds[i]
        assert s.energy == a.info["energy_xtb"], f"entry {i}: energy not bit-identical"
        assert s.numbers.tolist() == a.numbers.tolist()
        # stored as float32, as FairChem's own AtomsToGraphs does
        np.testing.assert_array_equal(s.positions, a.positions.astype(np.float32))
        np.testing.assert_array_equal(s.forces, a.arrays["forces_xtb"].astype(np.float32))
        np.testing.assert_array_equal(s.cell, np.asarray(a.cell).astype(np.float32))
        assert s.pbc.tolist() == [False, False, False] and s.stress is None
        assert s.isolated == (a.info.get("config_type") == "IsolatedAtom")
    return frames, ds


def test_solvent_train_round_trip(tmp_path, solvent_train):
    frames, ds = _check_round_trip(solvent_train, tmp_path / "solvent", shards=3)
    assert [ds[i].config_type for i in range(3)] == ["IsolatedAtom"] * 3
    assert [ds[i].numbers.tolist() for i in range(3)] == [[1], [6], [8]]
    assert ds[3].info["Nmols"] == frames[3].info["Nmols"]


@pytest.mark.slow
def test_solvent_test_set_round_trip(tmp_path, solvent_train):
    _check_round_trip(solvent_train.parent / "solvent_xtb_test.xyz", tmp_path / "t", shards=4)
