"""MACE evaluate / infer stream their split: the same files as the in-memory computation they replace, the
entries outside the selection never read, and nothing of the split's per-atom size held in memory."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launcher.core.metrics import (EvalArrays, EvalStream, compute_metrics, group_label, resolve_groups,
                                   write_eval_outputs, write_group_outputs)

from .conftest import make_spec


# ------------------------------------------------------------------ EvalStream alone (numpy only)
def _synthetic(n=40, seed=0):
    rng = np.random.default_rng(seed)
    natoms = rng.integers(1, 9, size=n)
    te = rng.normal(size=n) * natoms
    pe = te + rng.normal(scale=0.1, size=n)
    tf = [rng.normal(size=(k, 3)) for k in natoms]
    pf = [f + rng.normal(scale=0.05, size=f.shape) for f in tf]
    groups = [["bulk", "slab", None][i % 3] for i in range(n)]
    return np.arange(100, 100 + n), natoms, pe, te, pf, tf, groups


def _stream(out, data, batch=7, **kw):
    idx, na, pe, te, pf, tf, groups = data
    s = EvalStream(out, with_metrics=True, with_forces=True, group_by="config_type", **kw)
    for i in range(0, len(idx), batch):
        b = slice(i, i + batch)
        s.add(idx[b], na[b], pe[b], pf[b], te[b], tf[b], groups[b])
    return s, s.finish(extra={"split": "test"})


@pytest.mark.parametrize("block", [None, 128])
def test_eval_stream_writes_what_the_whole_array_functions_write(tmp_path, monkeypatch, block):
    if block:   # numpy's pairwise tree walked above nodes of 128 components, groups read across nodes
        import launcher.core.eval_errors as eval_errors

        monkeypatch.setattr(eval_errors, "_PW_BLOCK", block)
    data = _synthetic(n=200)
    idx, na, pe, te, pf, tf, groups = data
    _, got = _stream(tmp_path / "s", data)
    ref = compute_metrics(pe, te, na, pf, tf)
    ref["split"] = "test"
    write_group_outputs(tmp_path / "r", ref, resolve_groups(groups, "config_type"), EvalArrays(pe, te, na, pf, tf))
    write_eval_outputs(tmp_path / "r", ref, idx, pe, na, pf)
    s, r = tmp_path / "s", tmp_path / "r"
    for name in ("predictions.csv", "metrics.json", "metrics.csv", "errors_by_group.csv"):
        assert (s / name).read_bytes() == (r / name).read_bytes(), name
    a, b = np.load(s / "predictions_forces.npz"), np.load(r / "predictions_forces.npz")
    assert a.files == b.files == ["forces", "natoms", "index"]
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a.files)
    assert got == ref
    assert [r_["group"] for r_ in csv.DictReader(open(s / "errors_by_group.csv"))] == ["(none)", "bulk", "slab"]
    assert (s / "parity.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in s.iterdir() if p.name.startswith(".")]      # no temp file left


def test_a_nan_prediction_gives_what_the_whole_array_functions_give(tmp_path):
    """A NaN force row (FairChem's fixed atoms): NaN overall errors, the group errors without that atom."""
    data = _synthetic(n=30, seed=5)
    idx, na, pe, te, pf, tf, groups = data
    pf[4][0] = np.nan
    _, got = _stream(tmp_path / "s", data)
    ref = compute_metrics(pe, te, na, pf, tf)
    ref["split"] = "test"
    write_group_outputs(tmp_path / "r", ref, resolve_groups(groups, "config_type"), EvalArrays(pe, te, na, pf, tf))
    write_eval_outputs(tmp_path / "r", ref, idx, pe, na, pf)
    for name in ("metrics.json", "errors_by_group.csv"):
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "r" / name).read_bytes(), name
    assert np.isnan(got["force_mae"]) and not np.isnan(got["by_group"]["slab"]["force_mae"])


def test_eval_stream_of_many_small_batches_keeps_one_array_per_column(tmp_path):
    data = _synthetic(n=700, seed=3)
    idx, na, pe, te, pf, tf, groups = data
    s, got = _stream(tmp_path, data, batch=1)
    assert max(len(parts) for parts in s._cols.values()) < 256
    want = compute_metrics(pe, te, na, pf, tf)
    assert {k: got[k] for k in want} == want
    assert [int(r["index"]) for r in csv.DictReader(open(tmp_path / "predictions.csv"))] == idx.tolist()


def test_eval_stream_holds_per_structure_scalars_and_a_bounded_force_sample(tmp_path):
    rng = np.random.default_rng(2)
    s = EvalStream(tmp_path, with_metrics=True, with_forces=True, group_by=None, parity_max_points=500)
    n, atoms = 300, 80
    for i in range(0, n, 10):
        tf = [rng.normal(size=(atoms, 3)) for _ in range(10)]
        s.add(np.arange(i, i + 10), [atoms] * 10, rng.normal(size=10), [f + 0.1 for f in tf], rng.normal(size=10),
              tf, None)
    held = sum(a.nbytes for parts in s._cols.values() for a in parts)
    assert held <= 64 * n                                 # a few scalars per structure, no per-atom array
    assert s.sample.ref.size == 500 and s.sample.seen == n * atoms * 3
    m = s.finish()
    assert m["n_atoms"] == n * atoms and m["force_mae"] == pytest.approx(0.1)
    # the sample is seeded: the same stream draws the same points
    s2 = EvalStream(tmp_path / "again", with_metrics=True, with_forces=True, parity_max_points=500)
    rng = np.random.default_rng(2)
    for i in range(0, n, 10):
        tf = [rng.normal(size=(atoms, 3)) for _ in range(10)]
        s2.add(np.arange(i, i + 10), [atoms] * 10, rng.normal(size=10), [f + 0.1 for f in tf], rng.normal(size=10),
               tf, None)
    assert np.array_equal(s2.sample.ref, s.sample.ref)
    s2.discard()
    assert not list((tmp_path / "again").iterdir())


def test_reservoir_sample_is_uniform_over_the_stream():
    from launcher.core.eval_stream import _Reservoir

    hits = np.zeros(1000)
    for seed in range(200):
        r = _Reservoir(100, seed)
        for start in range(0, 1000, 37):
            block = np.arange(start, min(start + 37, 1000), dtype=np.float64)
            r.add(0, block, block)
        assert r.ref.size == 100 and len(set(r.ref.tolist())) == 100
        hits[r.ref.astype(int)] += 1
    # each point is kept with probability 0.1: 20 times in 200 draws on average, early and late alike
    assert abs(hits[:500].mean() - 20) < 1.5 and abs(hits[500:].mean() - 20) < 1.5


# ------------------------------------------------------------------ the MACE backend, end to end
@pytest.fixture(scope="module")
def model(tiny_data, tiny_model_json, tmp_path_factory):
    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    spec = make_spec(tmp_path_factory.mktemp("mace-eval-stream") / "run", tiny_data,
                     train={"input_json": str(tiny_model_json), "epochs": 1})
    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished"
    return str(RunLayout.of(result.run_dir).manifest)


def _reference(model_in, test_path, out, *, dtype="float32", batch_size=3):
    """The eval files computed the way evaluate did before it streamed: every structure read and every graph
    built in memory, predicted in order, then the whole-array metric functions."""
    import torch

    from data.lmdb_dataset import LmdbDataset
    from trainers.mace.graphs import collate, to_atomic_data
    from trainers.mace.loop import head_of
    from trainers.mace.model_config import heads_of
    from trainers.mace.model_io import load_model
    from trainers.mace.predict import predict_batch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if dtype == "float32" else torch.float64)
    try:
        spec = make_spec(out.parent / "unused", {"test": test_path}, task="evaluate", model_in=model_in,
                         train={"dtype": dtype})
        loaded = load_model(spec, prefer="best")
        cfg = loaded.config
        ds = LmdbDataset(str(test_path))
        structures = [ds[i] for i in range(len(ds))]
        ds.close()
        head = head_of(cfg, spec.train.head_key)
        graphs = to_atomic_data(structures, cfg["atomic_numbers"], cfg["r_max"], heads_of(cfg), head)
        energy, forces, stress = [], [], []
        with_stress = any(s.stress is not None for s in structures)
        for i in range(0, len(graphs), batch_size):
            p = predict_batch(loaded.model, collate(graphs[i:i + batch_size]), device=torch.device("cpu"),
                              compute_stress=with_stress)
            energy.append(p["energy"])
            forces.extend(p["forces"])
            stress.extend(p["stress"] if with_stress else [])
    finally:
        torch.set_default_dtype(old)
    energy = np.concatenate(energy)
    natoms = np.array([s.natoms for s in structures])
    true_e, true_f = [s.energy for s in structures], [s.forces for s in structures]
    pred_s = np.stack(stress) if stress else None
    metrics = compute_metrics(energy, true_e, natoms, forces, true_f, pred_stress=pred_s,
                              true_stress=[s.stress for s in structures] if stress else None)
    metrics.update({"split": "test", "head": head, "model": loaded.source, "dataset": str(test_path)})
    groups = resolve_groups([group_label(s.info, "config_type") for s in structures], "config_type")
    write_group_outputs(out, metrics, groups, EvalArrays(energy, true_e, natoms, forces, true_f))
    write_eval_outputs(out, metrics, np.arange(len(structures)), energy, natoms, forces, stress=pred_s)
    return out


@pytest.mark.slow
def test_streamed_evaluate_matches_the_in_memory_reference(model, tiny_data, tmp_path):
    from launcher.job import run_job

    spec = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model_in=model, data={"batch_size": 3},
                     train={"num_workers": 2})
    run_job(spec, echo=lambda *_: None)
    got, ref = tmp_path / "ev" / "eval", _reference(model, tiny_data["test"], tmp_path / "ref")
    assert (got / "predictions.csv").read_bytes() == (ref / "predictions.csv").read_bytes()
    a, b = np.load(got / "predictions_forces.npz"), np.load(ref / "predictions_forces.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    for name in ("metrics.json", "metrics.csv", "errors_by_group.csv"):     # bit for bit
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    assert [x["group"] for x in csv.DictReader(open(got / "errors_by_group.csv"))] == ["bulk", "slab"]
    assert (got / "parity.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p.name for p in got.iterdir() if p.name.startswith(".")]
    log = (tmp_path / "ev" / "logs" / "train.log").read_text()
    assert "evaluate data.test: 8 structures" in log and "meV/atom" in log


def _poison(path, entries) -> None:
    """Replace the given entries with bytes that do not unpickle."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in entries:
            txn.put(str(int(i)).encode(), b"not a pickle")
    env.close()


@pytest.mark.slow
def test_evaluate_and_infer_never_read_the_entries_their_selection_excludes(model, tiny_data, tmp_path):
    import shutil

    from data.indices import select_split_indices
    from launcher.core.errors import ConfigError
    from launcher.job import run_job

    data = dict(tiny_data)
    data["test"] = tmp_path / "test.lmdb"
    shutil.copy(tiny_data["test"], data["test"])
    sample = {"test_indices": {"max_samples": 5, "shuffle": True, "seed": 4}}
    pick = select_split_indices(make_spec(tmp_path / "x", data, task="evaluate", model_in=model, data=sample).data,
                                "test", 8, active=True)
    assert len(pick) == 5
    _poison(data["test"], sorted(set(range(8)) - set(pick.tolist())))     # every entry but the sample's 5
    for task in ("evaluate", "infer"):
        spec = make_spec(tmp_path / task, data, task=task, model_in=model, data=sample, train={"num_workers": 2})
        run_job(spec, echo=lambda *_: None)
        rows = list(csv.DictReader(open(tmp_path / task / "eval" / "predictions.csv")))
        assert [int(r["index"]) for r in rows] == pick.tolist()
    assert json.loads((tmp_path / "evaluate" / "eval" / "metrics.json").read_text())["n_structures"] == 5
    # the whole file is read past the selection and fails on a poisoned entry: the test can see a read
    with pytest.raises(ConfigError, match="does not unpickle"):
        run_job(make_spec(tmp_path / "all", data, task="evaluate", model_in=model, train={"num_workers": 2}),
                echo=lambda *_: None)
    left = tmp_path / "all" / "eval"
    assert not left.exists() or not [p for p in left.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_evaluate_without_energies_is_one_line_and_leaves_no_temp_file(model, tiny_data, tmp_path):
    from launcher.core.errors import ConfigError
    from launcher.job import run_job

    with pytest.raises(ConfigError, match=r"task=evaluate needs energies"):
        _evaluate_unlabelled(model, tiny_data, tmp_path, run_job)
    left = tmp_path / "ev" / "eval"
    assert not left.exists() or not list(left.iterdir())


def _evaluate_unlabelled(model, tiny_data, tmp_path, run_job):
    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    ds = LmdbDataset(str(tiny_data["test"]))
    structures = [ds[i] for i in range(len(ds))]
    ds.close()
    for st in structures:
        st.energy = None
    path = write_lmdb(structures, tmp_path / "nolabel.lmdb", progress=False)[0]
    run_job(make_spec(tmp_path / "ev", {"test": path}, task="evaluate", model_in=model, data={"batch_size": 2}),
            echo=lambda *_: None)


def test_eval_stream_stress_from_the_first_batch_that_has_it(tmp_path):
    """Stress kept only once a batch carries it: the earlier rows get empty stress cells, the metrics count the
    labelled structures only and equal compute_metrics' on the whole arrays; data without stress keeps nothing."""
    rng = np.random.default_rng(5)
    s = EvalStream(tmp_path, with_metrics=True, with_forces=False)
    n, ps_all, ts_all = 0, [], []
    for b in range(4):
        pe, te = rng.normal(size=3), rng.normal(size=3)
        if b == 0:
            s.add(np.arange(n, n + 3), [4] * 3, pe, None, te)
            ps_all += [np.full((3, 3), np.nan)] * 3
            ts_all += [None] * 3
        else:
            ps = rng.normal(size=(3, 3, 3))
            ts = [rng.normal(size=(3, 3)), None, rng.normal(size=(3, 3))]
            s.add(np.arange(n, n + 3), [4] * 3, pe, None, te, pred_stress=ps, true_stress=ts)
            ps_all += list(ps)
            ts_all += ts
        n += 3
    m = s.finish()
    ref = compute_metrics(np.zeros(n), np.zeros(n), [4] * n, pred_stress=np.stack(ps_all), true_stress=ts_all)
    assert m["stress_mae"] == ref["stress_mae"] and m["stress_rmse"] == ref["stress_rmse"]
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == n and rows[0]["stress_xx"] == "" and float(rows[3]["stress_xy"]) == ps_all[3][0, 1]
    plain = EvalStream(tmp_path / "plain", with_metrics=True, with_forces=False)
    plain.add([0, 1], [4, 4], [0.0, 1.0], None, [0.0, 1.0])
    assert not plain._cols["s_pred"] and "stress_mae" not in plain.finish()
    assert "stress_xx" not in open(tmp_path / "plain" / "predictions.csv").readline()
