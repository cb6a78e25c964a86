"""The run-directory state machine of launcher.job, driven through a minimal test backend.

The test backend only records what the state machine asked of it; the real backends are proven
by their own end-to-end tests.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import backends
from launcher.core.errors import ConfigError, NotImplementedBackend
from launcher.job import FRESH, RESUME, SKIP, classify, run_job, state_problem
from launcher.core.layout import RunLayout
from launcher.core.schema import spec_from_dict
from trainers.api import Backend, unsupported_task

CALLS: list = []


class RecordingBackend(Backend):
    name = "recording"
    fail = False
    preempt = None     # None, or "saved" / "unsaved": raise Preempted after writing a checkpoint or not
    refuse_at_start = None          # a message: raise ConfigError (an input problem found at start)
    write_checkpoint_first = False  # ... after writing a checkpoint

    def check(self, spec):
        return []

    def describe(self, ctx):
        return "recording backend"

    def run(self, ctx):
        if RecordingBackend.refuse_at_start and ctx.spec.task == "evaluate":
            raise ConfigError(RecordingBackend.refuse_at_start)
        if ctx.spec.task not in ("train", "resume"):
            raise unsupported_task(ctx.spec)
        CALLS.append(("train", ctx.resume, ctx.attempt))
        RecordingBackend.extra = dict(ctx.extra)
        if RecordingBackend.refuse_at_start:
            if RecordingBackend.write_checkpoint_first:
                from launcher.core.atomic import atomic_write_bytes

                atomic_write_bytes(ctx.layout.checkpoint, b"state")
            raise ConfigError(RecordingBackend.refuse_at_start)
        if RecordingBackend.fail:
            raise RuntimeError("boom")
        if RecordingBackend.preempt:
            from launcher.core.atomic import atomic_write_bytes
            from launcher.core.preemption import Preempted

            if RecordingBackend.preempt == "saved":
                atomic_write_bytes(ctx.layout.checkpoint, b"state")
            raise Preempted()
        return {"epochs_done": ctx.spec.train.epochs}


def test_recording_backend_meets_the_interface():
    assert isinstance(RecordingBackend(), Backend)


@pytest.fixture(autouse=True)
def recording_backend(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("tests_recording_backend")
    mod.RecordingBackend = RecordingBackend
    monkeypatch.setitem(sys.modules, "tests_recording_backend", mod)
    monkeypatch.setitem(backends.REGISTRY, "mace", "tests_recording_backend:RecordingBackend")
    CALLS.clear()
    RecordingBackend.fail = False
    RecordingBackend.preempt = None
    RecordingBackend.refuse_at_start = None
    RecordingBackend.write_checkpoint_first = False


def _spec(run_dir: Path, **train):
    return spec_from_dict({"backend": "mace", "task": "train", "run_dir": str(run_dir), "device": "cpu",
                           "data": {"train": "/d.lmdb"}, "train": {"input_json": "/m.json", **train}})


def test_fresh_then_skip_when_finished(tmp_path):
    spec = _spec(tmp_path / "r")
    assert classify(spec, RunLayout.of(spec.run_dir)) == FRESH
    res = run_job(spec, echo=lambda *_: None)
    assert res.status == "finished" and CALLS == [("train", False, 1)]
    layout = RunLayout.of(spec.run_dir)
    assert layout.run_yaml.exists() and layout.artifacts.is_dir() and layout.checkpoints.is_dir()
    assert json.loads(layout.state_json.read_text())["status"] == "finished"
    assert classify(spec, layout) == SKIP
    assert run_job(spec, echo=lambda *_: None).status == "skipped"
    assert len(CALLS) == 1


def test_unfinished_same_spec_resumes(tmp_path):
    spec = _spec(tmp_path / "r")
    RecordingBackend.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        run_job(spec, echo=lambda *_: None)
    layout = RunLayout.of(spec.run_dir)
    assert json.loads(layout.state_json.read_text())["status"] == "failed"
    assert classify(spec, layout) == RESUME
    RecordingBackend.fail = False
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    assert CALLS[-1] == ("train", True, 2)


def test_resume_task_with_more_epochs_continues_a_finished_run(tmp_path):
    spec = _spec(tmp_path / "r", epochs=2)
    run_job(spec, echo=lambda *_: None)
    longer = _spec(tmp_path / "r", epochs=4)
    longer.task = "resume"
    assert classify(longer, RunLayout.of(longer.run_dir)) == RESUME


def test_different_spec_refused_then_overwrite_moves_old_run_aside(tmp_path):
    run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None)
    other = _spec(tmp_path / "r", lr=0.001)
    assert "holds a different run" in state_problem(other)
    before = (tmp_path / "r" / "run.yaml").read_text()
    with pytest.raises(ConfigError, match="run_dir"):
        run_job(other, echo=lambda *_: None)
    assert (tmp_path / "r" / "run.yaml").read_text() == before  # untouched
    other.overwrite = True
    assert run_job(other, echo=lambda *_: None).status == "finished"
    moved = list(tmp_path.glob("r.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "run.yaml").read_text() == before


def test_a_state_carried_from_preflight_is_checked_again_under_the_lock(tmp_path):
    """The door passes preflight's verdict on the run_dir to a single run's job; it spares a second read before the
    lock, but a run_dir that changed since (here: another spec finished there) is still refused under the lock."""
    run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None)
    before = (tmp_path / "r" / "run.yaml").read_text()
    with pytest.raises(ConfigError, match="holds a different run"):
        run_job(_spec(tmp_path / "r", lr=0.001), echo=lambda *_: None, state=FRESH)
    assert (tmp_path / "r" / "run.yaml").read_text() == before and len(CALLS) == 1
    assert run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None, state=SKIP).status == "skipped"
    assert len(CALLS) == 1


@pytest.mark.parametrize("given", ["3", None])
def test_the_thread_count_reaches_the_backend_as_a_value(tmp_path, monkeypatch, given):
    from launcher.core.env import cpu_count

    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    run_job(_spec(tmp_path / "r"), echo=lambda *_: None)
    want = int(given) if given else cpu_count()
    assert RecordingBackend.extra["threads"] == want
    import os

    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(want)  # for OpenMP and children


def test_foreign_directory_refused(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "thesis.tex").write_text("precious")
    spec = _spec(tmp_path / "r")
    assert "not an mlip-launch run" in state_problem(spec)
    with pytest.raises(ConfigError):
        run_job(spec, echo=lambda *_: None)
    assert (tmp_path / "r" / "thesis.tex").read_text() == "precious"


def test_run_yaml_written_is_absolute_and_reloads_equal(tmp_path):
    from launcher.core.specio import load_run_yaml_spec

    spec = _spec(tmp_path / "r")
    run_job(spec, echo=lambda *_: None)
    assert load_run_yaml_spec(tmp_path / "r" / "run.yaml") == spec


def test_backend_not_built_yet_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(backends.REGISTRY, "mace", "trainers.no_such_backend:Nope")
    with pytest.raises(NotImplementedBackend, match="not implemented yet"):
        backends.get_backend("mace")


def test_task_not_built_yet_is_a_clear_error(tmp_path):
    spec = _spec(tmp_path / "r")
    spec.task = "export"
    spec.model_in = "/m.pt"
    with pytest.raises(NotImplementedBackend, match="task=export is not implemented yet"):
        run_job(spec, echo=lambda *_: None)


def test_run_files_are_readable_by_the_group_like_plain_files(tmp_path):
    import os
    import stat

    run_job(_spec(tmp_path / "r"), echo=lambda *_: None)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("run.yaml", "state.json"):
        mode = stat.S_IMODE((tmp_path / "r" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_run_files_never_change_the_umask(tmp_path, monkeypatch):
    import os

    def no_umask(*_):
        raise AssertionError("os.umask called: it changes the mask of every thread for a moment")

    monkeypatch.setattr(os, "umask", no_umask)
    assert run_job(_spec(tmp_path / "r"), echo=lambda *_: None).status == "finished"


def test_overwrite_is_refused_while_another_job_holds_the_run_dir(tmp_path):
    import fcntl

    run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None)
    before = (tmp_path / "r" / "run.yaml").read_text()
    other = _spec(tmp_path / "r", lr=0.001)
    other.overwrite = True
    with open(tmp_path / "r" / ".lock", "a+") as held:      # what a live job holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="in use by another running job"):
            run_job(other, echo=lambda *_: None)
    assert not list(tmp_path.glob("r.replaced-*"))
    assert (tmp_path / "r" / "run.yaml").read_text() == before


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_killed_job_is_interrupted_and_resumed(tmp_path):
    import os
    import socket

    from launcher.job import describe_state

    spec = _spec(tmp_path / "r")
    run_job(spec, echo=lambda *_: None)
    layout = RunLayout.of(spec.run_dir)
    layout.write_state(status="running", pid=os.getpid(), host=socket.gethostname())
    assert layout.status() == "running"
    assert "in use by a running job" in state_problem(spec)
    layout.write_state(status="running", pid=_dead_pid(), host=socket.gethostname())
    assert layout.status() == "interrupted"
    assert state_problem(spec) is None and "interrupted run" in describe_state(spec, layout)
    (layout.checkpoints / ".checkpoint.pt.k9x2.tmp").write_bytes(b"half a checkpoint")
    said = []
    assert run_job(spec, echo=said.append).status == "finished"
    assert any("resuming an interrupted run" in m for m in said), said
    assert any("removed 1 unfinished temp file" in m for m in said), said
    assert not list(layout.checkpoints.glob("*.tmp"))
    assert CALLS[-1] == ("train", True, 2)


def test_a_run_that_failed_before_training_does_not_hold_its_run_dir(tmp_path):
    RecordingBackend.fail = True
    with pytest.raises(RuntimeError):
        run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None)
    RecordingBackend.fail = False
    corrected = _spec(tmp_path / "r", lr=0.001)          # no overwrite needed: nothing was trained
    assert state_problem(corrected) is None
    assert run_job(corrected, echo=lambda *_: None).status == "finished"
    assert CALLS[-1] == ("train", False, 1) and not list(tmp_path.glob("r.replaced-*"))


@pytest.mark.parametrize("saved", [True, False])
def test_preempted_says_checkpoint_saved_only_when_one_was(tmp_path, saved):
    RecordingBackend.preempt = "saved" if saved else "unsaved"
    said = []
    res = run_job(_spec(tmp_path / "r"), echo=said.append)
    assert res.status == "preempted"
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["status"] == "preempted" and state["checkpoint_saved"] is saved
    assert ("checkpoint saved" in said[-1]) is saved, said


def test_a_start_refused_on_input_leaves_a_fresh_run_dir_as_it_was(tmp_path):
    """A ConfigError raised when the job starts (exit 2) must not leave run.yaml / state.json "failed"
    behind in a run_dir it found fresh: the corrected command would be refused as 'a different run'.
    The job undoes it itself, under the lock; a run that wrote a checkpoint is kept."""
    RecordingBackend.refuse_at_start = "data.train: found bad only at start"
    try:
        absent = _spec(tmp_path / "new" / "deeper" / "run")
        with pytest.raises(ConfigError, match="found bad only at start"):
            run_job(absent, echo=lambda *_: None)
        assert not (tmp_path / "new").exists()

        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(ConfigError):
            run_job(_spec(empty), echo=lambda *_: None)
        assert empty.is_dir() and not any(empty.iterdir())

        RecordingBackend.preempt = None
        RecordingBackend.write_checkpoint_first = True
        with pytest.raises(ConfigError):
            run_job(_spec(tmp_path / "trained"), echo=lambda *_: None)
        assert RunLayout.of(tmp_path / "trained").checkpoint.exists()
    finally:
        RecordingBackend.refuse_at_start = None
        RecordingBackend.write_checkpoint_first = False


def test_a_start_refused_on_input_keeps_a_run_dir_that_held_a_run(tmp_path):
    spec = _spec(tmp_path / "r")
    RecordingBackend.fail = True
    with pytest.raises(RuntimeError):
        run_job(spec, echo=lambda *_: None)          # a failed run: its run.yaml and state.json stay
    RecordingBackend.fail = False
    RecordingBackend.refuse_at_start = "data.train: bad"
    try:
        with pytest.raises(ConfigError):
            run_job(spec, echo=lambda *_: None)
    finally:
        RecordingBackend.refuse_at_start = None
    assert (tmp_path / "r" / "run.yaml").exists() and (tmp_path / "r" / ".lock").exists()


@pytest.mark.parametrize("key", ["data.train", "train.input_json", "model_in", "data.indices_path", "manifest"])
def test_overwrite_refuses_a_run_dir_holding_the_runs_own_inputs(tmp_path, key):
    """overwrite=true would move run_dir aside, inputs included: refused up front, nothing moved."""
    run_dir = tmp_path / "r"
    run_job(_spec(run_dir, lr=0.01), echo=lambda *_: None)
    inputs = run_dir / "inputs"
    inputs.mkdir()
    (inputs / "data.lmdb").write_bytes(b"x")
    (inputs / "model.json").write_text("{}")
    (inputs / "weights.pt").write_bytes(b"w")
    (inputs / "idx.txt").write_text("0\n")
    manifest = tmp_path / "manifest.json"     # outside run_dir, naming weights inside it
    manifest.write_text(json.dumps({"backend": "mace", "weights": {"path": str(inputs / "weights.pt")}}))
    over = {"data.train": {"data": {"train": str(inputs / "data.lmdb")}},
            "train.input_json": {"train": {"input_json": str(inputs / "model.json"), "lr": 0.02}},
            "model_in": {"task": "finetune", "model_in": str(inputs / "weights.pt")},
            "data.indices_path": {"data": {"train": "/d.lmdb", "indices_path": str(inputs / "idx.txt")}},
            "manifest": {"task": "finetune", "model": {"manifest": str(manifest)}}}[key]
    base = {"backend": "mace", "task": "train", "run_dir": str(run_dir), "device": "cpu", "overwrite": True,
            "data": {"train": "/d.lmdb"}, "train": {"input_json": "/m.json", "lr": 0.05}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    spec = spec_from_dict(base)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    problem = state_problem(spec)
    named = "model.manifest" if key == "manifest" else key
    assert problem and problem.startswith(f"{named}: ") and "overwrite=true" in problem, problem
    with pytest.raises(ConfigError) as e:
        run_job(spec, echo=lambda *_: None)
    assert str(e.value) == problem
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert not list(tmp_path.glob("r.replaced-*"))


def test_overwrite_still_moves_a_run_dir_whose_inputs_live_elsewhere(tmp_path):
    run_job(_spec(tmp_path / "r", lr=0.01), echo=lambda *_: None)
    data = tmp_path / "d.lmdb"
    data.write_bytes(b"x")
    spec = spec_from_dict({"backend": "mace", "task": "train", "run_dir": str(tmp_path / "r"), "device": "cpu",
                           "overwrite": True, "data": {"train": str(data)}, "train": {"input_json": "/m.json"}})
    assert state_problem(spec) is None
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    assert len(list(tmp_path.glob("r.replaced-*"))) == 1


@pytest.mark.parametrize("dry", [True, False])
def test_overwrite_with_inputs_in_run_dir_is_refused_by_the_door_the_same_dry_or_not(launch, demo_data, model_json,
                                                                                      tmp_path, dry):
    import shutil

    from launcher.core.specio import dump_run_yaml

    run_dir = tmp_path / "r"
    (run_dir / "data").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(demo_data[split], run_dir / "data" / f"{split}.lmdb")
    old = _spec(run_dir, lr=0.5)
    (run_dir / "run.yaml").write_text(dump_run_yaml(old))
    RunLayout.of(run_dir).write_state(status="finished", epochs_done=1)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, _out, err = launch("backend=mace", "task=train", f"run_dir={run_dir}", "device=cpu", "overwrite=true",
                             f"data.train={run_dir / 'data' / 'train.lmdb'}", f"data.val={run_dir / 'data' / 'val.lmdb'}",
                             f"train.input_json={model_json}", f"dry_run={str(dry).lower()}")
    assert code == 2, err
    assert err.strip() == (f"error: data.train: {run_dir / 'data' / 'train.lmdb'} is inside run_dir {run_dir} "
                           "(and data.val), which overwrite=true would move aside; move the input out of run_dir, "
                           "or choose another run_dir")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert not list(tmp_path.glob("r.replaced-*")) and CALLS == []


def test_an_evaluate_refused_at_start_leaves_a_finished_run_as_it_was(tmp_path):
    run_dir = tmp_path / "r"
    run_job(_spec(run_dir), echo=lambda *_: None)
    earlier = b"task: evaluate\n# the record of an earlier evaluate\n"
    (run_dir / "run.evaluate.yaml").write_bytes(earlier)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    RecordingBackend.refuse_at_start = "data.test: bad"
    ev = spec_from_dict({"backend": "mace", "task": "evaluate", "run_dir": str(run_dir), "device": "cpu",
                         "model_in": str(run_dir), "data": {"test": "/d.lmdb"}})
    with pytest.raises(ConfigError, match="data.test: bad"):
        run_job(ev, echo=lambda *_: None)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
