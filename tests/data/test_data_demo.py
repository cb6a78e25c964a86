import numpy as np
from ase.data import atomic_numbers

from data import count, open_dataset
from data.demo import ELEMENTS, ensure_demo_dataset, make_demo_dataset, make_emt_structures


def test_demo_splits_labels_and_sizes(demo_data):
    assert sorted(demo_data) == ["test", "train", "val"]
    assert [count(demo_data[s]) for s in ("train", "val", "test")] == [64, 16, 16]
    allowed = {atomic_numbers[e] for e in ELEMENTS}
    types = set()
    for split, path in demo_data.items():
        assert path.name == f"{split}.lmdb"
        ds = open_dataset(path)
        for i in range(len(ds)):
            s = ds[i]
            assert 8 <= s.natoms <= 32
            assert set(s.numbers.tolist()) <= allowed
            assert s.energy is not None and s.forces.shape == (s.natoms, 3)
            assert s.stress.shape == (3, 3) and np.abs(s.forces).max() > 0
            types.add(s.config_type)
    assert types <= {"bulk", "slab"}


def test_demo_is_deterministic_and_seeded():
    a = make_emt_structures(4, seed=3)
    b = make_emt_structures(4, seed=3)
    c = make_emt_structures(4, seed=4)
    for x, y in zip(a, b):
        assert x.get_potential_energy() == y.get_potential_energy()
        np.testing.assert_array_equal(x.positions, y.positions)
    assert [x.get_potential_energy() for x in a] != [x.get_potential_energy() for x in c]


def test_emt_labels_are_consistent():
    """Forces are minus the energy gradient (a real calculator, not random numbers)."""
    from ase.calculators.emt import EMT

    atoms = make_emt_structures(1, seed=11)[0]
    f = atoms.get_forces()
    probe = atoms.copy()
    probe.calc = EMT()
    h = 1e-4
    probe.positions[0, 0] += h
    e_plus = probe.get_potential_energy()
    probe.positions[0, 0] -= 2 * h
    e_minus = probe.get_potential_energy()
    assert abs(-(e_plus - e_minus) / (2 * h) - f[0, 0]) < 1e-4


def test_ensure_demo_dataset_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_LAUNCH_CACHE", str(tmp_path))
    paths = ensure_demo_dataset()
    assert paths["train"] == tmp_path / "demo-v1-seed0" / "train.lmdb"
    assert [count(paths[s]) for s in ("train", "val", "test")] == [64, 16, 16]
    stamp = paths["train"].stat().st_mtime_ns
    assert ensure_demo_dataset() == paths
    assert paths["train"].stat().st_mtime_ns == stamp  # reused, not regenerated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-v1-seed0"]  # no temp left
    first = open_dataset(paths["train"])[0]
    again = make_demo_dataset(tmp_path / "again", n_train=1, n_val=0, n_test=0)
    assert open_dataset(again["train"])[0].energy == first.energy
    assert sorted(again) == ["train"]


def test_the_shifted_domain_is_compressed_and_leaves_the_base_domain_as_it_was():
    import numpy as np

    from data.demo import make_emt_structures

    base, shifted = make_emt_structures(12, seed=3), make_emt_structures(12, seed=3, domain="shifted")
    again = make_emt_structures(12, seed=3)
    assert [a.positions.tolist() for a in base] == [a.positions.tolist() for a in again]
    # the base domain's structures as the demo made them before the shifted domain existed (demo-v1 caches
    # made by older checkouts must still match): numbers, positions and cells (rounded to 1e-9), hashed
    import hashlib

    h = hashlib.sha256()
    for a in base:
        h.update(a.numbers.astype(np.int64).tobytes())
        for arr in (a.positions, np.asarray(a.cell)):
            h.update(np.round(arr, 9).tobytes())
    assert h.hexdigest() == "fa646c8873966e84434e1eb554534d95e9c3ba489b355468773fe8a014c4a0cc"
    bulk = [(b, s) for b, s in zip(base, shifted) if b.info["config_type"] == "bulk"]
    assert bulk
    for b, s in bulk:   # the same structures from the same seed, 4-8% compressed on every axis of the cell
        assert b.get_chemical_formula() == s.get_chemical_formula()
        ratio = s.get_volume() / b.get_volume()
        assert 0.92 ** 3 * 0.97 < ratio < 0.96 ** 3 * 1.03
    assert np.mean([a.get_potential_energy() / len(a) for a in shifted]) > \
        np.mean([a.get_potential_energy() / len(a) for a in base])


def test_an_unknown_domain_is_refused():
    import pytest

    from data.demo import make_emt_structures
    from launcher.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--domain"):
        make_emt_structures(2, domain="hot")
