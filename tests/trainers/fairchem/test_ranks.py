"""FairChem's distributed mode: ``tasks_per_node=N`` trains with N FairChem ranks started by the job's task 0."""
from __future__ import annotations

import json
import os

import pytest

from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec, check
from trainers.api import JobContext
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.ranks import JobTasks, job_tasks

from .conftest import TEST_CONFIGS


@pytest.mark.parametrize("env, expected", [
    ({}, JobTasks(0, 1, 1)),
    ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1"}, JobTasks(1, 2, 1)),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
      "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_TASKS_PER_NODE": "4"}, JobTasks(0, 4, 1)),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2",
      "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_NUM_NODES": "2"}, JobTasks(3, 2, 2)),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4"},
     JobTasks(0, 1, 1)),   # a batch script (one process), whatever the job's task count
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, JobTasks(0, 1, 1)),   # an salloc shell: not a job's task
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, JobTasks(1, 2, 1)),   # torchrun
])
def test_where_a_process_stands_in_its_job(env, expected):
    assert job_tasks(env) == expected


def test_the_launchers_own_rendezvous_never_reaches_fairchem():
    from trainers.fairchem.env import child_env

    env = child_env({}, base={"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1", "PATH": "/bin"})
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(env) and env["PATH"] == "/bin"


def _spec(run_dir, demo_data, python) -> RunSpec:
    spec = RunSpec(backend="equiformer_v2", task="train", run_dir=str(run_dir), device="cpu", seed=0,
                   backend_python=python, backend_env={"OMP_NUM_THREADS": "1"})
    spec.train.config_yml = str(TEST_CONFIGS / "test_equiformerv2.yml")
    spec.train.epochs = 1
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    return check(spec)


def test_other_tasks_of_the_job_leave_the_run_to_task_0(tmp_path, demo_data, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    spec = _spec(tmp_path / "run", demo_data, "/nonexistent/python")
    lines = []
    out = FairchemBackend(echo=lines.append).run(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir)))
    assert out == {"follower": True} and not (tmp_path / "run").exists()
    assert lines == ["[fairchem] task 1 of 2: FairChem's ranks run from task 0"]


@pytest.mark.slow
@pytest.mark.fairchem
def test_two_tasks_per_node_train_with_two_fairchem_ranks(tmp_path, demo_data, fairchem_python, monkeypatch):
    """Task 0 of a 2-task submitit job: FairChem trains as 2 ranks (gloo on CPU) and the run is complete."""
    from launcher.job import run_job

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    spec = _spec(tmp_path / "run", demo_data, fairchem_python)
    lines: list = []
    res = run_job(spec, echo=lines.append)
    assert res.status == "finished", "\n".join(map(str, lines))[-3000:]
    layout = RunLayout.of(spec.run_dir)
    log = next(layout.logs.glob("fairchem-train-*.log")).read_text()
    assert "torch.distributed.run --standalone --nnodes 1 --nproc_per_node 2" in log.splitlines()[0]
    assert "--num-gpus 2" in log.splitlines()[0]
    assert "rank: 1: Sampler created" in log            # FairChem's second rank trained its share
    assert layout.best_model.is_file() and layout.checkpoint.is_file()
    manifest = json.loads(layout.manifest.read_text())
    assert manifest["backend"] == "equiformer_v2" and manifest["fairchem"]["epoch"] is not None
    assert not (layout.native("fairchem") / "tmp").exists()
    assert os.environ.get("RANK") is None
