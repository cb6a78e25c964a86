"""``launch-status SWEEP_DIR``: where the jobs of a submitted sweep stand; refreshes its summary.

    launch-status SWEEP_DIR [--wait] [--quiet]

Reads ``SWEEP_DIR/sweep.json`` (written at submission), asks the cluster (``sacct``) and the jobs'
result files, prints one line per job and rewrites ``summary.csv`` / ``summary.md`` /
``summary.png``. A job whose run directory says "running" while its process is gone is INTERRUPTED.
Exit code: 0 when every job finished, 1 when any failed or was interrupted, 3 while some are still
pending or running, 2 for a directory that is not a sweep.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from launcher.core.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ConfigError

EXIT_ACTIVE = 3


def _parser() -> argparse.ArgumentParser:
    from launcher.reporting import OneLineParser

    p = OneLineParser(prog="launch-status", description=__doc__.split("\n\n")[0].strip())
    p.add_argument("sweep_dir", help="the sweep directory (holds sweep.json)")
    p.add_argument("--wait", action="store_true", help="wait until every job is done, then report")
    p.add_argument("--quiet", "-q", action="store_true", help="only the counts line")
    return p


def sweep_status(sweep_dir: Path, *, wait: bool = False) -> "object":
    """The SweepResult of a recorded sweep, its record and summary refreshed."""
    from launcher import summary
    from launcher.core.layout import RunLayout
    from launcher.submit import (JobOutcome, LauncherParams, SweepResult, job_handles, outcomes_of, read_record,
                                 wait_for, write_record)

    sweep_dir = Path(sweep_dir).resolve()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"SWEEP_DIR: {sweep_dir} is a file, expected a sweep directory (it holds sweep.json)")
    rec = read_record(sweep_dir)
    check_record(rec, sweep_dir / "sweep.json")
    bases = [JobOutcome(**j) for j in rec["jobs"]]
    jobs = job_handles(rec)
    cluster = rec["cluster"]
    params = LauncherParams(**{k: v for k, v in (rec.get("params") or {}).items()
                               if k in LauncherParams.__dataclass_fields__})
    outcomes = wait_for(jobs, bases, params) if wait else outcomes_of(jobs, bases, cluster)
    objective = rec.get("objective") if isinstance(rec.get("objective"), str) else None   # an Optuna study's
    write_record(sweep_dir, params, Path(rec["submitit_folder"]), outcomes, rec.get("array_ids") or [], objective)
    for o in outcomes:   # the cluster (or a dead local pid) may lag: a run whose job is gone is interrupted
        if o.state in ("RUNNING", "FAILED") and o.run_dir and RunLayout.of(o.run_dir).status() == "interrupted":
            o.state, o.error = "INTERRUPTED", f"its job died without finishing; launch it again to resume ({o.run_dir})"
    result = SweepResult(sweep_dir, outcomes, list(rec.get("array_ids") or []))
    result.summary_path = summary.write_summary(sweep_dir, outcomes, objective)["csv"]
    return result


def check_record(rec: dict, path: Path) -> None:
    """A sweep.json of the shape submission writes, or one ConfigError naming what is wrong."""
    from dataclasses import fields

    from launcher.submit import CLUSTERS, JobOutcome

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path}: not a sweep record ({what})")

    if rec.get("cluster") not in CLUSTERS or rec["cluster"] == "inprocess":
        raise bad(f"'cluster' is {rec.get('cluster')!r}, expected local or slurm")
    if not isinstance(rec.get("submitit_folder"), str):
        raise bad("'submitit_folder' must be a path")
    if not isinstance(rec.get("array_ids") or [], list) or not isinstance(rec.get("params") or {}, dict):
        raise bad("'array_ids' must be a list and 'params' a mapping")
    jobs = rec["jobs"]
    if not isinstance(jobs, list):
        raise bad("'jobs' must be a list")
    names = {f.name for f in fields(JobOutcome)}
    required = ("index", "run_dir", "state", "overrides", "job_id")
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise bad(f"jobs[{i}] must be a mapping")
        unknown = sorted(set(job) - names)
        missing = [k for k in required if job.get(k) is None]
        if unknown or missing:
            raise bad(f"jobs[{i}]: " + "; ".join(filter(None, [
                f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                f"missing {', '.join(missing)}" if missing else ""])))
        if not isinstance(job["index"], int) or not isinstance(job["overrides"], list) \
                or not isinstance(job["run_dir"], str) or not isinstance(job["state"], str):
            raise bad(f"jobs[{i}]: index must be an integer, run_dir and state strings, overrides a list")


def main(argv: Optional[List[str]] = None) -> int:
    from launcher.reporting import exit_for
    from launcher.submit import counts_line

    args = _parser().parse_args(argv)
    try:
        result = sweep_status(Path(args.sweep_dir), wait=args.wait)
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_CONFIG
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - one line (exit 2 for a path problem, else 1)
        exit_for(e)
    for o in result.outcomes:
        if not args.quiet:
            line = f"[{o.index}] {o.state:<9} {o.job_id or '':<12} {' '.join(o.overrides) or '(no overrides)'}"
            if o.error:
                line += f"  error: {o.error} (log {o.log_path})"
            print(line)
    print(f"{counts_line(result.outcomes)}; summary: {result.summary_path}")
    if result.failed or any(o.state == "INTERRUPTED" for o in result.outcomes):
        return EXIT_FAILED
    if result.pending:
        return EXIT_ACTIVE
    return EXIT_OK


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
