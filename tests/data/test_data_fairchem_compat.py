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
