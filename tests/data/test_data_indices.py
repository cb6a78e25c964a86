import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data.indices import load_indices_json, select_indices, write_indices_record
from launcher.core.errors import ConfigError


def test_default_is_everything_in_order():
    out = select_indices(5)
    assert out.dtype == np.int64 and out.tolist() == [0, 1, 2, 3, 4]


def test_max_samples_without_shuffle_keeps_the_first():
    assert select_indices(10, max_samples=3).tolist() == [0, 1, 2]
    assert select_indices(4, max_samples=100).tolist() == [0, 1, 2, 3]  # an upper bound


def test_shuffle_is_pcg64_and_fixed_across_machines():
    # Pinned values: a change here changes which structures every existing run trains on.
    assert select_indices(10, shuffle=True, seed=0).tolist() == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert select_indices(10, shuffle=True, seed=7, max_samples=4).tolist() == [8, 0, 7, 1]
    assert select_indices(10, shuffle=True, seed=1).tolist() != select_indices(
        10, shuffle=True, seed=0).tolist()


def test_split_indices_path_then_shuffle_then_max_samples(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([9, 3, 5, 1, 7]))
    assert select_indices(10, split_indices_path=path).tolist() == [9, 3, 5, 1, 7]
    assert select_indices(10, split_indices_path=path, max_samples=2).tolist() == [9, 3]
    shuffled = select_indices(10, split_indices_path=path, shuffle=True, seed=3)
    assert sorted(shuffled.tolist()) == [1, 3, 5, 7, 9]
    expected = np.array([9, 3, 5, 1, 7])[np.random.Generator(np.random.PCG64(3)).permutation(5)]
    assert shuffled.tolist() == expected.tolist()


def test_explicit_indices_win_over_everything(tmp_path):
    path = tmp_path / "i.json"
    path.write_text("[0, 1]")
    out = select_indices(10, indices=[7, 2], indices_path=path, max_samples=1, shuffle=True,
                         seed=5, split_indices_path=path)
    assert out.tolist() == [7, 2]  # used as given: no sampling on top


def test_indices_path_wins_over_split_sampling(tmp_path):
    path = tmp_path / "i.json"
    path.write_text("[6, 4, 2]")
    out = select_indices(10, indices_path=path, max_samples=1, shuffle=True,
                         split_indices_path=tmp_path / "missing.json")
    assert out.tolist() == [6, 4, 2]


def test_numpy_input_is_accepted():
    assert select_indices(5, indices=np.array([4, 0])).tolist() == [4, 0]


@pytest.mark.parametrize("bad, needle", [
    ([0, 10], "index 10 out of range for a dataset of 10 entries"),
    ([-1], "index -1 out of range"),
    ([1, 2, 1], "index 1 appears 2 times"),
    ([1.5], "entry 0 is 1.5, expected an integer"),
    ([1, True], "entry 1 is True"),
    (["3"], "entry 0 is '3'"),
    ([], "empty"),
    ("0,1", "expected a list of integers, got str"),
    (np.array([[1, 2]]), "flat list"),
])
def test_explicit_indices_are_validated(bad, needle):
    with pytest.raises(ConfigError, match="data.indices") as e:
        select_indices(10, indices=bad)
    assert needle in str(e.value) and e.value.key == "data.indices"


@pytest.mark.parametrize("text, needle", [
    ("[1, 2", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list of indices, got dict"),
    ("3", "got int"),
    ("[0, 99]", "index 99 out of range"),
    ("[0, 0]", "appears 2 times"),
])
def test_bad_indices_json(tmp_path, text, needle):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        select_indices(10, indices_path=path)
    assert "data.indices_path" in str(e.value) and needle in str(e.value)
    with pytest.raises(ConfigError) as e:
        select_indices(10, split_indices_path=path, split="val")
    assert "data.val_indices.indices_path" in str(e.value)


def test_missing_indices_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data.indices_path: .*nope.json: no such file"):
        select_indices(10, indices_path=tmp_path / "nope.json")


@pytest.mark.parametrize("kwargs, key", [
    ({"max_samples": 0}, "data.train_indices.max_samples"),
    ({"max_samples": -3}, "data.train_indices.max_samples"),
    ({"max_samples": 2.5}, "data.train_indices.max_samples"),
    ({"shuffle": "yes"}, "data.train_indices.shuffle"),
    ({"shuffle": True, "seed": -1}, "data.train_indices.seed"),
    ({"shuffle": True, "seed": 1.5}, "data.train_indices.seed"),
])
def test_sampling_options_are_validated(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        select_indices(10, **kwargs)


def test_empty_dataset():
    with pytest.raises(ConfigError, match="no entries"):
        select_indices(0)


def test_record_round_trips_and_is_a_valid_indices_path(tmp_path):
    picked = {"train": select_indices(20, shuffle=True, seed=2, max_samples=5),
              "val": np.arange(3)}
    path = write_indices_record(tmp_path / "logs" / "indices.json", picked)
    assert json.loads(path.read_text()) == {k: v.tolist() for k, v in picked.items()}
    assert [p.name for p in path.parent.iterdir()] == ["indices.json"]  # atomic, no temp left
    again = select_indices(20, indices_path=path, split="train")
    assert again.tolist() == picked["train"].tolist()
    assert load_indices_json(path, "k", "val") == [0, 1, 2]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), max_samples=st.one_of(st.none(), st.integers(1, 300)),
       shuffle=st.booleans(), seed=st.integers(0, 2**32))
def test_sampling_properties(n, max_samples, shuffle, seed):
    out = select_indices(n, max_samples=max_samples, shuffle=shuffle, seed=seed)
    assert len(out) == min(n, max_samples or n)
    assert len(set(out.tolist())) == len(out)
    assert out.min() >= 0 and out.max() < n
    assert out.tolist() == select_indices(n, max_samples=max_samples, shuffle=shuffle,
                                          seed=seed).tolist()
    if not shuffle:
        assert out.tolist() == list(range(len(out)))


UMASK_CHILD = r"""
import json, os, sys
from pathlib import Path
from data.indices import write_indices_record

def umask():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)

os.umask(int(sys.argv[2], 8))
before = umask()
p = write_indices_record(Path(sys.argv[1]) / "indices.json", {"train": [1, 2]})
print(json.dumps({"mode": p.stat().st_mode & 0o777, "before": before, "after": umask()}))
"""


@pytest.mark.parametrize("mask, mode", [("022", 0o644), ("002", 0o664), ("077", 0o600)])
def test_record_permissions_follow_the_umask_which_stays_unchanged(tmp_path, mask, mode):
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read the umask without changing it")
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", UMASK_CHILD, str(tmp_path), mask],
                       capture_output=True, text=True, cwd=repo, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"mode": mode, "before": int(mask, 8), "after": int(mask, 8)}


def test_record_is_fsynced_file_and_folder(tmp_path, monkeypatch):
    import os
    import stat

    synced = []
    real_fsync = os.fsync

    def spy(fd):  # records what is synced, then syncs it for real
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_indices_record(tmp_path / "indices.json", {"train": [0]})
    assert synced == ["file", "dir"]
