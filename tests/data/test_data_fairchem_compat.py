"""Our shards read by FairChem v1's own LmdbDataset, in the FairChem environment."""
import json
import os
import subprocess

import pytest

from data.writer import write_lmdb

READ_WITH_FAIRCHEM = r"""
import json, sys
from fairchem.core.datasets.lmdb_dataset import LmdbDataset, data_list_collater
config = {"src": sys.argv[1]}
if sys.argv[2] == "mapped":  # how FairChem's own OC20/OC22 configs name the labels
    config["key_mapping"] = {"y": "energy", "force": "forces"}
ds = LmdbDataset(config)
items = [ds[i] for i in range(len(ds))]
batch = data_list_collater(items, otf_graph=True)
print(json.dumps({"len": len(ds), "energy": [float(d.energy) for d in items],
                  "natoms": batch.natoms.tolist(), "pos0": items[0].pos.tolist(),
                  "forces_dtype": str(items[0].forces.dtype)}))
"""


@pytest.mark.fairchem
@pytest.mark.parametrize("mapping", ["plain", "mapped"])
def test_fairchem_lmdbdataset_reads_our_shards(tmp_path, make_structures, mapping):
    from trainers.fairchem.env import default_python

    python = default_python()
    if python is None:
        pytest.skip("FairChem environment absent (scripts/setup-fairchem-env builds it)")
    items = make_structures(7, seed=2)
    write_lmdb(items, tmp_path / "shards", shards=3, progress=False)
    r = subprocess.run([python, "-c", READ_WITH_FAIRCHEM, str(tmp_path / "shards"), mapping],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["len"] == 7
    assert out["energy"] == [s.energy for s in items]  # float64 survives FairChem's reader
    assert out["natoms"] == [s.natoms for s in items]
    assert out["forces_dtype"] == "torch.float32"
    assert abs(out["pos0"][0][0] - items[0].positions[0, 0]) < 1e-5


WRITE_WITH_FAIRCHEM = r"""
# What fairchem/core/scripts/preprocess_ef.py does, with FairChem's own AtomsToGraphs.
import pickle, sys
import lmdb, numpy as np, torch
from ase.build import bulk
from ase.calculators.emt import EMT
from fairchem.core.preprocessing import AtomsToGraphs
out, length_kind = sys.argv[1], sys.argv[2]
a2g = AtomsToGraphs(max_neigh=50, radius=6, r_energy=True, r_forces=True, r_distances=False,
                    r_edges=False, r_fixed=True)
db = lmdb.open(out, map_size=1 << 30, subdir=False, meminit=False, map_async=True)
idx = 0
for k in range(5):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 1 + k % 2))
    atoms.rattle(0.05, seed=k)
    atoms.calc = EMT()
    data_object = a2g.convert(atoms)
    data_object.tags = torch.LongTensor(atoms.get_tags())
    data_object.sid = k if k % 2 else np.int64(k)
    data_object.fid = 0
    txn = db.begin(write=True)
    txn.put(f"{idx}".encode("ascii"), pickle.dumps(data_object, protocol=-1))
    txn.commit()
    idx += 1
length = idx if length_kind == "int" else np.int64(idx)
txn = db.begin(write=True)
txn.put("length".encode("ascii"), pickle.dumps(length, protocol=-1))
txn.commit()
db.sync()
db.close()
"""


@pytest.mark.fairchem
@pytest.mark.parametrize("length_kind", ["int", "numpy"])
def test_lmdbs_written_by_fairchem_read_under_the_allow_list(tmp_path, length_kind):
    """FairChem's own writer (its torch, PyG and numpy versions): every record passes the
    allow-list, and ``length`` as FairChem or numpy writes it is read as a plain integer."""
    from trainers.fairchem.env import default_python

    from data import check_readable, count
    from data.lmdb_dataset import LmdbDataset

    python = default_python()
    if python is None:
        pytest.skip("FairChem environment absent (scripts/setup-fairchem-env builds it)")
    out = tmp_path / "fc.lmdb"
    r = subprocess.run([python, "-c", WRITE_WITH_FAIRCHEM, str(out), length_kind],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert count(out) == 5
    check_readable(out)
    ds = LmdbDataset(out)
    for i in range(5):
        s = ds[i]
        assert s.natoms == 4 * (1 + i % 2) and s.forces.shape == (s.natoms, 3)
        assert s.energy is not None and s.sid == i
        assert ds.get_data(i).pos.shape == (s.natoms, 3)
