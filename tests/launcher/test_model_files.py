"""launcher.model_files: which pickled files a spec leads to, checked against the backend's allow-list."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from launcher.model_files import check_files, model_file_problems, model_files


def _pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def test_a_run_directory_brings_its_checkpoint_and_its_manifests_weights(tmp_path):
    theirs = RunLayout.of(tmp_path / "theirs")
    _pickle(theirs.checkpoint, {})
    _pickle(theirs.best_model, {})
    theirs.manifest.write_text(json.dumps({"backend": "mace", "weights": {"path": "best_model.pt"}}))
    spec = RunSpec(model_in=str(theirs.root))
    assert model_files(spec) == [("model_in", theirs.checkpoint), ("model_in", theirs.best_model)]
    other = _pickle(tmp_path / "w.pt", {})
    spec = RunSpec()
    spec.model.manifest, spec.model.weights = str(theirs.manifest), str(other)
    assert model_files(spec) == [("model.weights", other)]     # model.weights replaces the manifest's


def test_every_file_naming_an_unlisted_global_is_one_problem(tmp_path):
    bad = _pickle(tmp_path / "bad.pt", [os.system])
    good = _pickle(tmp_path / "good.pt", {"a": 1})
    problems = check_files([("model_in", bad), ("model.weights", good)], allowed=[])
    assert len(problems) == 1 and problems[0].startswith(f"model_in: {bad} refers to {os.system.__module__}.system")
    spec = RunSpec(backend="mace", task="evaluate", model_in=str(bad))
    assert model_file_problems(spec) == problems
    spec.data.trust_pickles = True
    assert model_file_problems(spec) == []


def test_a_resume_checks_the_checkpoint_it_starts_from(tmp_path):
    mine = RunLayout.of(tmp_path / "run")
    bad = _pickle(mine.checkpoint, [os.system])
    spec = RunSpec(backend="mace", task="resume", run_dir=str(mine.root))
    assert model_files(spec) == [("run_dir", bad)] and model_files(spec, own=False) == []
    problems = model_file_problems(spec)
    assert len(problems) == 1 and problems[0].startswith(f"run_dir: {bad} refers to ")
    spec.task = "train"
    assert model_files(spec) == []
