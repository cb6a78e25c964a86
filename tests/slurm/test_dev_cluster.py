"""scripts/slurm-dev-cluster: idempotent start, env lines, and accounting that answers for killed jobs."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.slurm.conftest import REPO, sacct_states

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SCRIPT = REPO / "scripts" / "slurm-dev-cluster"


def _script(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def test_start_is_idempotent_and_env_points_at_the_cluster(slurm_cluster):
    status = _script("status", env=slurm_cluster)
    if status.returncode != 0:
        pytest.skip("the running cluster is not managed by scripts/slurm-dev-cluster")
    pids = [ln for ln in status.stdout.splitlines() if "running (pid" in ln]
    assert len(pids) == 5, status.stdout  # munged, mariadbd, slurmdbd, slurmctld, slurmd
    t0 = time.time()
    again = _script("start", env=slurm_cluster)
    assert again.returncode == 0, again.stderr
    assert time.time() - t0 < 20
    assert [ln for ln in _script("status", env=slurm_cluster).stdout.splitlines() if "running (pid" in ln] == pids
    env_lines = _script("env", env=slurm_cluster).stdout.splitlines()
    assert any(ln.startswith("export SLURM_CONF=") for ln in env_lines)
    assert f"export SLURM_CONF={slurm_cluster['SLURM_CONF']}" in env_lines


def test_a_hard_killed_job_is_reported_failed_not_waited_on(slurm_cluster, tiny_mace, tmp_path):
    """sacct answers (slurmdbd accounting), so a job killed without a result file ends the wait."""
    from launcher.core.schema import spec_from_dict
    from launcher.status import sweep_status
    from launcher.submit import LauncherParams, submit_runs
    from launcher.core.specio import expand_dotted

    spec = spec_from_dict(expand_dotted({**tiny_mace, "run_dir": str(tmp_path / "run"), "train.epochs": 200},
                                        source="test"))
    res = submit_runs([spec], LauncherParams(cluster="slurm", cpus_per_task=1, poll_interval_s=1), tmp_path / "sw",
                      wait=False, echo=lambda s: None)
    job = res.outcomes[0].job_id
    for _ in range(120):
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=slurm_cluster, capture_output=True,
                             text=True, timeout=30).stdout.strip()
        if out == "RUNNING":
            break
        time.sleep(0.5)
    assert out == "RUNNING"
    time.sleep(2)
    subprocess.run(["scancel", "--full", "--signal=KILL", job], env=slurm_cluster, check=True, timeout=30)
    t0 = time.time()
    result = sweep_status(tmp_path / "sw", wait=True)
    assert time.time() - t0 < 60
    o = result.outcomes[0]
    assert o.state in ("FAILED", "CANCELLED") and o.error, o
    assert sacct_states(job, slurm_cluster)[0] in ("FAILED", "CANCELLED")
