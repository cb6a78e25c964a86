"""Streaming vs cached graphs: the same batches and losses, exact mid-epoch resume, bounded statistics,
and sampling that never reads the entries a run excludes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import make_spec, run_preempted_after

pytestmark = pytest.mark.slow


def _train(tiny_model_json, **extra):
    train = {"input_json": str(tiny_model_json), "epochs": 2, "log_every": 1, "lr": 0.005}
    train.update(extra)
    return train


def _run(spec):
    from launcher.job import run_job

    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished", result
    return result


def _losses(run_dir):
    from launcher.core.atomic import read_jsonl

    recs = read_jsonl(run_dir / "logs" / "metrics.jsonl")
    return ([(r["step"], r["loss"]) for r in recs if r["split"] == "train"],
            [(r["step"], r["loss"], r["force_rmse"]) for r in recs if r["split"] == "val"])


def _weights(run_dir):
    import torch

    return torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)


def test_streaming_and_the_cache_give_the_same_batches_and_losses(tiny_data, tiny_model_json, tmp_path):
    import torch

    modes = {"memory": ("memory", 0), "stream": ("none", 0), "stream_workers": ("none", 2),
             "default_workers": (None, 2)}
    out = {}
    for name, (cache, workers) in modes.items():
        run_dir = tmp_path / name
        _run(make_spec(run_dir, tiny_data, data={"cache": cache} if cache else {},
                       train=_train(tiny_model_json, num_workers=workers)))
        out[name] = (_losses(run_dir), _weights(run_dir))
        log = (run_dir / "logs" / "train.log").read_text()
        assert ("graphs: streamed" if cache == "none" else "graphs: cached in memory as the first epoch streams") in log
    (ref_losses, ref_w) = out["stream"]
    assert len(ref_losses[0]) == 12 and len(ref_losses[1]) == 2   # 6 updates x 2 epochs, 2 validations
    for name in ("memory", "stream_workers", "default_workers"):
        losses, w = out[name]
        assert losses == ref_losses, name
        for k in ref_w:
            assert torch.equal(ref_w[k], w[k]), (name, k)


def test_auto_streams_when_the_estimate_exceeds_the_budget(tiny_data, tiny_model_json, tmp_path):
    run_dir = tmp_path / "auto"
    _run(make_spec(run_dir, tiny_data, data={"cache": "auto", "cache_budget_gb": 0.0},
                   train=_train(tiny_model_json, epochs=1)))
    log = (run_dir / "logs" / "train.log").read_text()
    assert "graphs: streamed (data.cache=auto: estimate" in log and "> data.cache_budget_gb 0" in log
    assert "data wait" in log


def test_the_default_caches_while_the_first_epoch_streams(tiny_data, tiny_model_json, tmp_path):
    """No pass over the data before the first update; epoch 2 builds nothing; the same losses as streaming."""
    run_dir = tmp_path / "default"
    _run(make_spec(run_dir, tiny_data, train=_train(tiny_model_json, epochs=3, num_workers=2)))
    lines = (run_dir / "logs" / "train.log").read_text().splitlines()
    at = {key: next(i for i, ln in enumerate(lines) if key in ln)
          for key in ("graphs: cached in memory as the first epoch streams (data.cache=auto: estimate",
                      "train step=1 ", "epoch 1/3 done", "graph cache (data.train")}
    decided, first_step, epoch1, cache1 = at.values()
    assert decided < first_step < epoch1 < cache1           # the first update came before the cache was complete
    status = [ln for ln in lines if "graph cache (data.train" in ln]
    assert len(status) == 3 and all("24 of 24 graphs kept" in ln and "24 built so far" in ln for ln in status)
    ref = tmp_path / "none"
    _run(make_spec(ref, tiny_data, data={"cache": "none"}, train=_train(tiny_model_json, epochs=3, num_workers=2)))
    assert _losses(run_dir) == _losses(ref)


@pytest.mark.parametrize("cache", ["none", "auto"])
def test_streamed_run_preempted_mid_epoch_resumes_exactly(tiny_data, tiny_model_json, tmp_path, cache):
    over = {"data": {"cache": cache}, "train": _train(tiny_model_json, epochs=3, num_workers=2)}
    _run(make_spec(tmp_path / "ref", tiny_data, **over))
    run_dir = tmp_path / "run"
    first = run_preempted_after(make_spec(run_dir, tiny_data, **over), 9)   # mid epoch 2 (6 updates per epoch)
    assert first.status == "preempted"
    _run(make_spec(run_dir, tiny_data, task="resume", **over))
    assert _losses(run_dir) == _losses(tmp_path / "ref")
    import torch

    ref, got = _weights(tmp_path / "ref"), _weights(run_dir)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_statistics_come_from_a_bounded_sample_and_are_kept_on_resume(tiny_data, tiny_model_json, tmp_path):
    from launcher.core.layout import RunLayout, read_manifest

    run_dir = tmp_path / "stats"
    _run(make_spec(run_dir, tiny_data, data={"stats_samples": 10}, train=_train(tiny_model_json, epochs=1)))
    log = (run_dir / "logs" / "train.log").read_text()
    assert "from 10 of 24 training structures (seeded sample; data.stats_samples=10)" in log
    man = read_manifest(RunLayout.of(run_dir).manifest)
    assert man["statistics"]["sample"] == 10 and man["statistics"]["of"] == 24
    cfg = json.loads((run_dir / "artifacts" / "model.json").read_text())

    _run(make_spec(run_dir, tiny_data, task="resume", data={"stats_samples": 10},
                   train=_train(tiny_model_json, epochs=2)))
    man2 = read_manifest(RunLayout.of(run_dir).manifest)
    assert man2["statistics"] == man["statistics"]            # not recomputed on resume
    cfg2 = json.loads((run_dir / "artifacts" / "model.json").read_text())
    for key in ("atomic_energies", "avg_num_neighbors", "atomic_inter_scale", "atomic_inter_shift"):
        assert cfg2[key] == cfg[key], key
    assert (run_dir / "logs" / "train.log").read_text().count("statistics (E0s") == 1


def test_stats_positions_are_bounded_seeded_and_sorted():
    from trainers.mace.stream import stats_positions

    assert stats_positions(5, 10, 0).tolist() == [0, 1, 2, 3, 4]
    a, b = stats_positions(1_000_000, 100, 1), stats_positions(1_000_000, 100, 1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 100 and (np.diff(a) > 0).all()
    assert stats_positions(1_000_000, 100, 2).tolist() != a.tolist()


def _poison(path, keep: int) -> None:
    """Replace every entry from ``keep`` on with bytes that do not unpickle."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 30)
    with env.begin(write=True) as txn:
        n = int(env.stat()["entries"]) - 1
        for i in range(keep, n):
            txn.put(str(i).encode(), b"not a pickle")
    env.close()


def test_sampling_never_reads_the_entries_a_run_excludes(tiny_data, tiny_model_json, tmp_path):
    import shutil

    from launcher.core.errors import ConfigError
    from launcher.job import run_job

    data = dict(tiny_data)
    data["train"] = tmp_path / "train.lmdb"
    shutil.copy(tiny_data["train"], data["train"])
    _poison(data["train"], keep=12)
    over = {"data": {"cache": "none", "train_indices": {"max_samples": 12}, "stats_samples": 100},
            "train": _train(tiny_model_json, epochs=1, num_workers=2)}
    _run(make_spec(tmp_path / "ok", data, **over))
    # the same file read past the selection fails on the poisoned entries: the test can see a read
    over["data"]["train_indices"] = {"max_samples": None}
    with pytest.raises(ConfigError, match="does not unpickle"):
        run_job(make_spec(tmp_path / "bad", data, **over), echo=lambda *_: None)


def test_a_worker_error_comes_back_as_one_line(tiny_data):
    import torch

    from launcher.core.errors import ConfigError
    from trainers.mace.stream import SplitGraphs, loader

    torch.set_default_dtype(torch.float32)
    try:
        src = SplitGraphs(str(tiny_data["train"]), np.arange(24), [29], 4.0, ["Default"], "Default",
                          what="data.train (x)")
        with pytest.raises(ConfigError) as err:
            list(loader(src, [[i] for i in range(24)], num_workers=2))
    finally:
        torch.set_default_dtype(torch.float64)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.train (x): entry ") and "no parameters for elements" in msg
