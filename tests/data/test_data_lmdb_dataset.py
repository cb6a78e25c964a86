import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from data import check_readable, count, open_dataset
from data.lmdb_dataset import LmdbDataset
from data.writer import write_lmdb


def _assert_same(read, orig):
    assert read.energy == orig.energy  # bit for bit
    np.testing.assert_allclose(read.positions, orig.positions, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(read.forces, orig.forces, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(read.cell, orig.cell, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(read.stress, orig.stress, rtol=2e-7, atol=1e-7)
    assert read.numbers.tolist() == orig.numbers.tolist()
    assert read.pbc.tolist() == orig.pbc.tolist()
    assert read.tags.tolist() == orig.tags.tolist()
    assert read.fixed.tolist() == orig.fixed.tolist()
    assert read.info["config_type"] == orig.info["config_type"]
    assert read.info["k"] == orig.info["k"]


def test_single_file_round_trip(tmp_path, structures):
    [path] = write_lmdb(structures, tmp_path / "one.lmdb", progress=False)
    assert path == tmp_path / "one.lmdb" and path.is_file()
    ds = LmdbDataset(path)
    assert len(ds) == len(structures) == count(path)
    for i, orig in enumerate(structures):
        s = ds[i]
        assert s.index == i and s.sid == i
        _assert_same(s, orig)
        assert s.positions.dtype == np.float64 and s.numbers.dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["one.lmdb"]  # no temp or lock files left


def test_three_shards_form_one_global_index(tmp_path, make_structures):
    items = make_structures(11, seed=4)
    paths = write_lmdb(items, tmp_path / "sharded", shards=3, progress=False)
    assert [p.name for p in paths] == ["data.0000.lmdb", "data.0001.lmdb", "data.0002.lmdb"]
    ds = open_dataset(tmp_path / "sharded")
    assert isinstance(ds, LmdbDataset) and ds.lengths == [4, 4, 3] and len(ds) == 11
    assert ds.locate(4) == (1, 0) and ds.locate(10) == (2, 2) and ds.locate(-1) == (2, 2)
    for i, orig in enumerate(items):
        _assert_same(ds[i], orig)
        assert ds[i].index == i
    with pytest.raises(IndexError):
        ds[11]
    assert count(tmp_path / "sharded") == 11
    check_readable(tmp_path / "sharded")


def test_fairchem_record_layout(tmp_path, structures):
    """Field names, dtypes and shapes follow FairChem v1's AtomsToGraphs."""
    [path] = write_lmdb(structures, tmp_path / "f.lmdb", progress=False)
    d = LmdbDataset(path).get_data(2)
    n = structures[2].natoms
    assert isinstance(d, Data)
    assert d.pos.dtype == torch.float32 and d.pos.shape == (n, 3)
    assert d.atomic_numbers.dtype == torch.float32 and d.atomic_numbers.shape == (n,)
    assert d.cell.shape == (1, 3, 3) and d.pbc.shape == (1, 3) and d.pbc.dtype == torch.bool
    assert d.tags.dtype == torch.long and d.fixed.dtype == torch.long
    assert d.natoms == n and isinstance(d.natoms, int)
    assert d.forces.shape == (n, 3) and d.stress.shape == (1, 3, 3)
    assert isinstance(d.energy, float) and d.energy == structures[2].energy
    # only energy/forces names: FairChem's key_mapping {y: energy} asserts the target is absent
    assert "y" not in d and "force" not in d


def test_read_exactly_as_fairchem_opens_it(tmp_path, make_structures):
    """FairChem's connect_db parameters, `length` entry and ascii keys on our shards."""
    write_lmdb(make_structures(5), tmp_path / "fc", shards=2, progress=False)
    total = 0
    for shard in sorted((tmp_path / "fc").glob("*.lmdb")):
        env = lmdb.open(str(shard), subdir=False, readonly=True, lock=False, readahead=True,
                        meminit=False, max_readers=1)
        n = pickle.loads(env.begin().get("length".encode("ascii")))
        for j in range(n):
            d = pickle.loads(env.begin().get(f"{j}".encode("ascii")))
            assert d.pos.shape[0] == d.natoms
        total += n
        env.close()
    assert total == 5


def _fairchem_style_file(path, *, y_names: bool, with_length: bool = True, n: int = 3):
    """Written the way FairChem's own preprocessing does (independent of our writer)."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30, lock=False)
    rng = np.random.default_rng(1)
    energies = []
    with env.begin(write=True) as txn:
        for i in range(n):
            natoms = 4
            e = float(rng.normal())
            energies.append(e)
            fields = dict(pos=torch.tensor(rng.normal(size=(natoms, 3)), dtype=torch.float32),
                          atomic_numbers=torch.Tensor([8, 1, 1, 6]), natoms=natoms,
                          cell=torch.eye(3).view(1, 3, 3) * 10, tags=torch.zeros(natoms).long(),
                          fixed=torch.zeros(natoms).long(), sid=100 + i, fid=i)
            f = torch.tensor(rng.normal(size=(natoms, 3)), dtype=torch.float32)
            if y_names:
                fields.update(y=torch.tensor([e], dtype=torch.float64), force=f)
            else:
                fields.update(energy=e, forces=f)
            txn.put(f"{i}".encode("ascii"), pickle.dumps(Data(**fields), protocol=-1))
        if with_length:
            txn.put("length".encode("ascii"), pickle.dumps(n, protocol=-1))
    env.close()
    return energies


@pytest.mark.parametrize("y_names", [True, False])
def test_reads_files_written_by_fairchem_tools(tmp_path, y_names):
    energies = _fairchem_style_file(tmp_path / "x.lmdb", y_names=y_names)
    ds = LmdbDataset(tmp_path / "x.lmdb")
    s = ds[1]
    assert s.energy == energies[1] and s.forces.shape == (4, 3)
    assert s.sid == 101 and s.fid == 1 and s.numbers.tolist() == [8, 1, 1, 6]
    assert s.pbc.tolist() == [True, True, True]  # no pbc field: periodic along non-zero cell vectors


def test_missing_length_falls_back_to_entry_count_like_fairchem(tmp_path):
    _fairchem_style_file(tmp_path / "x.lmdb", y_names=True, with_length=False, n=4)
    assert len(LmdbDataset(tmp_path / "x.lmdb")) == 4 == count(tmp_path / "x.lmdb")


def test_pyg1_pickles_are_upgraded(tmp_path):
    """A Data pickled by PyG 1.x has plain attributes in __dict__ and no _store."""
    legacy = Data.__new__(Data)
    legacy.__dict__.update(pos=torch.zeros(2, 3), atomic_numbers=torch.Tensor([1, 1]), natoms=2,
                           y=-1.5, force=torch.zeros(2, 3), cell=torch.zeros(1, 3, 3))
    env = lmdb.open(str(tmp_path / "old.lmdb"), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(legacy))
        txn.put(b"length", pickle.dumps(1))
    env.close()
    s = LmdbDataset(tmp_path / "old.lmdb")[0]
    assert s.energy == -1.5 and s.natoms == 2 and not s.pbc.any()


def _collate(batch):
    return batch


def test_dataloader_with_two_workers(tmp_path, make_structures):
    items = make_structures(12, seed=7)
    write_lmdb(items, tmp_path / "dl", shards=3, progress=False)
    ds = open_dataset(tmp_path / "dl")
    ds[0]  # handles opened in the parent must not be reused by the forked workers
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=_collate,
                                         shuffle=False)
    seen = [s for batch in loader for s in batch]
    assert [s.index for s in seen] == list(range(12))
    assert [s.energy for s in seen] == [s.energy for s in items]


def test_dataset_pickles_without_handles(tmp_path, structures):
    write_lmdb(structures, tmp_path / "p.lmdb", progress=False)
    ds = LmdbDataset(tmp_path / "p.lmdb")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[4].energy == structures[4].energy


def test_same_file_opened_twice_in_one_process(tmp_path, structures):
    write_lmdb(structures, tmp_path / "t.lmdb", progress=False)
    a, b = LmdbDataset(tmp_path / "t.lmdb"), open_dataset(tmp_path / "t.lmdb")
    assert a[1].energy == b[1].energy and count(tmp_path / "t.lmdb") == 10
    a.close()
    assert b[2].energy == structures[2].energy


def _energies_in_child(pair):
    a, b = pair
    return a[1].energy, b[2].energy


def test_two_datasets_on_one_file_work_after_fork(tmp_path, structures):
    """A forked worker re-opens files whose parent handles it inherited (LMDB forbids two opens)."""
    import multiprocessing

    write_lmdb(structures, tmp_path / "f.lmdb", progress=False)
    a, b = LmdbDataset(tmp_path / "f.lmdb"), LmdbDataset(tmp_path / "f.lmdb")
    a[0], b[0]
    global _FORKED
    _FORKED = (a, b)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_child_reads)
    assert got == (structures[1].energy, structures[2].energy)
    assert a[3].energy == structures[3].energy  # the parent's handles still work


_FORKED = None


def _child_reads():
    return _energies_in_child(_FORKED)
