"""ASE-database LMDBs (FairChem v2 / OMat24 ``*.aselmdb``) through the common dataset interface."""
import json
import zlib

import lmdb
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from data import count, detect_format, open_dataset
from data.aselmdb import AseLmdbDataset
from data.convert import convert
from launcher.core.errors import ConfigError


def _atoms(i, rng):
    n = 3 + i
    a = Atoms(numbers=rng.integers(1, 40, size=n), positions=rng.normal(scale=2, size=(n, 3)),
              cell=np.eye(3) * (6 + i), pbc=True, tags=np.arange(n) % 3)
    a.set_constraint(FixAtoms(indices=[0]))
    a.calc = SinglePointCalculator(a, energy=float(rng.normal(scale=30)) + 1e-11,
                                   forces=rng.normal(size=(n, 3)),
                                   stress=rng.normal(size=6))
    return a


def _write_with_ase_db_backends(path, frames, delete=()):
    pytest.importorskip("ase_db_backends")
    import ase.db

    with ase.db.connect(str(path), type="aselmdb") as db:
        for i, a in enumerate(frames):
            db.write(a, sid=f"s{i}", config_type="omat")
    if delete:
        with ase.db.connect(str(path), type="aselmdb") as db:
            db.delete(list(delete))


def test_read_file_written_by_ase_db_backends(tmp_path):
    rng = np.random.default_rng(0)
    frames = [_atoms(i, rng) for i in range(5)]
    _write_with_ase_db_backends(tmp_path / "x.aselmdb", frames, delete=[2])  # ids 1..5, drop 2
    assert detect_format(tmp_path / "x.aselmdb") == "aselmdb" and count(tmp_path / "x.aselmdb") == 4
    ds = open_dataset(tmp_path / "x.aselmdb")
    assert isinstance(ds, AseLmdbDataset) and len(ds) == 4
    kept = [frames[0], frames[2], frames[3], frames[4]]  # ASE id 2 is frames[1]
    for i, a in enumerate(kept):
        s = ds[i]
        assert s.energy == a.get_potential_energy()  # bit for bit (JSON keeps float64 repr)
        np.testing.assert_array_equal(s.forces, a.get_forces(apply_constraint=False))
        np.testing.assert_allclose(s.stress, a.get_stress(voigt=False))
        np.testing.assert_array_equal(s.positions, a.positions)
        assert s.fixed.tolist() == [1] + [0] * (len(a) - 1)
        assert s.tags.tolist() == a.get_tags().tolist()
        assert s.info["config_type"] == "omat" and s.index == i
    assert ds[1].sid == "s2" and ds[1].info["ase_id"] == 3
    d = ds.get_data(0)
    assert d.pos.shape == (len(kept[0]), 3) and d.energy == kept[0].get_potential_energy()


def _write_legacy(path, rows):
    """FairChem v1's own LMDBDatabase: orjson with numpy as plain lists, zlib, ids from 1."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for i, row in enumerate(rows, start=1):
            txn.put(f"{i}".encode("ascii"), zlib.compress(json.dumps(row).encode()))
        txn.put(b"nextid", zlib.compress(json.dumps(len(rows) + 1).encode()))
    env.close()


def _legacy_row(i):
    return {"numbers": [8, 1, 1], "positions": [[0, 0, 0], [0, 0, 1 + i], [0, 1, 0]],
            "cell": [[10, 0, 0], [0, 10, 0], [0, 0, 10]], "pbc": [True, True, False],
            "energy": -14.25 - i, "forces": [[0, 0, 0.5], [0, 0, -0.25], [0, 0, -0.25]],
            "ctime": 1.0, "mtime": 1.0, "key_value_pairs": {"sid": 10 + i}}


def test_independent_writer_and_folder_of_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_legacy(folder / "a.aselmdb", [_legacy_row(0), _legacy_row(1)])
    _write_legacy(folder / "b.aselmdb", [_legacy_row(2)])
    assert detect_format(folder) == "aselmdb" and count(folder) == 3
    ds = open_dataset(folder)
    assert [ds[i].energy for i in range(3)] == [-14.25, -15.25, -16.25]
    assert [ds[i].sid for i in range(3)] == [10, 11, 12]
    assert ds[2].pbc.tolist() == [True, True, False] and ds[2].stress is None
    convert(folder, tmp_path / "conv.lmdb", progress=False)  # aselmdb -> FairChem v1 LMDB
    back = open_dataset(tmp_path / "conv.lmdb")
    assert [back[i].energy for i in range(3)] == [-14.25, -15.25, -16.25]


def test_corrupt_aselmdb_rows(tmp_path):
    path = tmp_path / "c.aselmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", b"not zlib")
        txn.put(b"nextid", zlib.compress(b"3"))
    env.close()
    ds = open_dataset(path)
    with pytest.raises(ConfigError, match=r"c.aselmdb: key '1': row does not decode"):
        ds[0]
    with pytest.raises(ConfigError, match=r"key '2': row missing"):
        ds[1]
    env = lmdb.open(str(tmp_path / "n.aselmdb"), subdir=False, map_size=1 << 20, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", b"x")
    env.close()
    with pytest.raises(ConfigError, match="no 'nextid' entry"):
        open_dataset(tmp_path / "n.aselmdb")
