"""Adding a backend, as docs/architecture.md describes it: the constant backend of tests/backends/mlip_constant
(a package with a ``BackendBase`` subclass and ``conf/backend/constant.yaml``) is registered for the
subprocesses by a temporary ``.dist-info/entry_points.txt`` on PYTHONPATH, and runs through both doors, a
``launch -m`` sweep and dry runs, writing the standard run layout. No file outside tests/ names it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BACKENDS = REPO / "tests" / "backends"
BIN = Path(sys.executable).parent
STANDARD = ["artifacts/best_model.pt", "artifacts/manifest.json", "checkpoints/checkpoint.pt", "logs/metrics.jsonl",
            "logs/train.log", "run.yaml", "state.json"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Path:
    """A folder holding only the entry point: ``constant = mlip_constant.backend:ConstantBackend``."""
    root = tmp_path_factory.mktemp("entry_point")
    dist = root / "mlip_constant-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlip-constant\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlip_launch.backends]\nconstant = mlip_constant.backend:ConstantBackend\n")
    return root


def _run(cmd, registered: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(registered), str(BACKENDS)])}
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def _per_atom(path) -> np.ndarray:
    from data.datasets import open_dataset
    from data.fastpickle import record_fields

    ds = open_dataset(path)
    recs = [record_fields(ds.get_bytes(i)) for i in range(len(ds))]
    return np.array([r["energy"] / r["natoms"] for r in recs])


def assert_standard_run(run_dir: Path, val: Path, epochs: int) -> float:
    """The standard layout, a finished state, a manifest naming the weights, and val losses that are the
    squared error of the fitted constant on the validation data. Returns the fitted constant."""
    from launcher.core.layout import sha256_file

    missing = [f for f in STANDARD if not (run_dir / f).is_file()]
    assert not missing, f"{run_dir}: missing {missing}"
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    manifest = json.loads((run_dir / "artifacts" / "manifest.json").read_text())
    assert manifest["backend"] == "constant"
    assert manifest["weights"]["sha256"] == sha256_file(run_dir / "artifacts" / "best_model.pt")
    e_best = json.loads((run_dir / "artifacts" / "best_model.pt").read_text())["energy_per_atom"]
    ck = json.loads((run_dir / "checkpoints" / "checkpoint.pt").read_text())
    assert ck["epoch"] == epochs
    vals = [r for r in map(json.loads, (run_dir / "logs" / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "val"]
    assert [r["epoch"] for r in vals] == list(range(1, epochs + 1))
    per_atom = _per_atom(val)
    assert vals[-1]["loss"] == pytest.approx(float(np.mean((per_atom - ck["e"]) ** 2)), rel=1e-6)   # float32 too
    assert manifest["metrics"]["loss"] == min(r["loss"] for r in vals)
    assert max(r["loss"] for r in vals) < float(np.mean(per_atom ** 2))   # better than the start, e = 0
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["backend"] == "constant"
    return e_best


def _args(demo_data, **keys) -> list:
    base = {"backend": "constant", "device": "cpu", "data.train": demo_data["train"], "data.val": demo_data["val"],
            "train.lr": 0.3, "train.epochs": 3}
    return [f"{k}={v}" for k, v in {**base, **keys}.items()]


def test_hydra_door_dry_run_refusals_and_run(registered, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    dry = _run(["launch", *_args(demo_data, run_dir=run_dir, dry_run="true")], registered, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "would execute: constant backend: fit the energy per atom" in dry.stdout and not run_dir.exists()

    for key, value, line in [("train.lr", 2, "error: train.lr: backend=constant diverges for lr >= 1, got 2.0"),
                             ("train.config_yml", "c.yml", "error: train.config_yml: "),
                             ("task", "evaluate", "task: backend=constant only trains")]:
        bad = _run(["launch", *_args(demo_data, run_dir=run_dir, **{key: value})], registered, tmp_path)
        assert bad.returncode == 2 and line in bad.stderr, bad.stderr[-2000:]
        assert not run_dir.exists()

    ok = _run(["launch", *_args(demo_data, run_dir=run_dir)], registered, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    e = assert_standard_run(run_dir, demo_data["val"], epochs=3)
    train = _per_atom(demo_data["train"])
    assert train.min() < e < train.max()


def test_plain_door_runs_and_dry_runs(registered, demo_data, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "backend": "constant", "task": "train", "device": "cpu",
        "data": {"train": str(demo_data["train"]), "val": str(demo_data["val"])}, "train": {"epochs": 2},
        "runs": [{"name": "a", "run_dir": "runs/a", "train.lr": 0.5},
                 {"name": "b", "run_dir": "runs/b", "train.lr": 0.1}],
    }))
    dry = _run(["launch-run", "--config", str(cfg), "--dry-run"], registered, tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.count("would execute: constant backend") == 2 and not (tmp_path / "runs").exists()
    ok = _run(["launch-run", "--config", str(cfg)], registered, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    fitted = {n: assert_standard_run(tmp_path / "runs" / n, demo_data["val"], epochs=2) for n in ("a", "b")}
    assert fitted["a"] != fitted["b"]                    # each run got its own lr


def test_a_sweep_runs_every_point(registered, demo_data, tmp_path):
    sweep = tmp_path / "sweep"
    res = _run(["launch", "-m", f"hydra.sweep.dir={sweep}", *_args(demo_data, seed="0,1")], registered, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for i in range(2):
        assert_standard_run(sweep / str(i), demo_data["val"], epochs=3)
    assert [yaml.safe_load((sweep / str(i) / "run.yaml").read_text())["seed"] for i in range(2)] == [0, 1]
