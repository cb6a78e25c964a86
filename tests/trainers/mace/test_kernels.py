"""train.kernels: cuEquivariance through mace-torch's own converters, weights stored in e3nn form.

cuEquivariance's CPU reference path (cuequivariance-torch, no GPU ops) runs the same maths as its GPU kernels, so
conversion, training, storage in e3nn form and resume with other kernels are tested here; the speed is a GPU
matter (scripts/gpu_check). The "not installed" case runs launch in a child whose imports of the package fail.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, make_spec

pytest.importorskip("cuequivariance_torch", reason="the test extra installs cuequivariance-torch")

# A child that cannot import these, as on a machine without them (the import system refuses the names).
_BLOCK = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
        return None
sys.meta_path.insert(0, _Absent())
sys.argv = ["launch"] + {argv!r}
from launcher.cli import main
main()
"""


def _launch_without(names, argv, cwd):
    code = _BLOCK.format(names=set(names), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


def _argv(tiny_data, tiny_model_json, run_dir, *extra):
    return ["backend=mace", "task=train", "device=cpu", f"data.train={tiny_data['train']}",
            f"data.val={tiny_data['val']}", f"train.input_json={tiny_model_json}", "train.epochs=1",
            f"run_dir={run_dir}", *extra]


def test_cueq_without_its_packages_is_refused_with_the_install_command(tiny_data, tiny_model_json, tmp_path):
    run_dir = tmp_path / "run"
    p = _launch_without({"cuequivariance", "cuequivariance_torch"},
                        _argv(tiny_data, tiny_model_json, run_dir, "train.kernels=cueq"), tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    line = [ln for ln in p.stderr.splitlines() if "train.kernels" in ln]
    assert line and "cuequivariance" in line[0] and "pip install 'mlip-launch[cueq]'" in line[0], p.stderr[-2000:]
    assert not run_dir.exists()


def test_oeq_without_openequivariance_is_refused(tiny_data, tiny_model_json, tmp_path):
    from trainers.mace.backend import kernel_problems

    spec = make_spec(tmp_path / "run", tiny_data, train={"input_json": str(tiny_model_json), "kernels": "oeq"})
    problems = kernel_problems(spec)
    if "openequivariance" in sys.modules or not problems:
        pytest.skip("openequivariance is installed here")
    assert problems == [p for p in problems if p.startswith("train.kernels: oeq needs openequivariance")]
    assert "mlip-launch[oeq]" in problems[0]


def test_auto_picks_e3nn_on_cpu_and_says_why():
    import torch

    from trainers.mace.kernels import choose

    name, why = choose("auto", torch.device("cpu"))
    assert name == "e3nn" and "not on CUDA" in why
    assert choose("cueq", torch.device("cpu"))[0] == "cueq"


def _metrics(run_dir: Path):
    recs = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("split") == "val"]


@pytest.mark.slow
def test_cueq_trains_like_e3nn_stores_e3nn_form_and_resumes_with_e3nn(tiny_data, tiny_model_json, tmp_path):
    import numpy as np
    import torch
    from launcher.job import run_job
    from trainers.mace.model_config import build_model

    runs = {}
    for kernels in ("e3nn", "cueq"):
        spec = make_spec(tmp_path / kernels, tiny_data, train={"input_json": str(tiny_model_json),
                                                               "dtype": "float64", "kernels": kernels})
        run_job(spec, echo=lambda *_: None)
        runs[kernels] = spec
    e3, cu = _metrics(tmp_path / "e3nn"), _metrics(tmp_path / "cueq")
    assert len(e3) == len(cu) == 2
    for a, b in zip(e3, cu):   # the same maths in float64: the same training, up to summation order
        for k in ("loss", "energy_rmse_per_atom", "force_rmse"):
            assert a[k] == pytest.approx(b[k], rel=1e-6), k
    log = (tmp_path / "cueq" / "logs" / "train.log").read_text()
    assert "kernels: cueq (requested; on CPU cuEquivariance runs its reference path" in log
    assert "kernels: e3nn (requested)" in (tmp_path / "e3nn" / "logs" / "train.log").read_text()

    # stored in e3nn form: best_model.pt and the checkpoint load into the e3nn module the manifest describes
    art = tmp_path / "cueq" / "artifacts"
    cfg = json.loads((art / "model.json").read_text())
    state = torch.load(art / "best_model.pt", weights_only=True)
    assert not any("symmetric_contractions.weight" == k.split(".", 2)[-1] for k in state)
    torch.set_default_dtype(torch.float64)
    try:
        build_model(cfg).load_state_dict(state)
        ck = torch.load(tmp_path / "cueq" / "checkpoints" / "checkpoint.pt", weights_only=False)
        assert ck["kernels"] == "cueq"
        build_model(cfg).load_state_dict(ck["model"])
    finally:
        torch.set_default_dtype(torch.float32)

    # the exported .model is an e3nn module that MACECalculator loads, and predicts as the e3nn run's does
    from mace.calculators import MACECalculator

    from data.lmdb_dataset import LmdbDataset

    atoms = LmdbDataset(tiny_data["val"])[0].to_atoms()
    e = {}
    for k in ("e3nn", "cueq"):
        calc = MACECalculator(model_paths=str(tmp_path / k / "artifacts" / "best_model.model"), device="cpu",
                              default_dtype="float64")
        a = atoms.copy()
        a.calc = calc
        e[k] = (a.get_potential_energy(), a.get_forces())
    assert e["cueq"][0] == pytest.approx(e["e3nn"][0], rel=1e-6)
    assert np.allclose(e["cueq"][1], e["e3nn"][1], atol=1e-6)

    # evaluate with cuEquivariance kernels: the stored e3nn model converted, the same errors as with e3nn
    ev = {}
    for k in ("e3nn", "cueq"):
        spec = make_spec(tmp_path / f"ev_{k}", tiny_data, task="evaluate", model_in=str(tmp_path / "cueq"),
                         train={"dtype": "float64", "kernels": k})
        run_job(spec, echo=lambda *_: None)
        ev[k] = json.loads((tmp_path / f"ev_{k}" / "eval" / "metrics.json").read_text())
    assert ev["cueq"]["force_rmse"] == pytest.approx(ev["e3nn"]["force_rmse"], rel=1e-9)
    assert "kernels: cueq" in (tmp_path / "ev_cueq" / "logs" / "train.log").read_text()

    # the cueq run resumed with e3nn kernels for one more epoch: weights converted, moments carried over by name
    spec = make_spec(tmp_path / "cueq", tiny_data, train={"input_json": str(tiny_model_json), "dtype": "float64",
                                                          "kernels": "e3nn", "epochs": 3}, task="resume")
    run_job(spec, echo=lambda *_: None)
    log = (tmp_path / "cueq" / "logs" / "train.log").read_text()
    assert "the checkpoint trained with cueq, this run with e3nn" in log
    assert len(_metrics(tmp_path / "cueq")) == 3


def test_fairchem_backends_refuse_kernels_and_compile():
    from launcher.core.schema import spec_from_dict
    from trainers.fairchem.derive import refused_keys

    spec = spec_from_dict({"backend": "equiformer_v2", "task": "train", "train": {"kernels": "cueq", "compile": True}})
    problems = refused_keys(spec)
    assert sorted(p.split(":")[0] for p in problems) == ["train.compile", "train.kernels"]
    assert all("not supported by backend=equiformer_v2" in p for p in problems)
    assert refused_keys(spec_from_dict({"backend": "gemnet_oc", "task": "train"})) == []
