"""Multi-process MACE on a real SLURM cluster: `hydra.launcher.tasks_per_node=2` runs each run as ONE
training of 2 gloo ranks (a sweep is still one job array), and a preempted or requeued 2-rank job
resumes from its checkpoint."""
from __future__ import annotations

import json
import pickle
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.slurm.conftest import interrupt_after_epochs, run_cli, sacct_states

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RANKS = ["hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"]


def _rank_results(submitit_dir: Path, job_id: str) -> dict:
    """What each task (rank) of a job returned, from submitit's per-task result files."""
    out = {}
    for task in (0, 1):
        kind, value = pickle.loads((submitit_dir / f"{job_id}_{task}_result.pkl").read_bytes())
        assert kind == "success", value
        out[task] = value
    return out


def _check_two_rank_run(run_dir: Path, epochs: int, updates_per_epoch: int) -> dict:
    import torch

    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished", state
    log = (run_dir / "logs" / "train.log").read_text()
    assert "world=2" in log and f"updates/epoch={updates_per_epoch}" in log
    assert "world=1" not in log
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["loop"]["epoch"] == epochs and ck["loop"]["update_step"] == epochs * updates_per_epoch
    digests = state["result"]["weights_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], digests     # both ranks end with the same weights
    best = torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)
    assert best and (run_dir / "artifacts" / "manifest.json").is_file()
    return state


def test_the_node_offers_two_tasks(slurm_cluster):
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], env=slurm_cluster, capture_output=True, text=True, timeout=30)
    assert max(int(c.rstrip("+")) for c in out.stdout.split()) >= 2, out.stdout


def test_two_rank_sweep_is_one_array_of_two_rank_trainings(slurm_cluster, tiny_mace, tmp_path):
    sweep = tmp_path / "sweep"
    keys = {**tiny_mace, "train.batch_size": 2}
    args = ["-m", "hydra/launcher=slurm", *RANKS, "hydra.launcher.mem_gb=null", "hydra.launcher.poll_interval_s=2",
            f"hydra.sweep.dir={sweep}", "train.epochs=2", *[f"{k}={v}" for k, v in keys.items()], "seed=0,1"]
    res = run_cli("launcher.cli", args, slurm_cluster, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "as job array" in res.stdout and "(2 ranks each: 1 node(s) x 2 task(s))" in res.stdout

    record = json.loads((sweep / "sweep.json").read_text())
    assert len(record["array_ids"]) == 1 and record["params"]["tasks_per_node"] == 2
    array = record["array_ids"][0]
    assert sorted(j["job_id"] for j in record["jobs"]) == [f"{array}_0", f"{array}_1"]
    assert sacct_states(array, slurm_cluster) == ["COMPLETED"] * 2
    for job in record["jobs"]:
        assert job["state"] == "FINISHED", job
        # 8 structures, 4 per rank, batch 2: 2 updates per epoch on each rank (one process would make 4)
        state = _check_two_rank_run(Path(job["run_dir"]), epochs=2, updates_per_epoch=2)
        assert state["slurm_job_id"] and state["attempt"] == 1
        ranks = _rank_results(Path(record["submitit_folder"].replace("%j", job["job_id"])), job["job_id"])
        assert [(r["rank"], r["world"], r["status"]) for r in ranks.values()] == [(0, 2, "finished"), (1, 2, "finished")]
        assert ranks[1]["result"]["weights_sha256_by_rank"] == state["result"]["weights_sha256_by_rank"]
    seeds = {json.loads((Path(j["run_dir"]) / "state.json").read_text())["result"]["weights_sha256_by_rank"][0]
             for j in record["jobs"]}
    assert len(seeds) == 2  # two different trainings, not one run twice


EPOCHS = 60  # headroom: the interruption must land well before a tiny run could finish


def _train_records(run_dir: Path) -> list:
    from launcher.core.atomic import read_jsonl

    path = run_dir / "logs" / "metrics.jsonl"
    return [r for r in read_jsonl(path) if r.get("split") == "train"] if path.exists() else []


def _train_steps(run_dir: Path) -> list:
    return [r["step"] for r in _train_records(run_dir)]


def test_preempted_and_requeued_two_rank_jobs_resume_from_their_checkpoint(slurm_cluster, tiny_mace, tmp_path):
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import expand_dotted
    from launcher.status import sweep_status
    from launcher.submit import LauncherParams, submit_runs

    sweep = tmp_path / "sweep"
    specs = [spec_from_dict(expand_dotted({**tiny_mace, "run_dir": str(sweep / case), "train.epochs": EPOCHS,
                                           "train.batch_size": 2, "train.save_every": 1, "train.log_every": 1},
                                          source="test"))
             for case in ("usr2", "requeue")]
    # timeout_min > 10: below that, submitit counts every USR2 as a timeout
    params = LauncherParams(cluster="slurm", tasks_per_node=2, cpus_per_task=1, timeout_min=60, poll_interval_s=2)
    res = submit_runs(specs, params, sweep, overrides=[["case=usr2"], ["case=requeue"]], wait=False)
    assert len(res.array_ids) == 1
    usr2_job, requeue_job = (o.job_id for o in res.outcomes)

    interrupt_after_epochs(sweep, {"usr2": usr2_job, "requeue": requeue_job}, slurm_cluster, after=3, last=EPOCHS,
                           timeout=600)

    result = sweep_status(sweep, wait=True)
    assert [o.state for o in result.outcomes] == ["FINISHED", "FINISHED"], [o.error for o in result.outcomes]
    for case, job in (("usr2", usr2_job), ("requeue", requeue_job)):
        run_dir = sweep / case
        state = _check_two_rank_run(run_dir, epochs=EPOCHS, updates_per_epoch=2)
        assert state["attempt"] >= 2, (case, state)
        # every update logged once: the resumed attempt continued at the checkpoint's update, and the
        # lines a stopped attempt wrote after it were dropped
        steps = _train_steps(run_dir)
        assert sorted(steps) == list(range(1, 2 * EPOCHS + 1)), (case, [s for s, n in Counter(steps).items() if n > 1])
        log = (run_dir / "logs" / "train.log").read_text()
        assert "resumed from" in log and log.count("world=2") >= 2, case   # the later attempt ran 2 ranks too
        attempts = sacct_states(job, slurm_cluster, duplicates=True)
        assert attempts[-1] == "COMPLETED" and "REQUEUED" in attempts[:-1], (case, attempts)
    # same spec and seed, stopped at different updates: exact resume ends both on the same weights
    final = {json.loads((sweep / c / "state.json").read_text())["result"]["weights_sha256_by_rank"][0]
             for c in ("usr2", "requeue")}
    assert len(final) == 1, final
    logs = Path(result.outcomes[0].log_path).parent
    rank0 = "".join(p.read_text() for p in logs.glob(f"{usr2_job}_0_log.*"))
    rank1 = "".join(p.read_text() for p in logs.glob(f"{usr2_job}_1_log.*"))
    assert "Caught signal SIGUSR2" in rank0 and "Requeued job" in rank0      # rank 0 requeued the job
    assert "Caught signal SIGUSR2" in rank1 and "Requeued job" not in rank1  # rank 1 only checkpointed along


def test_a_failing_two_rank_job_ends_failed_with_its_error(slurm_cluster, tiny_mace, tmp_path):
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import expand_dotted
    from launcher.submit import LauncherParams, submit_runs

    bad = json.loads(Path(tiny_mace["train.input_json"]).read_text())
    bad["MLP_irreps"] = "not-irreps"  # passes preflight, fails on every rank when the model is built
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    spec = spec_from_dict(expand_dotted({**tiny_mace, "run_dir": str(tmp_path / "broken"), "train.epochs": 2,
                                         "train.input_json": str(tmp_path / "bad.json")}, source="test"))
    params = LauncherParams(cluster="slurm", tasks_per_node=2, cpus_per_task=1, timeout_min=60, poll_interval_s=2)
    t0 = time.time()
    res = submit_runs([spec], params, tmp_path / "sub", echo=lambda s: None)
    assert time.time() - t0 < 300  # no rank waits for a collective's timeout
    (o,) = res.outcomes
    assert o.state == "FAILED" and "Irreps" in (o.error or ""), o
    assert json.loads((tmp_path / "broken" / "state.json").read_text())["status"] == "failed"
    assert sacct_states(o.job_id, slurm_cluster) == ["FAILED"]
