"""``python -m launcher.worker RUN_YAML``: the per-process entry of a job started outside the doors.

One process (a plain re-run of a saved spec) or one rank of several (torchrun, or srun with SLURM
tasks): rank 0 goes through :func:`launcher.job.run_job` (run-dir state, lock, resume decision);
the other ranks join the backend directly and take the resume decision from rank 0.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional


def _rank() -> int:
    """This process's rank, from torchrun's variables or SLURM's (0 when run alone)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from launcher.backends import get_backend
    from launcher.core.layout import RunLayout
    from launcher.core.specio import load_run_yaml_spec
    from launcher.job import SKIP, classify, run_job
    from trainers.api import JobContext

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launcher.worker RUN_YAML", file=sys.stderr)
        return 2
    spec = load_run_yaml_spec(args[0])
    if _rank() == 0:
        result = run_job(spec)
        return 0 if result.status in ("finished", "skipped") else 1
    layout = RunLayout.of(spec.run_dir)
    if classify(spec, layout) == SKIP:
        return 0                  # rank 0 skips the finished run too: nobody joins the group
    # resume is decided by rank 0 (run_job) and broadcast inside the backend
    get_backend(spec.backend).run(JobContext(spec=spec, layout=layout, resume=False, extra={"follower": True}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
