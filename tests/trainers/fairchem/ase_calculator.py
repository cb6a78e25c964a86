"""Run with the FairChem env's python: FairChem's own ASE calculator on an exported checkpoint, no extra arguments.

    python ase_calculator.py CHECKPOINT LMDB INDEX   -> prints "energy <value>" for record INDEX of LMDB
"""
import sys

from ase import Atoms
from fairchem.core.common.relaxation.ase_utils import OCPCalculator
from fairchem.core.datasets import LmdbDataset

checkpoint, lmdb, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = LmdbDataset({"src": lmdb})[index]
atoms = Atoms(numbers=data.atomic_numbers.long().tolist(), positions=data.pos.tolist(),
              cell=data.cell.reshape(3, 3).tolist(), pbc=data.pbc.reshape(-1).tolist() if hasattr(data, "pbc") else True,
              tags=data.tags.long().tolist() if hasattr(data, "tags") else None)
atoms.calc = OCPCalculator(checkpoint_path=checkpoint, cpu=True)
print("energy", repr(float(atoms.get_potential_energy())))
