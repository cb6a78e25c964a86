"""Two processes over gloo (torchrun): one run, rank 0 writes, the data split across ranks."""
from __future__ import annotations

import json

import pytest

from .conftest import make_spec, run_two_ranks

pytestmark = pytest.mark.slow


def test_two_process_gloo_run(tiny_data, tiny_model_json, tmp_path):
    import torch

    from launcher.core.atomic import read_jsonl
    from launcher.core.layout import RunLayout

    run_dir = tmp_path / "ddp"
    # 21 of the 24 structures, shuffled: an odd selection whose indices differ from their positions
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "batch_size": 4},
                     data={"train_indices": {"max_samples": 21, "shuffle": True}})
    run_two_ranks(spec, tmp_path, timeout=600)
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
    import hashlib

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
        for rec in (x for x in records if x["epoch"] == epoch):   # the digest stands for the list where it is left out
            assert rec["sha256"] == hashlib.sha256(np.asarray(rec["indices"], dtype=np.int64).tobytes()).hexdigest()
    e1 = [r["indices"] for r in records if r["epoch"] == 1 and r["rank"] == 0]
    e2 = [r["indices"] for r in records if r["epoch"] == 2 and r["rank"] == 0]
    assert e1 != e2, "every epoch reshuffles"


def test_the_share_record_is_what_the_rank_reads(tiny_data, tiny_model_json, tmp_path):
    """Streaming, one process: the entries read from the LMDB during each epoch are, in order, the record's."""
    from launcher.core.atomic import read_jsonl
    from launcher.job import run_job
    from trainers.mace import loop, stream

    run_dir = tmp_path / "one"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 2, "batch_size": 5},
                     data={"cache": "none", "train_indices": {"max_samples": 17, "shuffle": True}})
    reads, epoch = {}, {"now": None}
    orig_item, orig_groups = stream.SplitGraphs.__getitem__, loop.Trainer._groups

    def item(self, j):
        if epoch["now"] is not None and self.path == str(tiny_data["train"]):
            reads.setdefault(epoch["now"], []).append(int(self.indices[j]))
        return orig_item(self, j)

    def groups(self, batches, start):     # called as an epoch's reading starts
        epoch["now"] = self.state.epoch + 1
        return orig_groups(self, batches, start)

    stream.SplitGraphs.__getitem__, loop.Trainer._groups = item, groups
    try:
        assert run_job(spec, echo=lambda *_: None).status == "finished"
    finally:
        stream.SplitGraphs.__getitem__, loop.Trainer._groups = orig_item, orig_groups
    records = read_jsonl(run_dir / "logs" / "shares.jsonl")
    assert [(r["epoch"], r["rank"], r["world"], r["n"]) for r in records] == [(1, 0, 1, 17), (2, 0, 1, 17)]
    assert sorted(records[0]["indices"]) == sorted(json.loads((run_dir / "logs" / "indices.json").read_text())["train"])
    assert [reads.get(1), reads.get(2)] == [records[0]["indices"], records[1]["indices"]]
