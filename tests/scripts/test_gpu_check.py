"""scripts/gpu_check --cpu: the GPU node's sequence (ours e3nn / accelerated kernels / amp, mace_run_train,
evaluation, one table) at tiny sizes on CPU, so the script cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_runs_the_sequence_and_writes_the_table(tmp_path):
    out = tmp_path / "gc"
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check"), "--cpu", "--out", str(out),
                        "--budget", "1500"], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert table in p.stdout
    res = json.loads((out / "gpu_check.json").read_text())["results"]
    ours, theirs = res["ours e3nn fp32"], res["mace_run_train e3nn fp32"]
    for r in (ours, theirs):
        assert r["step_s"] > 0 and r["eval"]["force_rmse"] > 0 and r["eval"]["energy_rmse_per_atom"] >= 0
    assert ours["kernels"].startswith("e3nn")
    # amp rows are left out on a CPU (no autocast there), and the table says why
    assert "CUDA-only" in res["ours e3nn bf16 amp"]["skipped"]
    try:
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        assert "not installed" in res["ours cueq fp32"]["skipped"]
    else:   # the reference path on CPU: trained, and its model (stored in e3nn form) evaluated
        assert res["ours cueq fp32"]["kernels"].startswith("cueq") and res["ours cueq fp32"]["eval"]["force_rmse"] > 0
    assert "| ours e3nn fp32 |" in table and "| mace_run_train e3nn fp32 | " in table
