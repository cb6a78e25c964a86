"""No LMDB value runs code: records go through an allow-list, ``length`` is a plain integer."""
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from data import check_readable, count, open_dataset
from data.cli import main
from data.fastpickle import ALLOWED, RefusedGlobal, check_record, loads_int, loads_record
from data.lmdb_dataset import LmdbDataset
from data.writer import write_lmdb
from launcher.core.errors import ConfigError

from .conftest import raw_lmdb

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this calls ``target(*args)``: what a hostile LMDB value does."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _marker_payload(marker: Path):
    """A payload whose only effect is creating ``marker`` (so a test sees whether it ran)."""
    return Payload(os.system, f"touch {marker}")




def _good(n=2):
    return Data(pos=torch.rand(n, 3), atomic_numbers=torch.ones(n), natoms=n, energy=1.0,
                cell=torch.eye(3).view(1, 3, 3), forces=torch.rand(n, 3))


class _Recorder(pickle.Unpickler):
    """Collects every global a pickle names (resolving them normally: for our own pickles only)."""

    def __init__(self, f):
        super().__init__(f)
        self.names = set()

    def find_class(self, module, name):
        self.names.add((module, name))
        if module == "torch.storage" and name == "_load_from_bytes":
            def load(blob):
                self.names.update(_blob_names(blob))
                return torch.load(io.BytesIO(blob), weights_only=False)
            return load
        return super().find_class(module, name)


def _blob_names(blob):
    f = io.BytesIO(blob)
    names = set()
    for _ in range(4):
        r = _Recorder(f)
        r.persistent_load = lambda pid: None
        r.load()
        names |= r.names
    return names


# ------------------------------------------------------------------ what real writers store
def test_what_our_writer_stores_is_exactly_allowed(tmp_path, make_structures):
    write_lmdb(make_structures(4), tmp_path / "o.lmdb", progress=False)
    ds = LmdbDataset(tmp_path / "o.lmdb")
    names = set()
    for i in range(len(ds)):
        r = _Recorder(io.BytesIO(ds.get_bytes(i)))
        r.load()
        names |= r.names
    assert ("torch_geometric.data.data", "Data") in names
    assert ("torch._utils", "_rebuild_tensor_v2") in names
    assert ("torch", "FloatStorage") in names  # inside the tensors' storage blobs
    assert names <= ALLOWED, names - ALLOWED
    for i in range(len(ds)):
        check_record(ds.get_bytes(i))
        assert ds[i].natoms == len(ds[i].numbers)


def _fairchem_like_records():
    """Records as FairChem's AtomsToGraphs + preprocess scripts and older datasets store them."""
    n = 3
    base = dict(pos=torch.rand(n, 3), cell=torch.eye(3).view(1, 3, 3),
                atomic_numbers=torch.tensor([8.0, 1.0, 1.0]), natoms=n,
                tags=torch.LongTensor([0, 1, 2]), fixed=torch.zeros(n), force=torch.rand(n, 3),
                y=-1.5, sid=12, fid=0)
    yield "pyg2", Data(**base)
    yield "numpy values", Data(**{**base, "sid": np.int64(7), "y": np.float64(-1.5),
                                  "extra": np.arange(4.0)})
    yield "parameter", Data(**{**base, "pos": torch.nn.Parameter(torch.rand(n, 3))})
    yield "bfloat16", Data(**{**base, "force": torch.rand(n, 3).to(torch.bfloat16)})
    yield "dtype and set", Data(**{**base, "dt": torch.float32, "s": {1, 2}, "sl": slice(1, 2)})
    # PyG 1.x pickled Data without a _store: attributes in __dict__ (FairChem's OC20 LMDBs)
    yield "pyg1", None, base


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_fairchem_style_records_load_with_the_allow_list(tmp_path, protocol):
    items = {}
    expected = {}
    for k, (name, obj, *rest) in enumerate(_fairchem_like_records()):
        if rest:  # PyG 1.x layout: pickle a plain __dict__ under the Data class name
            raw = _pyg1_pickle(rest[0], protocol)
            expected[k] = rest[0]
        else:
            raw = pickle.dumps(obj, protocol=protocol)
            expected[k] = obj.to_dict()
        items[str(k)] = raw
    n = len(items)
    items["length"] = pickle.dumps(n, protocol=protocol)
    path = raw_lmdb(tmp_path / "fc.lmdb", items)
    check_readable(path)
    ds = LmdbDataset(path)
    assert len(ds) == n
    for k in range(n):
        got = ds.get_data(k)
        assert torch.allclose(got.pos.detach(), torch.as_tensor(expected[k]["pos"]).detach())
        assert int(got.natoms) == 3
        s = ds[k]
        assert s.natoms == 3 and s.forces.shape == (3, 3)


def _pyg1_pickle(fields: dict, protocol: int) -> bytes:
    """What PyG 1.x wrote: ``Data`` with its fields straight in ``__dict__``."""
    class Old:  # pickled under Data's name, with no _store
        pass

    Old.__module__, Old.__qualname__ = "torch_geometric.data.data", "Data"
    obj = Old()
    obj.__dict__.update({k: v for k, v in fields.items()})
    saved = sys.modules["torch_geometric.data.data"].Data
    sys.modules["torch_geometric.data.data"].Data = Old
    try:
        return pickle.dumps(obj, protocol=protocol)
    finally:
        sys.modules["torch_geometric.data.data"].Data = saved


# ------------------------------------------------------------------ hostile values
def _hostile(marker: Path):
    """(name, pickled value, class the refusal must name) of values that would run code."""
    payload = _marker_payload(marker)
    yield "bare payload", pickle.dumps(payload), "posix.system"
    yield "payload in a field", pickle.dumps(Data(pos=torch.zeros(1, 3), x=payload)), \
        "posix.system"
    yield "eval", pickle.dumps(Payload(eval, f"open({str(marker)!r}, 'w')")), "builtins.eval"
    yield "getattr", pickle.dumps(Payload(getattr, str(marker), "upper")), "builtins.getattr"
    yield "torch.load", pickle.dumps(Payload(torch.save, {}, str(marker))), "torch.serialization.save"
    yield "subprocess", pickle.dumps(Payload(subprocess.call, ["touch", str(marker)])), \
        "subprocess.call"
    # a payload hidden inside a tensor's storage blob (what torch.load would run)
    blob = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, blob)
    pickle.dump(payload, blob)
    from torch.storage import _load_from_bytes
    yield "payload in a storage blob", pickle.dumps(Payload(_load_from_bytes, blob.getvalue())), \
        "posix.system"


@pytest.mark.parametrize("case", range(7))
def test_hostile_records_are_refused_and_never_run(tmp_path, case):
    marker = tmp_path / "ran"
    name, raw, cls = list(_hostile(marker))[case]
    path = raw_lmdb(tmp_path / "h.lmdb", {"0": raw, "length": pickle.dumps(1)})
    for read in (lambda: LmdbDataset(path)[0], lambda: LmdbDataset(path).get_data(0),
                 lambda: check_readable(path)):
        with pytest.raises(ConfigError) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and "h.lmdb" in msg and "key '0'" in msg, msg
        assert f"refusing to unpickle {cls}" in msg, msg
    assert not marker.exists(), f"{name}: the payload ran"


def test_refusal_names_file_key_and_class(tmp_path):
    marker = tmp_path / "ran"
    path = raw_lmdb(tmp_path / "evil.lmdb", {"0": pickle.dumps(_good()),
                                              "1": pickle.dumps(_marker_payload(marker)),
                                              "length": pickle.dumps(2)})
    ds = LmdbDataset(path)
    assert ds[0].natoms == 2
    with pytest.raises(ConfigError) as e:
        ds[1]
    msg = str(e.value)
    assert msg.startswith(f"{path}: key '1': refusing to unpickle posix.system"), msg
    assert "data.trust_pickles=true" in msg and "--trust-pickles" in msg and "\n" not in msg
    assert not marker.exists()


def test_trust_pickles_turns_the_allow_list_off(tmp_path):
    class_name = "collections.Counter"  # harmless but not allowed: stands for "a class we lack"
    from collections import Counter

    record = Data(pos=torch.zeros(2, 3), atomic_numbers=torch.ones(2), natoms=2, c=Counter("ab"))
    path = raw_lmdb(tmp_path / "c.lmdb", {"0": pickle.dumps(record), "length": pickle.dumps(1)})
    with pytest.raises(ConfigError, match=f"refusing to unpickle {class_name}"):
        LmdbDataset(path)[0]
    with pytest.raises(ConfigError, match=class_name):
        check_readable(path)
    assert LmdbDataset(path, trust_pickles=True)[0].natoms == 2
    assert LmdbDataset(path, trust_pickles=True).get_data(0).c == Counter("ab")
    check_readable(path, trust_pickles=True)


# ------------------------------------------------------------------ length
@pytest.mark.parametrize("value", [5, np.int64(5), np.int32(5), np.uint64(5), np.int16(5)])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_length_as_python_or_numpy_integer(value, protocol):
    assert loads_int(pickle.dumps(value, protocol=protocol)) == 5
    assert type(loads_int(pickle.dumps(value, protocol=protocol))) is int


def test_length_payload_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = raw_lmdb(tmp_path / "l.lmdb", {"0": pickle.dumps(_good()),
                                           "length": pickle.dumps(_marker_payload(marker))})
    for read in (count, check_readable, LmdbDataset, open_dataset):
        with pytest.raises(ConfigError) as e:
            read(path)
        msg = str(e.value)
        assert "l.lmdb" in msg and "key 'length'" in msg and "posix.system" in msg, msg
    assert main(["info", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "key 'length'" in err and "\n" not in err
    assert not marker.exists()


@pytest.mark.parametrize("value, needle", [
    (np.float64(3.0), "expected an integer dtype"),
    (np.array([3]), "multiarray._reconstruct"),
    (torch.tensor(3), "torch"),
    ("3", "expected a non-negative int"),
    (-1, "expected a non-negative int"),
])
def test_length_that_is_not_a_plain_integer(tmp_path, value, needle):
    path = raw_lmdb(tmp_path / "l.lmdb", {"0": pickle.dumps(_good()),
                                           "length": pickle.dumps(value)})
    with pytest.raises(ConfigError) as e:
        count(path)
    assert "key 'length'" in str(e.value) and needle in str(e.value), str(e.value)


# ------------------------------------------------------------------ the CLI and the subprocess view
def test_launch_data_info_refuses_and_trust_pickles_reads(tmp_path, capsys):
    from collections import Counter

    record = Data(pos=torch.zeros(2, 3), atomic_numbers=torch.ones(2), natoms=2, energy=1.0,
                  c=Counter("ab"))
    path = raw_lmdb(tmp_path / "c.lmdb", {"0": pickle.dumps(record), "length": pickle.dumps(1)})
    assert main(["info", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key '0': refusing to unpickle collections.Counter" in err and "\n" not in err
    assert main(["info", str(path), "--quiet", "--trust-pickles"]) == 0
    assert "structures: 1" in capsys.readouterr().out
    out = tmp_path / "copy.lmdb"
    assert main(["convert", str(path), str(out), "--quiet"]) == 2
    assert not out.exists()
    assert main(["convert", str(path), str(out), "--quiet", "--trust-pickles"]) == 0
    assert count(out) == 1


@pytest.mark.slow
def test_launch_data_info_on_a_hostile_file_in_a_fresh_process(tmp_path):
    marker = tmp_path / "ran"
    path = raw_lmdb(tmp_path / "h.lmdb", {"0": pickle.dumps(_good()),
                                           "length": pickle.dumps(_marker_payload(marker))})
    r = subprocess.run([sys.executable, "-m", "data.cli", "info", str(path), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not marker.exists()


def test_allow_list_refuses_by_name_not_by_effect():
    with pytest.raises(RefusedGlobal) as e:
        loads_record(pickle.dumps(Payload(print, "x")))
    assert e.value.name == "builtins.print"
    with pytest.raises(RefusedGlobal):
        check_record(pickle.dumps(Payload(print, "x")))


def test_the_payload_used_above_really_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_marker_payload(marker)))  # what the old reader did
    assert marker.exists()


def test_payloads_in_every_pickle_of_a_storage_blob_are_refused(tmp_path, monkeypatch):
    """A tensor's storage blob is five pickles and raw bytes: each pickle is checked, even when
    its header matches one seen before (the header cache compares bytes only), and even with
    the variable mace sets on import to make torch.load unrestricted by default."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    good = Data(pos=torch.rand(2, 3), atomic_numbers=torch.ones(2), natoms=2)
    loads_record(pickle.dumps(good))  # the header of this torch build is now cached
    blobs = []

    class Capture(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_load_from_bytes":
                return lambda b: (blobs.append(b), torch.load(io.BytesIO(b), weights_only=True))[1]
            return super().find_class(module, name)

    Capture(io.BytesIO(pickle.dumps(torch.rand(2, 3)))).load()
    blob = blobs[0]
    payload = pickle.dumps(_marker_payload(marker), protocol=2)
    f = io.BytesIO(blob)
    parts = []

    class Pids(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

    for _ in range(5):  # magic, protocol, sys info, storage, keys
        start = f.tell()
        Pids(f).load()
        parts.append(blob[start:f.tell()])
    rest = blob[f.tell():]
    from torch.storage import _load_from_bytes
    for k in range(5):
        evil = b"".join(payload if j == k else p for j, p in enumerate(parts)) + rest
        raw = pickle.dumps(Payload(_load_from_bytes, evil))
        for read in (loads_record, check_record):
            with pytest.raises(pickle.UnpicklingError):
                read(raw)
    assert not marker.exists()
