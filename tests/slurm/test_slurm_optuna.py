"""An Optuna study on a real SLURM cluster: each batch of n_jobs trials is one job array; a trial whose job
fails is told to Optuna as FAIL and the study goes on; the summary ranks the trials."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.launcher.test_optuna import _bad_model_json, best_val_loss
from tests.slurm.conftest import REPO, run_cli, sacct_states
from tests.slurm.test_slurm_sweep import SLURM_TEST_LAUNCHER

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_optuna_batches_go_out_as_job_arrays_and_failed_trials_do_not_stop_the_study(
        slurm_cluster, tiny_mace, tmp_path):
    sweep = tmp_path / "sweep"
    good, bad = REPO / "conf" / "mace" / "tiny.json", _bad_model_json(tmp_path)
    keys = [f"{k}={v}" for k, v in tiny_mace.items() if k != "train.input_json"]
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=2", *SLURM_TEST_LAUNCHER, f"hydra.sweep.dir={sweep}", "train.epochs=2", *keys,
            f"train.input_json=choice({good},{bad})", "train.lr=choice(0.01,0.02)"]
    res = run_cli("launcher.cli", args, slurm_cluster, tmp_path)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-3000:]   # 2 trials failed, after all 4 ran
    assert "2 of 4 trial(s) FAILED (told to Optuna as FAIL)" in res.stderr
    assert res.stdout.count("submitted 2 run(s) to slurm as job array") == 2

    record = json.loads((sweep / "sweep.json").read_text())
    assert len(record["array_ids"]) == 2 and record["objective"] == "val_loss"
    jobs = {j["index"]: j for j in record["jobs"]}
    assert sorted(jobs) == [0, 1, 2, 3]
    for batch, array in enumerate(record["array_ids"]):   # one array per batch of n_jobs trials
        assert sorted(jobs[i]["job_id"] for i in (2 * batch, 2 * batch + 1)) == [f"{array}_0", f"{array}_1"]
    for i, job in jobs.items():
        failing = str(bad) in " ".join(job["overrides"])
        assert sacct_states(job["job_id"], slurm_cluster) == (["FAILED"] if failing else ["COMPLETED"])
        assert job["state"] == ("FAILED" if failing else "FINISHED")

    with open(sweep / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["rank"] for r in table] == ["1", "2", "", ""]
    assert [r["state"] for r in table] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    assert all("Irreps" in r["error"] and r["cluster_state"] == "FAILED" for r in table[2:])
    for r in table[:2]:
        assert float(r["objective"]) == pytest.approx(best_val_loss(Path(r["run_dir"])), rel=1e-12)
    assert float(table[0]["objective"]) <= float(table[1]["objective"])

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["train.input_json"] == str(good)
    assert results["best_value"] == pytest.approx(float(table[0]["objective"]), rel=1e-12)
    assert results["n_complete"] == 2 and results["n_failed"] == 2
