"""Where a process stands in a multi-process job: torch.distributed's env:// variables from SLURM's,
submitit's local executor's or torchrun's (no cluster needed), and a 2-rank run through submitit's
local launcher."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from trainers.mace.distributed import SHARE_INDICES_LIMIT, first_host, job_port, rank_and_world, share_record, torch_env

from .conftest import REPO


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


@pytest.mark.slow
def test_two_ranks_through_the_local_launcher(tiny_data, tiny_model_json, tmp_path):
    """`launch hydra/launcher=local hydra.launcher.tasks_per_node=2`: one training as 2 gloo ranks."""
    import subprocess
    import sys

    import torch

    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    run_dir = tmp_path / "run"
    args = ["hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "device=cpu",
            f"train.input_json={tiny_model_json}", f"data.train={tiny_data['train']}", f"data.val={tiny_data['val']}",
            "train.dtype=float32", "train.batch_size=4", "train.epochs=2", f"run_dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(2 ranks each: 1 node(s) x 2 task(s))" in proc.stdout and "1 FINISHED" in proc.stdout
    lay = RunLayout.of(run_dir)
    state = json.loads(lay.state_json.read_text())
    assert state["status"] == "finished" and state["attempt"] == 1
    log = lay.train_log.read_text()
    # 24 structures, 12 per rank, batch 4: 3 updates per epoch (one process would make 6)
    assert "world=2" in log and "updates/epoch=3" in log
    assert torch.load(lay.checkpoint, weights_only=True)["loop"]["update_step"] == 6
    assert [r["epoch"] for r in read_jsonl(lay.metrics_jsonl) if r["split"] == "val"] == [1, 2]
    digests = state["result"]["weights_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # each task left its own result; rank 1 trained as a follower and wrote nothing in the run dir
    jobs = [p for p in (run_dir.parent / ".submit" / "run" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 1
    results = {}
    for task in (0, 1):
        kind, value = pickle.loads((jobs[0] / f"{jobs[0].name}_{task}_result.pkl").read_bytes())
        assert kind == "success", value
        results[task] = value
    assert (results[0]["rank"], results[0]["world"], results[0]["status"]) == (0, 2, "finished")
    assert (results[1]["rank"], results[1]["world"], results[1]["status"]) == (1, 2, "finished")
    assert results[1]["result"]["weights_sha256_by_rank"] == digests
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "artifacts", "checkpoints", "logs", "run.yaml", "state.json"]


def test_share_record_lists_indices_in_read_order_and_bounds_its_size():
    import hashlib

    import numpy as np

    rec = share_record(3, 1, 2, np.array([7, 2, 5]))
    assert rec == {"epoch": 3, "rank": 1, "world": 2, "n": 3, "indices": [7, 2, 5],
                   "sha256": hashlib.sha256(np.array([7, 2, 5], dtype=np.int64).tobytes()).hexdigest()}
    assert share_record(3, 1, 2, np.array([2, 7, 5]))["sha256"] != rec["sha256"]     # the order counts
    big = share_record(1, 0, 1, np.arange(SHARE_INDICES_LIMIT + 1))
    assert "indices" not in big and big["n"] == SHARE_INDICES_LIMIT + 1
