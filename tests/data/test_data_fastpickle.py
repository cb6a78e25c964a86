"""The fast record loader gives exactly what pickle.loads gives, or defers to it."""
import pickle

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from data.fastpickle import STATS, loads_record


def _same(a, b):
    assert sorted(a.keys()) == sorted(b.keys())
    for k in a.keys():
        x, y = a[k], b[k]
        if torch.is_tensor(x):
            assert torch.is_tensor(y) and x.dtype == y.dtype and x.shape == y.shape, k
            assert torch.equal(x, y), k
        else:
            assert x == y, k


def _tensors():
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    return dict(
        f32=torch.randn(5, 3), f64=torch.randn(7, dtype=torch.float64),
        i64=torch.arange(9).reshape(3, 3), i32=torch.arange(4, dtype=torch.int32),
        b=torch.tensor([[True, False, True]]), u8=torch.arange(3, dtype=torch.uint8),
        f16=torch.ones(2, dtype=torch.float16), scalar=torch.tensor(2.5, dtype=torch.float64),
        empty=torch.zeros(0, 3), transposed=base.t(), sliced=base[1:, 2:],
        stepped=base[:, ::2], cell=torch.eye(3).view(1, 3, 3), py_float=-1.25, py_int=3,
        text="Default",
    )


def test_fast_path_matches_pickle_for_every_dtype_and_layout():
    d = Data(**_tensors())
    raw = pickle.dumps(d, protocol=4)
    before = STATS["fast"]
    got = loads_record(raw)
    assert STATS["fast"] == before + 1  # the fast path really ran
    _same(pickle.loads(raw), got)
    as_np = loads_record(raw, tensors=False)
    for k, v in pickle.loads(raw).items():
        if torch.is_tensor(v):
            assert isinstance(as_np[k], np.ndarray) and np.array_equal(as_np[k], v.numpy()), k


@pytest.mark.parametrize("value", [torch.ones(2, dtype=torch.bfloat16),
                                   torch.ones(2, requires_grad=True),
                                   torch.nn.Parameter(torch.ones(2))])
def test_unusual_tensors_fall_back_to_pickle(value):
    raw = pickle.dumps(Data(x=value, pos=torch.zeros(1, 3)), protocol=4)
    before = STATS["fallback"]
    got = loads_record(raw)
    assert STATS["fallback"] == before + 1
    ref = pickle.loads(raw)
    assert torch.equal(got.x.detach().float(), ref.x.detach().float())
    assert got.x.dtype == ref.x.dtype and got.x.requires_grad == ref.x.requires_grad
    assert isinstance(loads_record(raw, tensors=False).pos, np.ndarray)


def test_plain_objects_and_garbage():
    assert loads_record(pickle.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(Exception):
        loads_record(b"\x80\x04garbage")


def test_structures_are_identical_through_either_path(tmp_path, make_structures):
    from data.lmdb_dataset import LmdbDataset
    from data.pyg import pyg_to_structure
    from data.writer import write_lmdb

    items = make_structures(6, seed=9)
    write_lmdb(items, tmp_path / "s.lmdb", progress=False)
    ds = LmdbDataset(tmp_path / "s.lmdb")
    for i in range(len(ds)):
        fast = ds[i]
        slow = pyg_to_structure(pickle.loads(ds.get_bytes(i)), i)
        for name in ("positions", "numbers", "cell", "pbc", "forces", "stress", "tags", "fixed"):
            a, b = getattr(fast, name), getattr(slow, name)
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        assert (fast.energy, fast.natoms, fast.sid, fast.fid, fast.index, fast.info) == (
            slow.energy, slow.natoms, slow.sid, slow.fid, slow.index, slow.info)
        assert type(fast.sid) is int and type(fast.energy) is float
