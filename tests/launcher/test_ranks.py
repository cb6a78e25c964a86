"""Where a process stands in a multi-process job (``launcher.core.ranks``): torch.distributed's env:// variables
from SLURM's, submitit's local executor's or torchrun's (no cluster needed), and the same place as every backend
reads it (the MACE trainer through ``torch_env``, the FairChem runner through ``job_tasks``, the worker)."""
from __future__ import annotations

import pytest

from launcher.core.ranks import Place, first_host, job_port, place, rank_and_world, torch_env


def _srun_task(node: int, local: int, *, nodes: int = 2, per_node: int = 2, job: str = "4242") -> dict:
    """The variables srun gives one task of ``sbatch --nodes=2 --ntasks-per-node=2`` (as on a real cluster)."""
    n = nodes * per_node
    return {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(n), "SLURM_STEP_NUM_TASKS": str(n),
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_STEP_NODELIST": "gpu[017-018]",
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})", "SLURM_NTASKS_PER_NODE": str(per_node),
            "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_PROCID": str(node * per_node + local)}


def test_two_nodes_of_two_tasks_map_to_four_ranks_with_one_master():
    envs = [torch_env(_srun_task(node, local)) for node in range(2) for local in range(2)]
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"}
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["MASTER_ADDR"] for e in envs} == {"gpu017"}           # rank 0's node, for every rank
    assert len({e["MASTER_PORT"] for e in envs}) == 1                # derived alike by every task
    assert 20000 <= int(envs[0]["MASTER_PORT"]) < 60000
    other_job = torch_env(_srun_task(0, 0, job="4243"))["MASTER_PORT"]
    assert other_job != envs[0]["MASTER_PORT"]                       # two jobs on one node do not collide
    assert rank_and_world(_srun_task(1, 1)) == (3, 4)


def test_a_batch_script_or_a_one_task_step_is_one_process():
    batch = {k: v for k, v in _srun_task(0, 0).items() if not k.startswith("SLURM_STEP")}
    assert batch["SLURM_NTASKS"] == "4" and torch_env(batch) == {}  # `launch` inside sbatch -n 4: one process
    one = {**_srun_task(0, 0), "SLURM_STEP_NUM_TASKS": "1"}            # srun -n 1 inside the allocation
    assert torch_env(one) == {} and rank_and_world(one) == (0, 1)
    assert rank_and_world({}) == (0, 1)


def test_torchrun_variables_win_and_an_explicit_master_is_kept():
    torchrun = {**_srun_task(1, 0), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                "MASTER_PORT": "29500"}
    assert torch_env(torchrun) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                                   "MASTER_PORT": "29500"}
    pinned = torch_env({**_srun_task(1, 1), "MASTER_PORT": "31000", "MASTER_ADDR": "ib-gpu017"})
    assert pinned["MASTER_PORT"] == "31000" and pinned["MASTER_ADDR"] == "ib-gpu017" and pinned["RANK"] == "3"


def test_submitit_local_tasks_map_to_ranks_on_this_machine():
    base = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "777",
            "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}
    envs = [torch_env({**base, "SUBMITIT_LOCAL_GLOBALID": str(k), "SUBMITIT_LOCAL_LOCALID": str(k)}) for k in (0, 1)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["WORLD_SIZE"]) for e in envs] == [("0", "0", "2"), ("1", "1", "2")]
    assert envs[0]["MASTER_ADDR"] == "127.0.0.1" and envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    assert torch_env({**base, "SUBMITIT_LOCAL_NTASKS": "1"}) == {}


@pytest.mark.parametrize("nodelist,first", [
    ("vm", "vm"), ("gpu[017-018]", "gpu017"), ("gpu[3,5-7],cpu1", "gpu3"), ("a1,b2", "a1"),
    ("rack[2-3]-n[08-09]", "rack2-n08"),
])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert first_host(nodelist) == first


def test_job_port_is_stable_across_processes():
    assert job_port("slurm-17-0") == job_port("slurm-17-0")
    assert job_port("slurm-17-0") == 20000 + __import__("zlib").crc32(b"slurm-17-0") % 40000


def test_torchrun_inside_a_slurm_step_is_placed_by_torchrun():
    """The innermost launcher wins: a torchrun started in a one-task SLURM step (or a submitit task) places its
    children; the step's variables describe the torchrun process itself."""
    step = {**_srun_task(1, 1), "SLURM_STEP_NUM_TASKS": "4"}
    child = {**step, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    assert place(child) == Place(0, 2, 0, 2) and rank_and_world(child) == (0, 2)
    assert place(step).rank == 3                                         # without torchrun: the step's task


def test_every_backend_and_the_worker_read_the_same_place(monkeypatch):
    import os

    from launcher import worker
    from trainers.fairchem.ranks import JobTasks, job_tasks

    for env in (_srun_task(1, 1), {}, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"},
                {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1"}):
        p = place(env)
        assert job_tasks(env) == JobTasks(p.rank, p.local_world, p.nodes)
        assert rank_and_world(env) == (int(torch_env(env).get("RANK", 0)), int(torch_env(env).get("WORLD_SIZE", 1)))
    assert job_tasks(_srun_task(1, 1)) == JobTasks(3, 2, 2)
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_")) or k in ("WORLD_SIZE", "RANK")]:
        monkeypatch.delenv(key)
    for key, value in _srun_task(1, 0).items():
        monkeypatch.setenv(key, value)
    assert worker.rank_and_world() == (2, 4)
