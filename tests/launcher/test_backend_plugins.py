"""Backends are plug-ins: one package, its conf file and one entry point, and nothing else changes.

A small backend is written into a temporary folder as its own installed package (an entry point in
``mlip_launch.backends`` through a ``.dist-info``, and ``conf/backend/fake.yaml`` beside its module).
With that folder on PYTHONPATH, ``backend=fake`` validates, dry-runs and runs through both doors and
through the inprocess and local launchers, while no file of this project is touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

FAKE_BACKEND = '''
"""A backend that trains nothing: it writes the standard artifacts from launcher.core alone."""
from launcher.core.atomic import atomic_write_bytes, atomic_write_text
from launcher.core.layout import write_manifest
from trainers.api import BackendBase


class FakeBackend(BackendBase):
    name = "fake"

    def check(self, spec):
        problems = []
        if spec.train.lr > 1:
            problems.append(f"train.lr: backend=fake takes lr <= 1, got {spec.train.lr}")
        if spec.train.input_json:
            problems.append("train.input_json: not used by backend=fake")
        return problems

    def describe(self, ctx):
        return f"fake backend: {ctx.spec.task} for {ctx.spec.train.epochs} epochs -> {ctx.layout.root}"

    def run(self, ctx):
        layout = ctx.layout
        layout.create()
        atomic_write_bytes(layout.best_model, b"fake weights %d" % ctx.spec.effective_seed)
        atomic_write_bytes(layout.checkpoint, b"fake checkpoint")
        atomic_write_text(layout.train_log, f"fake {ctx.spec.task} lr={ctx.spec.train.lr}\\n")
        write_manifest(layout, backend=ctx.spec.backend, weights=layout.best_model, model_config={"kind": "fake"},
                       versions={}, metrics={"loss": ctx.spec.train.lr})
        return {"epochs_done": ctx.spec.train.epochs}
'''

FAKE_CONF = """# @package _global_
# the fake test backend: no model file of its own
backend: fake
train:
  input_json: null
  config_yml: null
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "mlip_fake_backend"
    (pkg / "conf" / "backend").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "backend.py").write_text(FAKE_BACKEND)
    (pkg / "conf" / "backend" / "fake.yaml").write_text(FAKE_CONF)
    dist = root / "mlip_fake_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlip-fake-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlip_launch.backends]\nfake = mlip_fake_backend.backend:FakeBackend\n")
    return root


def _project_state() -> str:
    """Every file git sees in the checkout, with its content hash: what 'untouched' is compared on."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                         text=True)
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True)
    return out.stdout + tracked.stdout


def _run(cmd, plugin_dir: Path, cwd: Path, *, with_plugin: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if with_plugin:
        env["PYTHONPATH"] = str(plugin_dir)
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _common(demo_data) -> list:
    return ["backend=fake", "device=cpu", f"data.train={demo_data['train']}", f"data.val={demo_data['val']}"]


@pytest.fixture(scope="module")
def before() -> str:
    return _project_state()


def test_hydra_door_validates_dry_runs_and_runs_in_process(plugin_dir, demo_data, tmp_path, before):
    run_dir = tmp_path / "run"
    dry = _run(["launch", *_common(demo_data), f"run_dir={run_dir}", "dry_run=true"], plugin_dir, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "would execute: fake backend: train for" in dry.stdout
    assert not (run_dir / "run.yaml").exists()

    bad = _run(["launch", *_common(demo_data), f"run_dir={run_dir}", "train.lr=5"], plugin_dir, tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: train.lr: backend=fake takes lr <= 1, got 5.0"

    ok = _run(["launch", *_common(demo_data), f"run_dir={run_dir}", "train.lr=0.25"], plugin_dir, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    manifest = json.loads((run_dir / "artifacts" / "manifest.json").read_text())
    assert manifest["backend"] == "fake" and manifest["metrics"] == {"loss": 0.25}
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    assert (run_dir / "checkpoints" / "checkpoint.pt").read_bytes() == b"fake checkpoint"
    assert "backend: fake" in (run_dir / "run.yaml").read_text()
    assert _project_state() == before


def test_help_lists_the_plugin_backend(plugin_dir, tmp_path):
    out = _run(["launch", "--help"], plugin_dir, tmp_path)
    assert out.returncode == 0
    assert "backend: equiformer_v2, fake, gemnet_oc, mace" in out.stdout


def test_local_launcher_runs_a_sweep_of_the_plugin_backend(plugin_dir, demo_data, tmp_path, before):
    sweep = tmp_path / "sweep"
    res = _run(["launch", "-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *_common(demo_data),
                "seed=0,1"], plugin_dir, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "submitted 2 run(s) to local" in res.stdout
    for i in range(2):
        assert (sweep / str(i) / "artifacts" / "best_model.pt").read_bytes() == b"fake weights %d" % i
        assert json.loads((sweep / str(i) / "state.json").read_text())["status"] == "finished"
    assert _project_state() == before


def test_plain_door_dry_runs_and_runs_the_plugin_backend(plugin_dir, demo_data, tmp_path, before):
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "backend": "fake", "task": "train", "device": "cpu",
        "data": {"train": str(demo_data["train"]), "val": str(demo_data["val"])},
        "runs": [{"name": "a", "run_dir": "runs/a", "train.lr": 0.5},
                 {"name": "b", "run_dir": "runs/b", "train.lr": 0.125}],
    }))
    dry = _run(["launch-run", "--config", str(cfg), "--dry-run"], plugin_dir, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.count("would execute: fake backend: train") == 2
    assert not (tmp_path / "runs").exists()

    ok = _run(["launch-run", "--config", str(cfg)], plugin_dir, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    for name, lr in (("a", 0.5), ("b", 0.125)):
        manifest = json.loads((tmp_path / "runs" / name / "artifacts" / "manifest.json").read_text())
        assert manifest["metrics"] == {"loss": lr}

    bad = _run(["launch-run", "--config", str(cfg), "--set", "train.input_json=/m.json"], plugin_dir, tmp_path)
    assert bad.returncode == 2
    assert "train.input_json: not used by backend=fake" in bad.stderr
    assert _project_state() == before


def test_without_its_entry_point_the_backend_is_refused(plugin_dir, demo_data, tmp_path):
    res = _run(["launch", *_common(demo_data), f"run_dir={tmp_path / 'run'}", "dry_run=true"], plugin_dir, tmp_path,
               with_plugin=False)
    assert res.returncode == 2
    assert res.stderr.startswith("error: backend: no option 'fake'")
    assert not (tmp_path / "run" / "run.yaml").exists()


@pytest.mark.parametrize("group", ["mlip_launch.backends", "console_scripts", "hydra.plugins"])
def test_registry_scan_reads_what_importlib_metadata_reads(group):
    """The start-up scan of entry_points.txt files finds exactly what importlib.metadata finds."""
    from importlib.metadata import entry_points

    from launcher.core.plugins import _scan_entry_points

    assert sorted(set(_scan_entry_points(group))) == sorted({(e.name, e.value) for e in entry_points(group=group)})
