"""Several ranks per job: what reaches submitit and sbatch, and what the in-process launcher refuses."""
from __future__ import annotations

import pytest

from launcher.core.errors import ConfigError
from launcher.submit import LauncherParams, check_params, executor_parameters
from tests.slurm.conftest import REPO, run_cli


def _sbatch_text(params: LauncherParams, tmp_path) -> str:
    """The batch script submitit would submit (built without a cluster)."""
    from launcher.submit import make_executor

    return make_executor(params, tmp_path)._executor._make_submission_file_text("python -m x", "uid")


def test_a_two_node_two_task_job_asks_for_four_tasks_that_stop_together(tmp_path):
    text = _sbatch_text(LauncherParams(cluster="slurm", nodes=2, tasks_per_node=2, cpus_per_task=1), tmp_path)
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=2" in text
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun"))
    assert "--kill-on-bad-exit=1" in srun


def test_one_task_jobs_and_the_users_own_choice_are_left_alone(tmp_path):
    assert "slurm_srun_args" not in executor_parameters(LauncherParams(cluster="slurm"))
    mine = executor_parameters(LauncherParams(cluster="slurm", tasks_per_node=2, srun_args=["--kill-on-bad-exit=0"]))
    assert mine["slurm_srun_args"] == ["--kill-on-bad-exit=0"]
    other = executor_parameters(LauncherParams(cluster="slurm", tasks_per_node=2, srun_args=["--cpu-bind=none"]))
    assert other["slurm_srun_args"] == ["--cpu-bind=none", "--kill-on-bad-exit=1"]


@pytest.mark.parametrize("key,value", [("tasks_per_node", 2), ("nodes", 2)])
def test_the_in_process_launcher_refuses_several_ranks(key, value):
    with pytest.raises(ConfigError) as e:
        check_params(LauncherParams(cluster="inprocess", **{key: value}))
    msg = str(e.value)
    assert msg.startswith(f"hydra.launcher.{key}:") and "\n" not in msg and "hydra/launcher=local" in msg


def test_launch_refuses_in_process_ranks_before_touching_the_run_dir(demo_data, tmp_path):
    import os

    from tests.slurm.conftest import tiny_mace_keys

    run_dir = tmp_path / "run"
    keys = [f"{k}={v}" for k, v in tiny_mace_keys(demo_data).items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in ([], ["-m", "dry_run=true", f"hydra.sweep.dir={tmp_path / 'sweep'}"]):
        res = run_cli("launcher.cli", [*extra, "hydra.launcher.tasks_per_node=2", *keys, f"run_dir={run_dir}"],
                      env, REPO, timeout=300)
        assert res.returncode == 2, res.stderr[-3000:]
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        assert lines[-1].startswith("error: hydra.launcher.tasks_per_node:"), res.stderr[-3000:]
        assert not run_dir.exists() or not any(run_dir.iterdir())  # Hydra's own empty output dir at most


def test_each_rank_needs_its_own_gpu():
    with pytest.raises(ConfigError, match=r"^hydra.launcher.gpus_per_node: 1 GPU\(s\) for 2 tasks per node"):
        check_params(LauncherParams(cluster="slurm", gpus_per_node=1, tasks_per_node=2))
    check_params(LauncherParams(cluster="slurm", gpus_per_node=2, tasks_per_node=2, nodes=2))
