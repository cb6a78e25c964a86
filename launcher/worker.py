"""Every rank of a job: :func:`run_rank`, and ``python -m launcher.worker RUN_YAML`` for torchrun / srun.

A job may run as several processes (ranks): submitit starts ``hydra.launcher.tasks_per_node`` x
``nodes`` tasks of the same :class:`launcher.submit.RunJob`, torchrun or ``srun`` start this module once
per rank. Each rank finds its place with ``launcher.core.ranks.place`` (the parser every backend uses) and then:

- rank 0 goes through :func:`launcher.job.run_job` and alone owns the run directory (lock, run.yaml,
  state.json, checkpoints, logs); the trainer broadcasts its resume decision to the other ranks;
- a rank > 0 (a follower) never takes the lock and never writes state. It skips when the run is already
  finished (rank 0 skips it too, so nobody waits for it), and otherwise joins the training through the
  backend's ``run`` with ``ctx.extra["follower"]``. Only backends that train as several processes
  in-process (the contract's ``distributed = True``) are joined; for the others, and for tasks that are not
  training, rank 0 does the work alone and the followers return at once.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, List, Optional

FOLLOWER_GRACE_S = 30.0  # how long a failing follower waits for rank 0 to record the failure


def rank_and_world() -> tuple:
    """(rank, world size) of this process: torchrun's, submitit's (local or SLURM) or (0, 1)."""
    from launcher.core.ranks import rank_and_world as from_env

    return from_env()


def run_rank(spec: Any, *, echo: Callable[[str], None] = print, prestarted: Optional[Any] = None) -> Any:
    """Run ``spec`` as this process's rank of its job; returns rank 0's :class:`launcher.job.JobResult`
    there, and on a follower what the follower did (status finished, skipped or preempted)."""
    from launcher.job import run_job

    rank, world = rank_and_world()
    if rank == 0:
        return run_job(spec, echo=echo, prestarted=prestarted)
    return _follow(spec, rank, world)


def _follow(spec: Any, rank: int, world: int) -> Any:
    from launcher.backends import get_backend
    from launcher.core import preemption
    from launcher.core.layout import RunLayout
    from launcher.core.schema import TRAINING_TASKS
    from launcher.job import SKIP, JobResult, classify, job_threads
    from trainers.api import JobContext

    layout = RunLayout.of(spec.run_dir)
    root = str(layout.root)
    backend = get_backend(spec.backend)
    if spec.task not in TRAINING_TASKS or not backend.distributed:
        return JobResult(root, "skipped", {}, f"rank {rank}/{world}: task={spec.task} of backend={spec.backend} "
                                              "runs on rank 0 alone")
    if classify(spec, layout) == SKIP:  # rank 0 skips the finished run too: nobody joins the group
        return JobResult(root, "skipped", {}, f"rank {rank}/{world}: already finished")
    threads = job_threads()
    preemption.install_preemption_handler()
    try:
        result = backend.run(JobContext(spec=spec, layout=layout, resume=False, extra={"follower": True, "threads": threads})) or {}
    except preemption.Preempted:
        preemption.run_deferred_handlers()  # submitit's handler: only rank 0 requeues
        return JobResult(root, "preempted", {}, f"rank {rank}/{world}: preempted")
    except BaseException:
        _await_rank0(layout)
        raise
    return JobResult(root, "finished", result)


def _await_rank0(layout: Any, timeout_s: float = FOLLOWER_GRACE_S) -> None:
    """Give rank 0 a moment to record a failure it shares before this rank's exit ends the job step.

    Under SLURM a multi-task job runs with ``--kill-on-bad-exit``, so the first rank to fail stops the
    others; when they all fail (a diverged loss, a bad model), rank 0's own error should land in
    state.json and the job's result rather than a kill.
    """
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if layout.read_state().get("status") not in ("running", None):
            return
        time.sleep(0.5)


def main(argv: Optional[List[str]] = None) -> int:
    from launcher.core.specio import load_run_yaml_spec

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launcher.worker RUN_YAML", file=sys.stderr)
        return 2
    from launcher.core.errors import EXIT_PREEMPTED

    result = run_rank(load_run_yaml_spec(args[0]))
    if result.status == "preempted" and rank_and_world()[0] == 0:
        return EXIT_PREEMPTED     # run it again to resume; a follower's exit must not end the job step
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
