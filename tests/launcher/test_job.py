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


class RecordingBackend:
    name = "recording"
    fail = False

    def check(self, spec):
        return []

    def describe(self, ctx):
        return "recording backend"

    def run(self, ctx):
        if ctx.spec.task not in ("train", "resume"):
            raise unsupported_task(ctx.spec)
        CALLS.append(("train", ctx.resume, ctx.attempt))
        if RecordingBackend.fail:
            raise RuntimeError("boom")
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
