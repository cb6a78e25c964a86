"""Two processes over gloo (torchrun): one run, rank 0 writes, the data split across ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, make_spec

pytestmark = pytest.mark.slow


def test_two_process_gloo_run(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout
    from launcher.core.specio import dump_run_yaml

    run_dir = tmp_path / "ddp"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "batch_size": 4})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_run_yaml(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "launcher.worker", str(spec_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lay = RunLayout.of(run_dir)
    assert json.loads(lay.state_json.read_text())["status"] == "finished"
    log = lay.train_log.read_text()
    assert "world=2" in log and "updates/epoch=3" in log        # 24 structures / 2 ranks / batch 4
    val = [r for r in read_jsonl(lay.metrics_jsonl) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    ck = torch.load(lay.checkpoint, weights_only=True)
    assert ck["loop"]["update_step"] == 6
    assert (lay.artifacts / "best_model.model").is_file()
    assert len(list(lay.tensorboard.glob("events.out.tfevents.*"))) == 1     # rank 0 alone writes events
    assert lay.curves_png.read_bytes()[:4] == b"\x89PNG"
