"""Concurrent launches of one run_dir, as separate processes through the real ``launch`` door and lock.

Each child passes preflight, then waits for a common start signal, so the jobs start together as
queued jobs that were checked at submission do (preflight cannot close that window; the job must).
The backend is a stand-in (the run-directory protocol is what is under test): it sleeps before and
after writing its checkpoint and log, then checks that run.yaml, state.json, its checkpoint and its
log are still the ones it owns, failing the job (exit 1) when anything was removed or altered.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_CHILD = r'''
import os, sys, time, types
sys.path.insert(0, {repo!r})
from launcher import backends
from launcher.core.atomic import atomic_write_bytes
from trainers.api import BackendBase


class Owner(BackendBase):
    name = "mace"

    def check(self, spec):
        return []

    def describe(self, ctx):
        return "owner backend"

    def run(self, ctx):
        lay, me = ctx.layout, str(os.getpid()).encode()
        run_yaml = lay.run_yaml.read_bytes()
        time.sleep(0.6)
        atomic_write_bytes(lay.checkpoint, me)
        lay.logs.mkdir(parents=True, exist_ok=True)
        lay.train_log.write_bytes(me)
        time.sleep(0.6)
        state = lay.read_state()
        intact = (lay.run_yaml.exists() and lay.run_yaml.read_bytes() == run_yaml and lay.lock.exists()
                  and state.get("pid") == os.getpid() and state.get("status") == "running"
                  and lay.checkpoint.read_bytes() == me and lay.train_log.read_bytes() == me)
        if not intact:
            raise RuntimeError("the live run's files were removed or altered")
        return {{"epochs_done": ctx.spec.train.epochs}}


mod = types.ModuleType("race_owner_backend")
mod.Owner = Owner
sys.modules["race_owner_backend"] = mod
backends.REGISTRY["mace"] = "race_owner_backend:Owner"
from launcher import preflight  # noqa: E402
from launcher.cli import main  # noqa: E402

checked = preflight.check_sweep
tag, go = sys.argv[1], sys.argv[2]


def check_then_wait(*args, **kwargs):
    """Preflight, then wait for the start signal: the jobs start together, as queued jobs do."""
    problems = checked(*args, **kwargs)
    open(tag + ".ready", "w").close()
    while not os.path.exists(go):
        time.sleep(0.005)
    return problems


preflight.check_sweep = check_then_wait
sys.argv = ["launch", *sys.argv[3:]]
main()
'''

VARIANTS = {
    "same": [],
    "same-again": [],
    "different": ["train.lr=0.02"],
    "overwrite": ["train.lr=0.03", "overwrite=true"],
    "overwrite-same": ["overwrite=true"],
    "resume": ["task=resume", "train.epochs=3"],
}


def _launch_all(tmp_path: Path, round_no: int, argv: list) -> dict:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    go = tmp_path / f"go-{round_no}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = {}
    for name, extra in VARIANTS.items():
        tag = tmp_path / f"{round_no}-{name}"
        procs[name] = (tag, subprocess.Popen([sys.executable, str(script), str(tag), str(go), *argv, *extra],
                                             cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 240
    try:
        while not all(Path(f"{tag}.ready").exists() or p.poll() is not None for tag, p in procs.values()):
            assert time.time() < deadline, "the launches did not pass preflight in time"
            time.sleep(0.02)
    except BaseException:
        for _, p in procs.values():
            p.kill()
        raise
    go.touch()
    out = {}
    for name, (_, p) in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        out[name] = (p.returncode, stdout, stderr)
    return out


def _assert_complete_run(root: Path) -> None:
    """A run directory with everything a finished run owns (nothing stripped)."""
    state = json.loads((root / "state.json").read_text())
    assert state["status"] == "finished", (root, state)
    assert (root / "run.yaml").is_file() and (root / "checkpoints" / "checkpoint.pt").read_bytes() \
        == str(state["pid"]).encode(), root
    assert (root / "logs" / "train.log").read_bytes() == str(state["pid"]).encode(), root


@pytest.mark.slow
def test_concurrent_launches_never_touch_what_a_live_run_owns(tmp_path, demo_data):
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0}))
    run_dir = tmp_path / "runs" / "r"
    argv = ["backend=mace", "task=train", f"run_dir={run_dir}", "device=cpu", "train.epochs=1",
            f"data.train={demo_data['train']}", f"data.val={demo_data['val']}", f"train.input_json={model_json}"]
    for round_no in range(4):
        if round_no == 2:       # the second half starts from nothing again
            import shutil

            shutil.rmtree(tmp_path / "runs")
        results = _launch_all(tmp_path, round_no, argv)
        for name, (code, _out, err) in results.items():
            assert code in (0, 2), (round_no, name, code, err)
            if code == 2:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error: "), (round_no, name, err)
        assert any(code == 0 for code, _, _ in results.values()), (round_no, results)
        _assert_complete_run(run_dir)
        for aside in (tmp_path / "runs").glob("r.replaced-*"):
            _assert_complete_run(aside)
        assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("r.replaced-")) \
            == ["r"], round_no
