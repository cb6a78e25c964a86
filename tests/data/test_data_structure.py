import numpy as np
import pytest

from data.structure import Structure, stress_to_3x3


def test_voigt_stress_is_expanded_in_ase_order():
    # ASE Voigt order: xx yy zz yz xz xy
    full = stress_to_3x3([1, 2, 3, 4, 5, 6])
    assert full.tolist() == [[1, 6, 5], [6, 2, 4], [5, 4, 3]]
    assert stress_to_3x3(np.arange(9).reshape(1, 3, 3)).shape == (3, 3)
    with pytest.raises(ValueError, match="expected 6"):
        stress_to_3x3([1, 2, 3])


def test_dtypes_shapes_and_defaults():
    s = Structure(positions=[[0, 0, 0], [1, 1, 1]], numbers=np.array([29.0, 79.0]), energy=1)
    assert s.positions.dtype == np.float64 and s.numbers.dtype == np.int64
    assert s.numbers.tolist() == [29, 79] and s.natoms == 2
    assert s.cell.shape == (3, 3) and not s.pbc.any()  # no cell -> not periodic
    assert s.tags.tolist() == [0, 0] and s.fixed.tolist() == [0, 0]
    assert isinstance(s.energy, float) and s.forces is None and s.stress is None


def test_inconsistent_shapes_are_refused():
    with pytest.raises(ValueError, match="atomic numbers"):
        Structure(positions=np.zeros((2, 3)), numbers=[1])
    with pytest.raises(ValueError, match="forces"):
        Structure(positions=np.zeros((2, 3)), numbers=[1, 1], forces=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="natoms"):
        Structure(positions=np.zeros((2, 3)), numbers=[1, 1], natoms=3)


def test_to_atoms_carries_labels_and_constraints(structures):
    s = structures[3]
    atoms = s.to_atoms()
    assert atoms.get_potential_energy() == s.energy
    np.testing.assert_array_equal(atoms.get_forces(apply_constraint=False), s.forces)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), s.stress)
    assert atoms.info["config_type"] == "random"
    if s.fixed.any():
        assert sorted(atoms.constraints[0].get_indices()) == np.flatnonzero(s.fixed).tolist()
