import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from data import count, open_dataset
from data.convert import convert, read_structures
from launcher.core.errors import ConfigError


def _frames(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 2 + i % 3
        a = Atoms(numbers=rng.integers(1, 30, size=k), positions=rng.normal(scale=2, size=(k, 3)),
                  cell=np.eye(3) * 8, pbc=True)
        a.info["config_type"] = "md"
        a.info["REF_energy"] = float(rng.normal(scale=50)) + 1e-12
        a.arrays["REF_forces"] = rng.normal(size=(k, 3))
        s = rng.normal(size=(3, 3))
        a.info["REF_stress"] = (s + s.T).reshape(-1)
        out.append(a)
    return out


def test_mace_style_keys_are_found(tmp_path):
    frames = _frames()
    write(tmp_path / "in.xyz", frames, format="extxyz")
    back = read(tmp_path / "in.xyz", ":")
    paths = convert(tmp_path / "in.xyz", tmp_path / "out", shards=2, progress=False)
    assert len(paths) == 2
    ds = open_dataset(tmp_path / "out")
    for i, a in enumerate(back):
        s = ds[i]
        assert s.energy == a.info["REF_energy"]
        np.testing.assert_allclose(s.forces, a.arrays["REF_forces"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s.stress, a.info["REF_stress"].reshape(3, 3), rtol=1e-6,
                                   atol=1e-6)
        assert s.info["config_type"] == "md" and s.isolated is False
        assert "REF_energy" not in s.info  # labels are not duplicated into info


def test_calculator_results_are_found(tmp_path):
    frames = []
    for a in _frames(3):
        e, f = a.info.pop("REF_energy"), a.arrays.pop("REF_forces")
        stress = a.info.pop("REF_stress")
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=stress.reshape(3, 3))
        frames.append(a)
    write(tmp_path / "c.extxyz", frames, format="extxyz")
    structures = read_structures(tmp_path / "c.extxyz", progress=False)
    for s, a in zip(structures, read(tmp_path / "c.extxyz", ":")):
        assert s.energy == a.get_potential_energy()
        assert s.stress.shape == (3, 3) and s.forces.shape == (len(a), 3)


def test_explicit_keys_and_dropping_a_label(tmp_path):
    frames = _frames(3)
    for a in frames:
        a.info["my_E"] = a.info["REF_energy"] + 1.0
    write(tmp_path / "k.xyz", frames, format="extxyz")
    got = read_structures(tmp_path / "k.xyz", energy_key="my_E", stress_key="none",
                          progress=False)
    assert [s.energy for s in got] == [a.info["REF_energy"] + 1.0
                                       for a in read(tmp_path / "k.xyz", ":")]
    assert all(s.stress is None for s in got) and all(s.forces is not None for s in got)


def test_no_energy_key_is_an_error_listing_what_exists(tmp_path):
    frames = _frames(2)
    for a in frames:
        del a.info["REF_energy"]
    write(tmp_path / "ne.xyz", frames, format="extxyz")
    with pytest.raises(ConfigError) as e:
        convert(tmp_path / "ne.xyz", tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "ne.xyz" in msg and "no energy found" in msg and "--energy-key" in msg
    assert "REF_stress" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_named_key_absent_everywhere(tmp_path):
    write(tmp_path / "a.xyz", _frames(2), format="extxyz")
    with pytest.raises(ConfigError, match="energy key 'dft_E' found in no entry"):
        read_structures(tmp_path / "a.xyz", energy_key="dft_E", progress=False)


def test_label_missing_in_one_entry(tmp_path):
    frames = _frames(4)
    del frames[2].info["REF_stress"]
    write(tmp_path / "p.xyz", frames, format="extxyz")
    with pytest.raises(ConfigError, match=r"entry 2: lacks stress key 'REF_stress'.*--stress-key none"):
        convert(tmp_path / "p.xyz", tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.xyz"]  # no OUT, no temp folder


def test_isolated_atoms_are_kept_and_flagged(tmp_path):
    frames = _frames(2)
    iso = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 20, pbc=False)
    iso.info["REF_energy"] = -13.6  # no forces, no stress: zeros are filled in for an isolated atom
    iso2 = Atoms("O", positions=[[0, 0, 0]], pbc=False)
    iso2.info.update(REF_energy=-432.1, config_type="IsolatedAtom")
    iso2.arrays["REF_forces"] = np.zeros((1, 3))
    write(tmp_path / "iso.xyz", [iso, iso2] + frames, format="extxyz")
    got = read_structures(tmp_path / "iso.xyz", progress=False)
    assert [s.isolated for s in got] == [True, True, False, False]
    assert got[0].config_type == "IsolatedAtom" and got[0].forces.tolist() == [[0, 0, 0]]
    assert got[0].stress.tolist() == np.zeros((3, 3)).tolist()
    convert(tmp_path / "iso.xyz", tmp_path / "iso.lmdb", progress=False)
    back = open_dataset(tmp_path / "iso.lmdb")
    assert back[1].isolated and back[1].config_type == "IsolatedAtom" and back[1].energy == -432.1
    assert back.get_data(0).isolated is True and back.get_data(2).isolated is False


def _asedb(path, frames):
    import ase.db

    with ase.db.connect(str(path)) as db:
        for i, a in enumerate(frames):
            b = a.copy()
            b.info = {}
            b.calc = SinglePointCalculator(b, energy=a.info["REF_energy"],
                                           forces=a.arrays["REF_forces"])
            db.write(b, config_type="md", step=i, data={"dft_forces": a.arrays["REF_forces"] * 2})


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_ase_database_input(tmp_path, suffix):
    frames = _frames(4)
    _asedb(tmp_path / f"in{suffix}", frames)
    convert(tmp_path / f"in{suffix}", tmp_path / "o.lmdb", progress=False)
    ds = open_dataset(tmp_path / "o.lmdb")
    assert len(ds) == 4
    for i, a in enumerate(frames):
        assert ds[i].energy == a.info["REF_energy"]
        assert ds[i].info["step"] == i and ds[i].info["config_type"] == "md"
    got = read_structures(tmp_path / f"in{suffix}", forces_key="dft_forces", progress=False)
    np.testing.assert_allclose(got[1].forces, frames[1].arrays["REF_forces"] * 2)


def test_unknown_suffix_and_unreadable_input(tmp_path):
    (tmp_path / "x.dat").write_text("hello")
    with pytest.raises(ConfigError, match="--format"):
        convert(tmp_path / "x.dat", tmp_path / "o", progress=False)
    (tmp_path / "bad.xyz").write_text("3\nnot a comment\nH 0 0\n")
    with pytest.raises(ConfigError, match="bad.xyz: not a readable extxyz file"):
        convert(tmp_path / "bad.xyz", tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="no such file"):
        convert(tmp_path / "missing.xyz", tmp_path / "o", progress=False)


def test_overwrite_and_reshard_an_lmdb(tmp_path):
    write(tmp_path / "a.xyz", _frames(6), format="extxyz")
    convert(tmp_path / "a.xyz", tmp_path / "one.lmdb", progress=False)
    with pytest.raises(ConfigError, match="already exists"):
        convert(tmp_path / "a.xyz", tmp_path / "one.lmdb", progress=False)
    convert(tmp_path / "one.lmdb", tmp_path / "three", shards=3, progress=False)
    assert [open_dataset(tmp_path / "three")[i].energy for i in range(6)] == [
        open_dataset(tmp_path / "one.lmdb")[i].energy for i in range(6)]
    convert(tmp_path / "a.xyz", tmp_path / "three", shards=2, overwrite=True, progress=False)
    assert len(list((tmp_path / "three").glob("*.lmdb"))) == 2 and count(tmp_path / "three") == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xyz", "one.lmdb", "three"]


def test_convert_from_lmdb_holds_one_entry_at_a_time(tmp_path, make_structures, monkeypatch):
    """Scale: an LMDB is converted as a stream (never the whole dataset in memory), in order."""
    import weakref

    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    items = make_structures(30, seed=7)
    write_lmdb(items, tmp_path / "src", shards=3, progress=False)
    live: set = set()
    peak = [0]
    real = LmdbDataset.__getitem__

    def getitem(self, i):
        s = real(self, i)
        live.add(id(s))
        weakref.finalize(s, live.discard, id(s))
        peak[0] = max(peak[0], len(live))
        return s

    monkeypatch.setattr(LmdbDataset, "__getitem__", getitem)
    convert(tmp_path / "src", tmp_path / "out", shards=2, progress=False)
    assert 1 <= peak[0] <= 2, peak
    monkeypatch.undo()
    back = open_dataset(tmp_path / "out")
    assert [back[i].energy for i in range(len(back))] == [s.energy for s in items]
