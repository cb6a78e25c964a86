"""The sweep of tests/slurm run through submitit's local launcher: separate processes, same summary."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.slurm.conftest import REPO, run_cli, tiny_mace_keys

pytestmark = pytest.mark.slow


def test_local_launcher_sweep_runs_every_point_and_writes_the_summary(demo_data, tmp_path):
    import os

    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", "train.epochs=2",
            *[f"{k}={v}" for k, v in tiny_mace_keys(demo_data).items()], "train.lr=0.01,0.02", "seed=0,1"]
    res = run_cli("launcher.cli", args, env, REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "submitted 4 run(s) to local" in res.stdout

    record = json.loads((sweep / "sweep.json").read_text())
    assert record["cluster"] == "local" and len({j["job_id"] for j in record["jobs"]}) == 4
    with open(sweep / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert sorted(r["overrides"] for r in table) == sorted(
        f"train.lr={lr} seed={s}" for lr in ("0.01", "0.02") for s in range(2))
    assert {r["state"] for r in table} == {"FINISHED"}
    for r in table:
        assert float(r["val_loss"]) > 0 and r["epochs"] == "2"
        assert (Path(r["run_dir"]) / "artifacts" / "best_model.pt").is_file()
        assert Path(r["log_path"]).is_file()
    assert (sweep / "summary.png").stat().st_size > 1000
