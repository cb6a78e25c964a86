"""Bad input is one ConfigError line that names the file (and key) and what was expected."""
import pickle

import pytest
import torch
from torch_geometric.data import Data

from data import check_readable, count, open_dataset
from data.lmdb_dataset import LmdbDataset
from data.writer import write_lmdb
from launcher.core.errors import ConfigError

from .conftest import raw_lmdb


def _good(n=2):
    return Data(pos=torch.zeros(n, 3), atomic_numbers=torch.ones(n), natoms=n, energy=1.0,
                cell=torch.zeros(1, 3, 3))


def _one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_missing_path(tmp_path):
    for fn in (open_dataset, count, check_readable, LmdbDataset):
        with pytest.raises(ConfigError) as e:
            fn(tmp_path / "nope.lmdb")
        _one_line(e, "nope.lmdb", "no such file")


def test_empty_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        open_dataset(tmp_path)
    _one_line(e, str(tmp_path), "empty")


def test_folder_without_lmdb_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.xyz").write_text("x")
    with pytest.raises(ConfigError) as e:
        open_dataset(tmp_path)
    _one_line(e, "no *.lmdb files")


def test_file_that_is_not_lmdb(tmp_path):
    bad = tmp_path / "junk.lmdb"
    bad.write_bytes(b"this is not an lmdb file" * 100)
    with pytest.raises(ConfigError) as e:
        count(bad)
    _one_line(e, "junk.lmdb", "not a readable LMDB")


def test_missing_length_with_gaps_in_keys(tmp_path):
    path = raw_lmdb(tmp_path / "gaps.lmdb", {"0": pickle.dumps(_good()),
                                              "5": pickle.dumps(_good())})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)
    _one_line(e, "gaps.lmdb", "no 'length' entry", "'0'..'1'")


def test_length_that_does_not_unpickle(tmp_path):
    path = raw_lmdb(tmp_path / "l.lmdb", {"0": pickle.dumps(_good()), "length": b"\x80garbage"})
    with pytest.raises(ConfigError) as e:
        count(path)
    _one_line(e, "l.lmdb", "key 'length'", "does not unpickle")


def test_length_larger_than_the_file(tmp_path):
    path = raw_lmdb(tmp_path / "l.lmdb", {"0": pickle.dumps(_good()), "length": pickle.dumps(7)})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)
    _one_line(e, "key 'length' says 7 entries", "holds 1")


def test_length_not_an_int(tmp_path):
    path = raw_lmdb(tmp_path / "l.lmdb", {"0": pickle.dumps(_good()), "length": pickle.dumps("1")})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)
    _one_line(e, "expected a non-negative int")


def test_value_that_does_not_unpickle(tmp_path):
    path = raw_lmdb(tmp_path / "v.lmdb", {"0": pickle.dumps(_good()), "1": b"\x80\x04broken",
                                           "length": pickle.dumps(2)})
    ds = LmdbDataset(path)
    assert ds[0].natoms == 2
    with pytest.raises(ConfigError) as e:
        ds[1]
    _one_line(e, "v.lmdb", "key '1'", "does not unpickle")


def test_entry_lacking_pos(tmp_path):
    no_pos = Data(atomic_numbers=torch.ones(2), natoms=2, energy=1.0)
    path = raw_lmdb(tmp_path / "p.lmdb", {"0": pickle.dumps(no_pos), "length": pickle.dumps(1)})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)[0]
    _one_line(e, "p.lmdb", "key '0'", "lacks required field 'pos'")


def test_entry_that_is_not_a_data_record(tmp_path):
    path = raw_lmdb(tmp_path / "d.lmdb", {"0": pickle.dumps([1, 2]), "length": pickle.dumps(1)})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)[0]
    _one_line(e, "key '0'", "expected a torch_geometric Data record, got list")


def test_entry_with_inconsistent_shapes(tmp_path):
    bad = Data(pos=torch.zeros(3, 3), atomic_numbers=torch.ones(2), natoms=3)
    path = raw_lmdb(tmp_path / "s.lmdb", {"0": pickle.dumps(bad), "length": pickle.dumps(1)})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)[0]
    _one_line(e, "s.lmdb", "key '0'", "2 atomic numbers for 3 positions")


def test_entry_missing_below_length(tmp_path):
    path = raw_lmdb(tmp_path / "m.lmdb", {"0": pickle.dumps(_good()), "x": b"",
                                           "length": pickle.dumps(2)})
    with pytest.raises(ConfigError) as e:
        LmdbDataset(path)[1]
    _one_line(e, "m.lmdb", "key '1'", "entry missing")


def test_check_readable_on_an_empty_dataset(tmp_path):
    path = raw_lmdb(tmp_path / "e.lmdb", {"length": pickle.dumps(0)})
    assert count(path) == 0
    with pytest.raises(ConfigError) as e:
        check_readable(path)
    _one_line(e, "e.lmdb", "no entries")


def test_writer_refuses_mixed_labels(tmp_path, make_structures):
    items = make_structures(3)
    items[1].forces = None
    with pytest.raises(ConfigError) as e:
        write_lmdb(items, tmp_path / "mix.lmdb", progress=False)
    _one_line(e, "entry 1", "lacks 'forces'")
    assert not (tmp_path / "mix.lmdb").exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_writer_refuses_to_overwrite(tmp_path, structures):
    write_lmdb(structures, tmp_path / "o.lmdb", progress=False)
    with pytest.raises(ConfigError) as e:
        write_lmdb(structures[:3], tmp_path / "o.lmdb", progress=False)
    _one_line(e, "already exists", "--overwrite")
    write_lmdb(structures[:3], tmp_path / "o.lmdb", progress=False, overwrite=True)
    assert count(tmp_path / "o.lmdb") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["o.lmdb"]


def test_writer_bad_shard_counts(tmp_path, structures):
    with pytest.raises(ConfigError, match="--shards"):
        write_lmdb(structures, tmp_path / "x", shards=0, progress=False)
    with pytest.raises(ConfigError, match="at most one shard per structure"):
        write_lmdb(structures[:2], tmp_path / "x", shards=3, progress=False)
    with pytest.raises(ConfigError, match="nothing to write"):
        write_lmdb([], tmp_path / "x", progress=False)


def test_check_readable_when_the_first_entry_is_missing(tmp_path):
    path = raw_lmdb(tmp_path / "f.lmdb", {"x": b"", "length": pickle.dumps(1)})
    assert count(path) == 1
    with pytest.raises(ConfigError) as e:
        check_readable(path)
    _one_line(e, "f.lmdb", "key '0'", "first entry missing")
