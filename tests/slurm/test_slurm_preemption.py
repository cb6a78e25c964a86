"""Preemption on a real SLURM cluster: a USR2-signalled job and an externally requeued job both
resume from their checkpoint and finish, repeating no epoch beyond the checkpoint interval."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.slurm.conftest import interrupt_after_epochs, sacct_states, train_epochs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCHS = 120  # headroom: the interruption must land well before a tiny run could finish


def test_preempted_and_requeued_jobs_resume_without_repeating_epochs(slurm_cluster, tiny_mace, tmp_path):
    from launcher.core.schema import spec_from_dict
    from launcher.status import main as status_main, sweep_status
    from launcher.submit import LauncherParams, submit_runs
    from launcher.core.specio import expand_dotted

    sweep = tmp_path / "sweep"
    specs = [spec_from_dict(expand_dotted({**tiny_mace, "run_dir": str(sweep / case), "train.epochs": EPOCHS,
                                           "train.save_every": 1}, source="test"))
             for case in ("usr2", "requeue")]
    # timeout_min > 10: below that, submitit counts every USR2 as a timeout
    params = LauncherParams(cluster="slurm", cpus_per_task=1, timeout_min=60, poll_interval_s=2)
    res = submit_runs(specs, params, sweep, overrides=[["case=usr2"], ["case=requeue"]], wait=False)
    assert [o.state for o in res.outcomes] == ["PENDING", "PENDING"] and len(res.array_ids) == 1
    usr2_job, requeue_job = (o.job_id for o in res.outcomes)
    assert status_main([str(sweep), "--quiet"]) == 3  # launch-status while the jobs run

    # interrupt each job as soon as it has checkpointed a few epochs (both train at once)
    interrupt_after_epochs(sweep, {"usr2": usr2_job, "requeue": requeue_job}, slurm_cluster, after=3, last=EPOCHS,
                           timeout=300)

    result = sweep_status(sweep, wait=True)
    assert [o.state for o in result.outcomes] == ["FINISHED", "FINISHED"], [o.error for o in result.outcomes]
    for case, job in (("usr2", usr2_job), ("requeue", requeue_job)):
        run_dir = sweep / case
        epochs = train_epochs(run_dir)
        assert set(epochs) == set(range(1, EPOCHS + 1)), (case, epochs)
        repeated = {e: n for e, n in Counter(epochs).items() if n > 1}
        assert sum(n - 1 for n in repeated.values()) <= 1, (case, repeated)  # save_every=1: at most one epoch
        state = json.loads((run_dir / "state.json").read_text())
        assert state["status"] == "finished" and state["attempt"] >= 2, (case, state)
        attempts = sacct_states(job, slurm_cluster, duplicates=True)
        assert attempts[-1] == "COMPLETED" and "REQUEUED" in attempts[:-1], (case, attempts)
    usr2_log = Path(result.outcomes[0].log_path).parent
    logs = "".join(p.read_text() for p in usr2_log.glob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs  # submitit's own requeue path
    table = (sweep / "summary.csv").read_text()
    assert table.count("FINISHED") == 2
