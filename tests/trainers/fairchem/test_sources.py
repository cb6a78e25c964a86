"""Where a FairChem run's model and config come from, resolved once per task (trainers/fairchem/sources.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from trainers.fairchem import checkpoints as ck
from trainers.api import JobContext
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.plan import PlanRequest, make_plan
from trainers.fairchem.sources import ModelSources

from .conftest import SHARED

V1_BUNDLES = SHARED / "spec" / "origin-files" / "models"


@pytest.fixture(autouse=True)
def _any_interpreter(monkeypatch):
    """check() here is about the model's files; the interpreter check has its own tests (test_command)."""
    import trainers.fairchem.env as env

    monkeypatch.setattr(env, "check_python", lambda python, backend_env=None: python)


def test_the_manifest_is_read_once_per_preflight_dry_run_and_plan(shared_dir, demo_data, tmp_path, monkeypatch):
    """Where the model and its config come from is resolved once per task: the manifest is read once however
    many steps (model kind, source, saved config, plan) ask for it."""
    import launcher.core.layout as layout_module

    reads = []
    read = layout_module.read_manifest
    monkeypatch.setattr(layout_module, "read_manifest", lambda path: reads.append(path) or read(path))
    spec = RunSpec(backend="equiformer_v2", task="finetune", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=sys.executable)
    spec.model.manifest = str(V1_BUNDLES / "equiformer_v2_oc22" / "manifest_bundle" / "manifest.json")
    spec.model.weights = str(tmp_path / "best_model.pt")
    Path(spec.model.weights).write_bytes(b"")
    spec.data.train, spec.data.val = str(demo_data["train"]), str(demo_data["val"])
    assert FairchemBackend().check(spec) and len(reads) == 1
    text = FairchemBackend().describe(JobContext(spec=spec, layout=RunLayout.of(spec.run_dir)))
    assert "--mode train" in text.splitlines()[0] and len(reads) == 2
    sources = ModelSources(spec, RunLayout.of(spec.run_dir))
    source = sources.model_source()
    plan = make_plan(PlanRequest(spec, RunLayout.of(spec.run_dir), mode="train", data={"train": spec.data.train},
                                 checkpoint=source, n_train=8, sources=sources))
    assert len(reads) == 3 and plan.max_epochs == plan.config["optim"]["max_epochs"]
    assert plan.dataset_sources == [spec.data.train]


def test_model_in_a_run_dir_means_its_fairchem_checkpoint(tmp_path):
    """model_in naming a run directory of ours: its artifacts/fairchem_checkpoint.pt, else its checkpoint; a
    directory holding neither is refused naming the key."""
    run = RunLayout.of(tmp_path / "done")
    spec = RunSpec(backend="gemnet_oc", task="evaluate", run_dir=str(tmp_path / "new"), model_in=str(run.root))
    run.checkpoint.parent.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"^model_in: .* holds no FairChem checkpoint"):
        ModelSources(spec, RunLayout.of(spec.run_dir)).model_source()
    run.checkpoint.write_bytes(b"x")
    assert ModelSources(spec, RunLayout.of(spec.run_dir)).model_source() == str(run.checkpoint)
    run.artifact(ck.NATIVE_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    run.artifact(ck.NATIVE_CHECKPOINT).write_bytes(b"x")
    assert ModelSources(spec, RunLayout.of(spec.run_dir)).model_source() == str(run.artifact(ck.NATIVE_CHECKPOINT))
