"""FairChem's interpreter started at ``launch`` start-up, so its imports overlap the launcher's set-up."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.core.layout import RunLayout
from trainers.fairchem.prewarm import wanted

from .conftest import TEST_CONFIGS

LAUNCH = Path(sys.executable).with_name("launch")


@pytest.mark.parametrize("argv, expected", [
    (["backend=equiformer_v2", "data.train=x"], {"python": None}),
    (["backend=gemnet_oc", "backend_python=/opt/fc/bin/python"], {"python": "/opt/fc/bin/python"}),
    (["backend=gemnet_oc", "task=evaluate", "hydra/launcher=inprocess"], {"python": None}),
    ([], None),                                                    # the default backend is MACE
    (["backend=mace"], None),
    (["-m", "backend=equiformer_v2", "seed=0,1"], None),           # a sweep: jobs start elsewhere
    (["backend=equiformer_v2", "hydra/launcher=slurm"], None),
    (["backend=equiformer_v2", "--help"], None),
    (["backend=equiformer_v2", "--cfg", "job"], None),
    (["backend=equiformer_v2", "dry_run=true"], None),
    (["backend=equiformer_v2", "task=export"], None),               # no FairChem CLI run at all
    (["backend=equiformer_v2", "+backend_env.CUDA_VISIBLE_DEVICES=1"], None),  # env decided later
    (["backend=equiformer_v2", "backend_python=python3"], None),    # resolved on PATH by the launcher
])
def test_which_command_lines_start_fairchem_early(argv, expected):
    assert wanted(argv, environ={}) == expected


def test_it_can_be_switched_off():
    assert wanted(["backend=equiformer_v2"], environ={"MLIP_FAIRCHEM_PREWARM": "0"}) is None


def _serving() -> list:
    out = subprocess.run(["pgrep", "-f", "child.py serve"], capture_output=True, text=True)
    return out.stdout.split()


def _launch(args, tmp_path, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(LAUNCH), *args], capture_output=True, text=True, env=env, cwd=tmp_path, **kw)


@pytest.mark.slow
@pytest.mark.fairchem
def test_launch_runs_fairchem_in_the_early_interpreter(fairchem_python, fairchem_fixtures, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    out = _launch([
        "backend=gemnet_oc", "task=train", "device=cpu", f"run_dir={run_dir}", f"backend_python={fairchem_python}",
        f"train.config_yml={TEST_CONFIGS / 'test_gemnet_oc.yml'}", f"data.train={demo_data['train']}",
        f"data.val={demo_data['val']}",
        "backend_args=['--optim.max_epochs=1','--model.use_pbc_single=True','--model.qint_tags=[0,1,2]']",
    ], tmp_path, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    layout = RunLayout.of(run_dir)
    log = next(layout.logs.glob("fairchem-train-*.log")).read_text()
    assert "FairChem interpreter started early" in log
    assert layout.best_model.is_file() and layout.checkpoint.is_file() and layout.manifest.is_file()
    assert not _serving()


@pytest.mark.fairchem
def test_bad_input_stops_the_early_interpreter(fairchem_python, tmp_path):
    before = set(_serving())
    t0 = time.time()
    out = _launch(["backend=equiformer_v2", f"backend_python={fairchem_python}", "train.lr=fast"], tmp_path,
                  timeout=120)
    assert out.returncode == 2 and "train.lr" in out.stderr, out.stderr
    assert time.time() - t0 < 30
    time.sleep(0.5)
    assert set(_serving()) <= before   # nothing left behind
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.fairchem
def test_launch_run_uses_the_early_interpreter_too(fairchem_python, fairchem_fixtures, demo_data, tmp_path):
    from launcher.core.schema import RunSpec, check
    from launcher.core.specio import dump_run_yaml

    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=fairchem_python, backend_env={"OMP_NUM_THREADS": "1"},
                   backend_args=["--optim.max_epochs=1", "--model.use_pbc_single=True"])
    spec.train.config_yml = str(TEST_CONFIGS / "test_equiformerv2.yml")
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    (tmp_path / "run.yaml").write_text(dump_run_yaml(check(spec)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(LAUNCH.with_name("launch-run")), "--config", str(tmp_path / "run.yaml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    layout = RunLayout.of(tmp_path / "run")
    assert "FairChem interpreter started early" in next(layout.logs.glob("fairchem-train-*.log")).read_text()
    assert layout.best_model.is_file()


@pytest.mark.slow
@pytest.mark.fairchem
def test_the_early_interpreter_dies_with_a_killed_launcher(fairchem_python, fairchem_fixtures, demo_data, tmp_path):
    import signal

    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    args = ["backend=equiformer_v2", "device=cpu", f"run_dir={run_dir}", f"backend_python={fairchem_python}",
            f"train.config_yml={TEST_CONFIGS / 'test_equiformerv2.yml'}", f"data.train={demo_data['train']}",
            f"data.val={demo_data['val']}", "backend_args=['--optim.max_epochs=50','--model.use_pbc_single=True']"]
    proc = subprocess.Popen([str(LAUNCH), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=tmp_path)
    deadline = time.time() + 300
    log_text = ""
    while time.time() < deadline and "FairChem interpreter started early" not in log_text:
        time.sleep(0.3)
        log_text = "".join(p.read_text() for p in run_dir.glob("logs/fairchem-*.log"))
    assert "FairChem interpreter started early" in log_text
    children = _serving()
    assert children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and set(_serving()) & set(children):
        time.sleep(0.3)
    assert not set(_serving()) & set(children)   # FairChem does not train on as an orphan
