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
    # 21 of the 24 structures, shuffled: an odd selection whose indices differ from their positions
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "batch_size": 4},
                     data={"train_indices": {"max_samples": 21, "shuffle": True}})
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
    assert "world=2" in log and "updates/epoch=3" in log        # 20 of 21 structures / 2 ranks / batch 4
    val = [r for r in read_jsonl(lay.metrics_jsonl) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    ck = torch.load(lay.checkpoint, weights_only=True)
    assert ck["loop"]["update_step"] == 6
    assert (lay.artifacts / "best_model.model").is_file()
    assert len(list(lay.tensorboard.glob("events.out.tfevents.*"))) == 1     # rank 0 alone writes events
    assert lay.curves_png.read_bytes()[:4] == b"\x89PNG"
    _assert_shares(lay, spec.effective_seed, world=2, epochs=2)


def _assert_shares(lay, seed: int, world: int, epochs: int) -> None:
    """logs/shares.jsonl: per epoch, one record per rank; the shares are disjoint, cover the epoch's selection
    but its remainder, and are rank r's documented slice r, r+N, r+2N ... of the epoch's shuffled order."""
    import numpy as np

    from launcher.core.atomic import read_jsonl
    from trainers.mace.order import epoch_order

    selected = np.asarray(json.loads(lay.indices_json().read_text())["train"])
    assert len(selected) == 21 and not np.array_equal(np.sort(selected), np.arange(21))
    records = read_jsonl(lay.logs / "shares.jsonl")
    assert sorted((r["epoch"], r["rank"]) for r in records) == [(e, r) for e in range(1, epochs + 1)
                                                                 for r in range(world)]
    keep = len(selected) // world * world
    for epoch in range(1, epochs + 1):
        shares = {r["rank"]: r["indices"] for r in records if r["epoch"] == epoch}
        assert all(r["world"] == world and r["n"] == keep // world for r in records if r["epoch"] == epoch)
        sets = [set(shares[r]) for r in range(world)]
        assert all(len(s) == keep // world for s in sets), "a rank reads an index twice in one epoch"
        assert not set.intersection(*sets), f"epoch {epoch}: ranks read the same structures"
        ordered = selected[epoch_order(seed, epoch - 1, len(selected))]
        assert set.union(*sets) == set(ordered[:keep].tolist()) and set(ordered[keep:].tolist()).isdisjoint(
            set.union(*sets))
        for r in range(world):
            assert shares[r] == ordered[:keep][r::world].tolist(), f"epoch {epoch}: rank {r} is not its slice"
    e1 = [r["indices"] for r in records if r["epoch"] == 1 and r["rank"] == 0]
    e2 = [r["indices"] for r in records if r["epoch"] == 2 and r["rank"] == 0]
    assert e1 != e2, "every epoch reshuffles"
