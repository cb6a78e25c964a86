"""`launch ... hydra/launcher=slurm` exits 1 when the SLURM job fails, with one line naming the run and its log."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.slurm.conftest import run_cli
from tests.slurm.test_slurm_sweep import SLURM_TEST_LAUNCHER

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _broken_model(tiny_mace, tmp_path: Path) -> Path:
    """Valid JSON that passes preflight and fails in the job, when MACE builds the model."""
    model = json.loads(Path(tiny_mace["train.input_json"]).read_text())
    model["MLP_irreps"] = "not-irreps"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(model))
    return path


def test_a_failed_single_run_job_exits_1_naming_the_run_and_its_log(slurm_cluster, tiny_mace, tmp_path):
    run_dir = tmp_path / "out" / "broken"
    keys = {**tiny_mace, "train.epochs": 2, "train.input_json": str(_broken_model(tiny_mace, tmp_path)),
            "run_dir": str(run_dir)}
    res = run_cli("launcher.cli", [*SLURM_TEST_LAUNCHER, *[f"{k}={v}" for k, v in keys.items()]], slurm_cluster,
                  tmp_path, timeout=600)
    assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: run FAILED: ") and "Irreps" in line, line
    assert f"run_dir {run_dir}" in line, line
    log = Path(line.rsplit("log ", 1)[1].rstrip(")"))
    assert log.is_file() and "not-irreps" in log.read_text()
    assert json.loads((run_dir / "state.json").read_text())["status"] == "failed"


def test_a_sweep_with_a_failed_job_exits_1_listing_it_with_its_log(slurm_cluster, tiny_mace, tmp_path):
    good = tiny_mace["train.input_json"]
    bad = _broken_model(tiny_mace, tmp_path)
    sweep = tmp_path / "sweep"
    keys = {k: v for k, v in tiny_mace.items() if k != "train.input_json"}
    args = ["-m", *SLURM_TEST_LAUNCHER, f"hydra.sweep.dir={sweep}", "train.epochs=2",
            *[f"{k}={v}" for k, v in keys.items()], f"train.input_json={good},{bad}"]
    res = run_cli("launcher.cli", args, slurm_cluster, tmp_path, timeout=600)
    assert res.returncode == 1, (res.stdout + res.stderr)[-3000:]
    err = res.stderr.strip().splitlines()
    head = next(i for i, x in enumerate(err) if x.startswith("error: 1 of 2 runs FAILED:"))
    failed = err[head + 1]
    assert f"train.input_json={bad}" in failed and "Irreps" in failed and "(run_dir " in failed, failed
    log = Path(failed.rsplit("log ", 1)[1].rstrip(")"))
    assert log.is_file() and "not-irreps" in log.read_text()
