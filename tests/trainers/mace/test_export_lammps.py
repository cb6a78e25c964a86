"""task=export writes the LAMMPS model (as mace_create_lammps_model does) and lists every file with its sha256."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from .conftest import make_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tiny_data, tiny_model_json, tmp_path_factory):
    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    root = tmp_path_factory.mktemp("mace-lammps")
    train = make_spec(root / "train", tiny_data, train={"input_json": str(tiny_model_json), "epochs": 1})
    assert run_job(train, echo=lambda *_: None).status == "finished"
    ex = make_spec(root / "export", tiny_data, task="export", model_in=str(root / "train"))
    assert run_job(ex, echo=lambda *_: None).status == "finished"
    return root, RunLayout.of(root / "export")


def test_manifest_lists_every_exported_file_with_sha256(exported):
    from launcher.core.layout import read_manifest, sha256_file

    _, lay = exported
    m = read_manifest(lay.manifest)
    lammps = lay.artifacts / "best_model.model-lammps.pt"
    assert m["lammps_model"] == lammps.name and lammps.is_file()
    assert set(m["files"]) == {"best_model.pt", "model.json", "best_model.model", lammps.name}
    for name, digest in m["files"].items():
        assert digest == sha256_file(lay.artifacts / name), name
    # every file of artifacts/ but the manifest itself is listed (no temp files left behind)
    assert sorted(p.name for p in lay.artifacts.iterdir()) == sorted([*m["files"], "manifest.json"])


def test_lammps_model_energy_matches_evaluate(exported, tmp_path, tiny_data):
    """torch.jit.load the LAMMPS model, call LAMMPS_MACE's forward on one structure (all atoms local) and
    compare its energy and forces with task=evaluate of the same export."""
    import torch

    from data.lmdb_dataset import LmdbDataset
    from launcher.job import run_job
    from trainers.mace.graphs import collate, to_atomic_data

    _, lay = exported
    ev = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model_in=str(lay.manifest),
                   train={"dtype": "float64"}, data={"indices": [2]}, eval={"split": "test"})
    assert run_job(ev, echo=lambda *_: None).status == "finished"
    rows = list(csv.DictReader(open(tmp_path / "ev" / "eval" / "predictions.csv")))
    assert [int(r["index"]) for r in rows] == [2]
    ours_e = float(rows[0]["energy"])
    ours_f = np.load(tmp_path / "ev" / "eval" / "predictions_forces.npz")["forces"]

    lammps = torch.jit.load(str(lay.artifacts / "best_model.model-lammps.pt"))
    assert lammps.r_max.dtype == torch.float64  # float64, as mace_create_lammps_model's default
    cfg = json.loads(lay.model_json.read_text())
    ds = LmdbDataset(tiny_data["test"])
    try:
        s = ds[2]
    finally:
        ds.close()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        batch = collate(to_atomic_data([s], cfg["atomic_numbers"], cfg["r_max"], ["Default"], "Default")).to_dict()
    finally:
        torch.set_default_dtype(old)
    out = lammps(batch, torch.ones(len(s.numbers), dtype=torch.float64), False)
    e = float(out["total_energy_local"][0])
    assert e == pytest.approx(ours_e, abs=1e-8 * len(s.numbers))
    np.testing.assert_allclose(out["forces"].detach().numpy(), ours_f, atol=1e-8)
    # ghost atoms (local_or_ghost = 0) add nothing: the energy of the local atoms alone is smaller in size
    half = torch.zeros(len(s.numbers), dtype=torch.float64)
    half[: len(s.numbers) // 2] = 1.0
    part = float(lammps(batch, half, False)["total_energy_local"][0])
    node = lammps(batch, torch.ones(len(s.numbers), dtype=torch.float64), False)["node_energy"].detach()
    assert part == pytest.approx(float(node[: len(s.numbers) // 2].sum()), abs=1e-9)


def test_a_model_torchscript_cannot_compile_exports_the_rest(bundle, tiny_data, tmp_path):
    """MACE-MH-1's architecture (non-linear gates) does not compile to TorchScript with this mace-torch,
    as with mace_create_lammps_model: the export still writes everything else, warns, and the manifest
    says why there is no LAMMPS model."""
    from launcher.core.layout import RunLayout, read_manifest, sha256_file
    from launcher.job import run_job

    spec = make_spec(tmp_path / "ex", tiny_data, task="export", model_in=str(bundle["model"]),
                     train={"head_key": "omat_pbe"})
    with pytest.warns(UserWarning, match="no LAMMPS model"):
        assert run_job(spec, echo=lambda *_: None).status == "finished"
    lay = RunLayout.of(tmp_path / "ex")
    m = read_manifest(lay.manifest)
    assert m["lammps_model"] is None and m["lammps_error"] and "\n" not in m["lammps_error"]
    assert set(m["files"]) == {"best_model.pt", "model.json", "best_model.model", "best_model.omat_pbe.model"}
    assert all(d == sha256_file(lay.artifacts / n) for n, d in m["files"].items())
    assert not (lay.artifacts / "best_model.model-lammps.pt").exists()
