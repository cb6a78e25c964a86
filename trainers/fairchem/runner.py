"""Running FairChem's process for a :class:`~trainers.fairchem.plan.Plan`, and the child's checkpoint helpers;
one honest line when either fails."""
from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from launcher.core.atomic import atomic_write_text
from launcher.core.errors import FairchemError
from launcher.core.schema import RunSpec
from trainers.fairchem.plan import CHILD, Plan
from trainers.fairchem.process import format_command, run_process

# Known FairChem failures on our data -> what to do about them (appended to the error message).
HINTS = (
    ("different PBC configurations", "the data mixes periodic and slab (non-periodic z) cells; add backend_args "
                                     "--model.use_pbc_single=True"),
    ("qint", "GemNet-OC quadruplets need atoms tagged as in qint_tags; for bulk data add backend_args "
             "--model.qint_tags=[0,1,2]"),
    ("BalancedBatchSampler requires a dataset that has a metadata", "optim.load_balancing needs a metadata.npz "
     "(atom counts) beside the LMDB; add backend_args --optim.load_balancing_on_error=warn_and_no_balance"),
    ("train_on_oc20_total_energies", "format oc22_lmdb expects OC22 records (an 'oc22' field); for other LMDBs add "
                                     "backend_args --dataset.train.format=lmdb"),
)


def error_line(lines: Sequence[str]) -> str:
    """The line that says what went wrong: the last exception line of the output (``...Error: ...``; a rank's
    own, not torchrun's report that a rank failed), else the last ``error:`` line, else the last non-empty line."""
    rank = re.compile(r"^\[(?:rank|default)\d+\]:\s*")
    clean = [rank.sub("", ln.strip()) for ln in lines if ln.strip()]
    exc = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)|AssertionError)\b:?")
    for ln in reversed(clean):
        if exc.match(ln) and "ChildFailedError" not in ln:
            return ln
    for ln in reversed(clean):
        if ln.lower().startswith("error:"):
            return ln
    return clean[-1] if clean else ""


def hint_for(error: str) -> str:
    """The hint of :data:`HINTS` whose failure ``error`` (the error line, not the whole output) is."""
    for needle, hint in HINTS:
        if needle in error:
            return f" (hint: {hint})"
    return ""


def truncated_lmdbs(paths: Sequence[str]) -> List[str]:
    """The LMDB files among ``paths`` (files or folders of ``*.lmdb`` shards) shorter than their own page count
    says: reading one through its memory map ends in SIGBUS."""
    out: List[str] = []
    for path in paths:
        p = Path(path)
        files = sorted(p.glob("*.lmdb")) if p.is_dir() else [p]
        for f in files:
            try:
                import lmdb

                env = lmdb.open(str(f), subdir=False, readonly=True, lock=False, readahead=False, max_readers=1)
                try:
                    need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
                finally:
                    env.close()
                if f.stat().st_size < need:
                    out.append(f"{f} ({f.stat().st_size} of {need} bytes)")
            except Exception:  # noqa: BLE001 - not an LMDB we can inspect: not the one to name
                continue
    return out


def failure_message(plan: Plan, res: Any) -> str:
    """One honest line for a FairChem process that failed: how it ended, the error line, a hint only where
    the error is one a hint explains, the log path."""
    rc = res.returncode
    if rc < 0 and -rc == signal.SIGBUS:
        cut = truncated_lmdbs(plan.dataset_sources)
        why = (f"truncated LMDB: {', '.join(cut)}; convert or copy it again" if cut else
               "a memory-mapped file (an LMDB, a checkpoint) was cut short or changed while FairChem read it")
        return f"FairChem --mode {plan.mode} failed (killed by SIGBUS: {why}) [log: {plan.log_path}]"
    if rc < 0:
        return (f"FairChem --mode {plan.mode} failed ({res.describe_exit()}, sent by another process or the "
                f"system, e.g. the out-of-memory killer) [log: {plan.log_path}]")
    err = error_line(res.tail)
    return (f"FairChem --mode {plan.mode} failed ({res.describe_exit()}): {err[:300]}{hint_for(err)} "
            f"[log: {plan.log_path}]")


def execute(plan: Plan, echo: Callable[[str], None], early: Optional[Any] = None) -> None:
    """Write the plan's config, run its command (output to the console, its log and logs/metrics.jsonl; curves
    redrawn at each validation of a training); raises ``Preempted`` or :class:`FairchemError` (one line)."""
    import shutil

    from launcher.core import preemption
    from trainers.fairchem.logparse import ConsoleLines, MetricsTap

    atomic_write_text(plan.config_path, plan.config_text)
    for note in plan.notes:
        echo(f"[fairchem] {note}")
    echo(f"[fairchem] {format_command(plan.command)}")
    curves = _curves(plan, echo) if plan.mode == "train" else None
    tap = MetricsTap(plan.log_path.parent / "metrics.jsonl", plan.timestamp_id,
                     on_val=curves.request if curves is not None else None, steps_per_epoch=plan.steps_per_epoch)
    console = ConsoleLines()   # warnings stay in the FairChem log; metrics with units

    def tee(line: str) -> None:
        shown = console(line)
        if shown is not None:
            echo(shown)
        tap(line)

    # FairChem's temp files (torch, torchrun's logs) go to a folder of this invocation, removed on every
    # exit path: a crash leaves nothing in /tmp
    tmp = plan.native_dir / "tmp" / plan.timestamp_id
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        res = run_process(plan.command, env={**plan.env, "TMPDIR": str(tmp)}, cwd=plan.native_dir,
                          log_path=plan.log_path, echo=tee, early=early,
                          forward_as=signal.SIGTERM if plan.ranks > 1 else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.parent.rmdir()
        except OSError:
            pass
        if curves is not None:   # the whole run so far, this invocation included, whatever ended it
            curves.close()
    if res.preempted:
        raise preemption.Preempted(f"FairChem stopped on a preemption signal ({res.describe_exit()})")
    if res.returncode != 0:
        raise FairchemError(failure_message(plan, res))


def _curves(plan: Plan, echo: Callable[[str], None]) -> Any:
    """logs/curves.png re-drawn from logs/metrics.jsonl (every FairChem invocation of the run) at each
    validation, off the thread that reads FairChem's output. A drawing failure is one line; the training
    goes on."""
    from launcher.core.curves import BackgroundRedraw

    logs = plan.log_path.parent
    return BackgroundRedraw(logs / "metrics.jsonl", logs / "curves.png", title=plan.title,
                            on_fail=lambda failed: echo(f"[fairchem] logs/curves.png not updated ({failed})"))


def child_helper(spec: RunSpec, *args: str) -> str:
    """Run a checkpoint helper of child.py in the FairChem env; its stdout. It dies with the launcher, and
    a stop signal meanwhile ends the run as preempted (it holds nothing worth waiting for)."""
    from launcher.core import preemption
    from trainers.fairchem.checkpoint_io import TRUST_ENV
    from trainers.fairchem.env import child_env, resolve_python
    from trainers.fairchem.process import ProbeFailed, run_probe

    python = resolve_python(spec.backend_python)
    try:
        env = {**child_env(spec.backend_env), **({TRUST_ENV: "1"} if spec.data.trust_pickles else {})}
        out = run_probe([python, str(CHILD), *args], env=env, timeout=None, what=f"checkpoint helper '{args[0]}'")
    except ProbeFailed as e:
        raise FairchemError(str(e)) from None
    if preemption.preemption_requested():
        raise preemption.Preempted(f"stopped during checkpoint helper '{args[0]}'")
    if out.returncode != 0:
        msg = error_line((out.stderr + "\n" + out.stdout).splitlines()) or "?"
        raise FairchemError(f"checkpoint helper '{args[0]}' failed: {msg}")
    return out.stdout


def inspect_checkpoint(spec: RunSpec, path: str) -> dict:
    """The child's ``inspect`` of one checkpoint (epoch, step, epochs_done, has_optimizer ...)."""
    import json

    return json.loads(child_helper(spec, "inspect", path).strip().splitlines()[-1])
