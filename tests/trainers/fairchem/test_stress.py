"""``train.stress_weight`` with the FairChem backends: their models predict energy and forces only, so a stress
weight is refused before anything is queued (one line naming the backend and why); weight 0 is accepted.
Checked through both doors' dry runs with the provisioned FairChem env, and against FairChem's own source."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import TEST_CONFIGS

pytestmark = pytest.mark.fairchem

BIN = Path(sys.executable).parent
CONFIGS = {"equiformer_v2": TEST_CONFIGS / "test_equiformerv2.yml", "gemnet_oc": TEST_CONFIGS / "test_gemnet_oc.yml"}


def _run(exe: str, args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLIP_FAIRCHEM_PREWARM": "0"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(BIN / exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("backend", sorted(CONFIGS))
def test_stress_weight_is_refused_by_the_hydra_door_and_zero_is_accepted(backend, fairchem_python,
                                                                         fairchem_fixtures, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"backend={backend}", "task=train", "device=cpu", f"run_dir={run_dir}", f"backend_python={fairchem_python}",
            f"train.config_yml={CONFIGS[backend]}", f"data.train={demo_data['train']}",
            f"data.val={demo_data['val']}", "train.epochs=1"]
    out = _run("launch", [*args, "train.stress_weight=10"], tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "train.stress_weight" in ln]
    assert len(lines) == 1, out.stderr
    assert f"not supported by backend={backend}" in lines[0] and "energy and forces only" in lines[0]
    assert not run_dir.exists()
    ok = _run("launch", [*args, "train.stress_weight=0", "dry_run=true"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "stress_weight: 0.0" in ok.stdout and not run_dir.exists()


def test_stress_weight_is_refused_by_the_plain_door(fairchem_python, fairchem_fixtures, demo_data, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "backend": "gemnet_oc", "task": "train", "device": "cpu", "run_dir": "run", "backend_python": fairchem_python,
        "data": {"train": str(demo_data["train"]), "val": str(demo_data["val"])},
        "train": {"config_yml": str(CONFIGS["gemnet_oc"]), "epochs": 1, "stress_weight": 5.0}}))
    out = _run("launch-run", ["--config", str(cfg), "--dry-run"], tmp_path)
    assert out.returncode == 2 and "train.stress_weight: not supported by backend=gemnet_oc" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


def test_the_models_it_runs_have_no_stress_output(fairchem_python):
    """The reason given is FairChem's own: the model classes these backends run never mention stress, and the
    stress head that FairChem 1.10 has is a head of its 'hydra' model, a model.name these backends refuse."""
    from trainers.fairchem.models import MODEL_NAMES

    names = sorted({n for ns in MODEL_NAMES.values() for n in ns})
    code = (
        "import inspect, sys\n"
        "from fairchem.core.common.registry import registry\n"
        "from fairchem.core.common.utils import setup_imports\n"
        "setup_imports()  # registers the models\n"
        f"for name in {names!r}:\n"
        "    src = inspect.getsource(sys.modules[registry.get_model_class(name).__module__])\n"
        "    print(name, 'stress' in src.lower())\n"
        "print('rank2', registry.get_model_class('rank2_symmetric_head').__name__)\n"
        "print('hydra', registry.get_model_class('hydra').__name__)\n"
    )
    out = subprocess.run([fairchem_python, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines())
    assert all(lines[n] == "False" for n in names), out.stdout
    assert lines["rank2"] == "Rank2SymmetricTensorHead" and lines["hydra"] == "HydraModel"
    assert "hydra" not in names
