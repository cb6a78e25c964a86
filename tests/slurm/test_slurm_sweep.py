"""Sweeps on a real SLURM cluster: one job array per sweep, the summary, a failing point."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.slurm.conftest import run_cli, sacct_states

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_TEST_LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
                       "hydra.launcher.poll_interval_s=2"]


def _summary(sweep: Path) -> list:
    with open(sweep / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_eight_point_sweep_runs_as_one_array_and_writes_the_summary(slurm_cluster, tiny_mace, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SLURM_TEST_LAUNCHER, f"hydra.sweep.dir={sweep}", "train.epochs=2",
            *[f"{k}={v}" for k, v in tiny_mace.items()], "train.lr=0.01,0.02", "seed=0,1,2,3"]
    res = run_cli("launcher.cli", args, slurm_cluster, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "as job array" in res.stdout

    record = json.loads((sweep / "sweep.json").read_text())
    assert len(record["array_ids"]) == 1, record["array_ids"]
    array = record["array_ids"][0]
    assert sorted(j["job_id"] for j in record["jobs"]) == sorted(f"{array}_{i}" for i in range(8))
    assert sacct_states(array, slurm_cluster) == ["COMPLETED"] * 8

    table = _summary(sweep)
    assert len(table) == 8
    assert {r["state"] for r in table} == {"FINISHED"}
    assert {r["cluster_state"] for r in table} == {"COMPLETED"}
    assert sorted(r["overrides"] for r in table) == sorted(
        f"train.lr={lr} seed={s}" for lr in ("0.01", "0.02") for s in range(4))
    for r in table:
        assert float(r["val_loss"]) > 0 and r["epochs"] == "2"
        assert (Path(r["run_dir"]) / "artifacts" / "best_model.pt").is_file()
        assert (Path(r["run_dir"]) / "artifacts" / "manifest.json").is_file()
    assert (sweep / "summary.md").read_text().count("| FINISHED |") == 8
    assert (sweep / "summary.png").stat().st_size > 1000


def test_runs_file_goes_out_as_one_array_and_a_failing_run_is_reported_failed(slurm_cluster, tiny_mace, tmp_path):
    import yaml

    bad_model = json.loads(Path(tiny_mace["train.input_json"]).read_text())
    bad_model["MLP_irreps"] = "not-irreps"  # valid JSON, passes preflight, fails when the model is built
    (tmp_path / "bad.json").write_text(json.dumps(bad_model))
    common = dict(tiny_mace)
    common.update({"backend": "mace", "task": "train", "train.epochs": 2,
                   "launcher": {"preset": "slurm", "cpus_per_task": 1, "mem_gb": None, "poll_interval_s": 2}})
    common["runs"] = [{"name": "good-a", "run_dir": "out/good-a"},
                      {"name": "broken", "run_dir": "out/broken", "train.input_json": "bad.json"},
                      {"name": "good-b", "run_dir": "out/good-b", "train.lr": 0.02}]
    cfg = tmp_path / "runs.yaml"
    cfg.write_text(yaml.safe_dump(common))

    res = run_cli("launcher.run", ["--config", str(cfg)], slurm_cluster, tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "run broken FAILED" in res.stderr

    sweep = tmp_path / "sweeps" / "runs"
    record = json.loads((sweep / "sweep.json").read_text())
    assert len(record["array_ids"]) == 1
    array = record["array_ids"][0]
    by_name = {r["overrides"]: r for r in _summary(sweep)}
    assert by_name["name=good-a"]["state"] == by_name["name=good-b"]["state"] == "FINISHED"
    broken = by_name["name=broken"]
    assert broken["state"] == "FAILED" and broken["cluster_state"] == "FAILED"
    assert "Irreps" in broken["error"]
    log = Path(broken["log_path"])
    assert log.is_file() and "not-irreps" in log.read_text()
    assert sacct_states(f"{array}_1", slurm_cluster) == ["FAILED"]
    assert sacct_states(f"{array}_0", slurm_cluster) == ["COMPLETED"]
    assert json.loads((tmp_path / "out" / "broken" / "state.json").read_text())["status"] == "failed"

    status = run_cli("launcher.status", [str(sweep)], slurm_cluster, tmp_path, timeout=120)
    assert status.returncode == 1, status.stderr  # launch-status: some job failed
    assert "3 run(s): 1 FAILED, 2 FINISHED" in status.stdout
    assert "error: ValueError" in status.stdout and str(log) in status.stdout


def test_a_refused_submission_is_a_one_line_config_error(slurm_cluster, tiny_mace, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SLURM_TEST_LAUNCHER, "hydra.launcher.partition=no-such-partition", f"hydra.sweep.dir={sweep}",
            *[f"{k}={v}" for k, v in tiny_mace.items()], "seed=0,1"]
    res = run_cli("launcher.cli", args, slurm_cluster, tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: hydra.launcher: the cluster refused the jobs") and "partition" in line
    assert not (sweep / "0").exists() and not (sweep / "sweep.json").exists()
