"""The exact FairChem command line and derived config of a run (what a dry run prints)."""
from __future__ import annotations

import sys

import yaml

from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from trainers.api import JobContext
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.plan import CHILD, PlanRequest, new_timestamp_id
from trainers.fairchem.sources import is_training_checkpoint

from .conftest import TEST_CONFIGS


def _spec(tmp_path, **kw) -> RunSpec:
    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(tmp_path / "run"), device="cpu", seed=3,
                   backend_python=sys.executable, backend_args=["--optim.max_epochs=2", "--print-every", "1"])
    spec.train.config_yml = str(TEST_CONFIGS / "test_equiformerv2.yml")
    spec.train.identifier = "tiny"
    for name in ("train", "val"):
        p = tmp_path / f"{name}.lmdb"
        p.write_bytes(b"")
        setattr(spec.data, name, str(p))
    for k, v in kw.items():
        setattr(spec, k, v)
    return spec


def test_train_command(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path)
    layout = RunLayout.of(spec.run_dir)
    data = {"train": spec.data.train, "val": spec.data.val}
    plan = FairchemBackend().plan(PlanRequest(spec, layout, mode="train", data=data, checkpoint=None, n_train=64,
                                              timestamp_id="train-x"))
    native = layout.root / "fairchem"
    assert plan.command == [
        sys.executable, str(CHILD), "run", "--post", str(native / "checkpoints" / "train-x"),
        "--mirror", str(layout.checkpoints), "--log-every", "1", "--progress-log", str(layout.train_log),
        "--logs-dir", str(layout.logs), "--run-name", spec.run_name, "--",
        "--mode", "train", "--config-yml", str(native / "configs" / "train-x.yml"), "--run-dir", str(native),
        "--timestamp-id", "train-x", "--seed", "3", "--identifier", "tiny", "--cpu", "--print-every", "1"]
    cfg = yaml.safe_load(plan.config_text)
    assert cfg["optim"]["max_epochs"] == 2 and cfg["optim"]["eval_every"] == 13
    assert cfg == plan.config and plan.max_epochs == 2   # the structure written is the one the plan carries
    assert cfg["dataset"]["train"]["src"] == spec.data.train
    assert plan.config_text.startswith("# Derived by mlip-launch from")
    assert plan.env["OMP_NUM_THREADS"] and plan.env["WANDB_MODE"] == "disabled"
    assert plan.log_path == layout.logs / "fairchem-train-x.log"
    assert not native.exists()                              # planning writes nothing


def test_predict_command_and_dry_run_text(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, task="evaluate", model_in=str(tmp_path / "m.pt"))
    (tmp_path / "m.pt").write_bytes(b"")
    spec.eval.split = "val"
    ctx = JobContext(spec=spec, layout=RunLayout.of(spec.run_dir))
    text = FairchemBackend().describe(ctx)
    first = text.splitlines()[0]
    assert "--mode predict" in first and f"--checkpoint {tmp_path / 'm.pt'}" in first and "--post" not in first
    assert "task.prediction_dtype: float32" in text


def test_backend_env_reaches_the_child(fairchem_fixtures, tmp_path):
    spec = _spec(tmp_path, backend_env={"OMP_NUM_THREADS": "7", "FOO": "bar"})
    plan = FairchemBackend().plan(PlanRequest(spec, RunLayout.of(spec.run_dir), mode="train",
                                              data={"train": spec.data.train}))
    assert plan.env["OMP_NUM_THREADS"] == "7" and plan.env["FOO"] == "bar"
    assert plan.timestamp_id.startswith("train-")


def test_timestamp_ids_are_unique(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    ids = {new_timestamp_id("train", tmp_path) for _ in range(20)}
    assert len(ids) == 20


def test_checkpoint_or_bare_weights_told_apart_without_torch_in_the_launcher(tmp_path):
    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}, "normalizers": {}}, tmp_path / "ck.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "best_model.pt")
    assert is_training_checkpoint(tmp_path / "ck.pt")
    assert not is_training_checkpoint(tmp_path / "best_model.pt")


def test_child_env_and_interpreter_errors(tmp_path, monkeypatch):
    import pytest

    from launcher.core.errors import ConfigError
    from trainers.fairchem.env import child_env, resolve_python

    env = child_env({"FOO": "1"}, base={"PYTHONPATH": "/launcher/site", "PATH": "/bin", "SLURM_CPUS_PER_TASK": "3"})
    assert "PYTHONPATH" not in env and env["FOO"] == "1" and env["WANDB_MODE"] == "disabled"
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert child_env({}, base={})["OMP_NUM_THREADS"] == "3"
    assert child_env({}, base={"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ConfigError, match="backend_python: file not found"):
        resolve_python(str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match="not on PATH"):
        resolve_python("no-such-python-here")
    monkeypatch.setenv("MLIP_FAIRCHEM_ENV", str(tmp_path / "absent-env"))
    with pytest.raises(ConfigError, match="setup-fairchem-env"):
        resolve_python(None)


def test_the_provisioned_interpreter_passes_the_check(fairchem_python):
    from trainers.fairchem.env import check_python

    assert check_python(fairchem_python) == fairchem_python


def test_setup_script_options_for_cuda_kernels(tmp_path):
    import os
    import subprocess

    from trainers.fairchem.env import SETUP_SCRIPT

    def env_dir(**extra):
        return subprocess.run(["bash", str(SETUP_SCRIPT), "--env-dir"], capture_output=True, text=True,
                              env={**{k: v for k, v in os.environ.items() if k != "MLIP_FAIRCHEM_ENV"},
                                   "MLIP_LAUNCH_CACHE": str(tmp_path), **extra})

    cpu, cuda = env_dir(), env_dir(MLIP_FAIRCHEM_CUDA_EXT="1")
    assert cpu.returncode == 0 and cuda.returncode == 0
    assert cpu.stdout.strip() != cuda.stdout.strip()          # a separate env for CUDA-kernel extensions
    assert env_dir(MLIP_FAIRCHEM_CUDA_EXT="0").stdout == cpu.stdout
    bad = env_dir(MLIP_FAIRCHEM_CUDA_EXT="yes")
    assert bad.returncode == 1 and bad.stderr.strip() == "setup-fairchem-env: error: MLIP_FAIRCHEM_CUDA_EXT must be 0 or 1"
