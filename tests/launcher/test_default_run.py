"""The README's main command: `launch` with the embedded default, end to end in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(args, tmp_path, **env):
    e = {**os.environ, "MLIP_LAUNCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-c", "from launcher.cli import main; main()", *args],
                          cwd=tmp_path, env=e, capture_output=True, text=True, timeout=900)


def test_embedded_default_trains_and_relaunch_skips(tmp_path):
    run_dir = tmp_path / "run"
    r = _run([f"run_dir={run_dir}", "train.epochs=1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # demo data generated on first use into the cache
    assert sorted(p.name for p in (tmp_path / "cache").glob("demo-*/*.lmdb")) == ["test.lmdb", "train.lmdb", "val.lmdb"]
    for rel in ("run.yaml", "artifacts/best_model.pt", "artifacts/manifest.json", "checkpoints/checkpoint.pt",
                "logs/metrics.jsonl"):
        assert (run_dir / rel).is_file(), rel
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished"
    manifest = json.loads((run_dir / "artifacts" / "manifest.json").read_text())
    assert manifest["backend"] == "mace"
    # the resolved run.yaml re-runs as is through the plain door: same spec, finished -> skipped
    r2 = subprocess.run([sys.executable, "-m", "launcher.run", "--config", str(run_dir / "run.yaml")],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env={**os.environ, "MLIP_LAUNCH_CACHE": str(tmp_path / "cache")})
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "already finished, skipping" in r2.stdout
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
