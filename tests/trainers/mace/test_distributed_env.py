"""MACE as several processes: a 2-rank run through submitit's local launcher, and what each rank records.
(Where a process stands in its job is ``launcher.core.ranks``: tests/launcher/test_ranks.py.)"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from trainers.mace.distributed import SHARE_INDICES_LIMIT, share_record

from .conftest import REPO


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
