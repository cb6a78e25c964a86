"""launcher.core.metrics: per-group errors, errors_by_group.csv and parity.png (numpy + matplotlib only)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from launcher.core.metrics import (NO_GROUP, EvalArrays, compute_metrics, group_label, group_metrics,
                                   resolve_groups, write_eval_outputs, write_group_outputs)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data():
    rng = np.random.default_rng(1)
    natoms = np.array([2, 3, 1, 4])
    te = rng.normal(size=4)
    pe = te + rng.normal(scale=0.1, size=4)
    tf = [rng.normal(size=(n, 3)) for n in natoms]
    pf = [f + rng.normal(scale=0.05, size=f.shape) for f in tf]
    return pe, te, natoms, pf, tf


def test_group_metrics_equal_compute_metrics_on_each_subset():
    pe, te, na, pf, tf = _data()
    groups = ["b", "a", "b", "a"]
    by = group_metrics(groups, EvalArrays(pe, te, na, pf, tf))
    assert list(by) == ["a", "b"]
    for name, rows in (("a", [1, 3]), ("b", [0, 2])):
        ref = compute_metrics(pe[rows], te[rows], na[rows], [pf[i] for i in rows], [tf[i] for i in rows])
        for k, v in by[name].items():
            assert v == pytest.approx(ref[k]), (name, k)
    # concatenated forces split by natoms give the same numbers
    assert group_metrics(groups, EvalArrays(pe, te, na, np.concatenate(pf), np.concatenate(tf))) == by
    with pytest.raises(ValueError):
        group_metrics(["a"], EvalArrays(pe, te, na))


def test_nan_predicted_force_rows_are_left_out():
    """FairChem predicts no forces for fixed atoms: NaN rows drop out of the force errors."""
    pe, te, na, pf, tf = _data()
    pf = [f.copy() for f in pf]
    pf[0][1] = np.nan
    by = group_metrics(["x"] * 4, EvalArrays(pe, te, na, pf, tf))
    p, t = np.concatenate(pf), np.concatenate(tf)
    keep = ~np.isnan(p[:, 0])
    assert by["x"]["force_mae"] == pytest.approx(np.mean(np.abs(p[keep] - t[keep])))
    assert by["x"]["n_atoms"] == int(na.sum())


def test_group_label_reads_info_then_scalar_fields():
    assert group_label({"config_type": "bulk"}, "config_type") == "bulk"
    assert group_label({}, "subset", {"subset": np.array([3])}) == "3"
    assert group_label({}, "pos", {"pos": np.zeros((4, 3))}) is None     # per-atom arrays are not groups
    assert group_label(None, "x") is None


def test_resolve_groups_none_and_absent_key():
    notes = []
    assert resolve_groups(["a", None], None) is None
    assert resolve_groups(["a", None], "k", notes.append) == ["a", NO_GROUP] and notes == []
    assert resolve_groups([None, None], "nokey", notes.append) == [NO_GROUP, NO_GROUP]
    assert len(notes) == 1 and "eval.group_by=nokey" in notes[0] and "\n" not in notes[0]


def test_write_group_outputs_csv_json_png(tmp_path):
    pe, te, na, pf, tf = _data()
    groups = ["bulk", "slab", "bulk", NO_GROUP]
    m = compute_metrics(pe, te, na, pf, tf)
    written = write_group_outputs(tmp_path, m, groups, EvalArrays(pe, te, na, pf, tf))
    write_eval_outputs(tmp_path, m, range(4), pe, na, pf)
    assert set(written) == {"errors_by_group.csv", "parity.png"}
    rows = list(csv.DictReader(open(tmp_path / "errors_by_group.csv")))
    assert [r["group"] for r in rows] == [NO_GROUP, "bulk", "slab"]
    bulk = next(r for r in rows if r["group"] == "bulk")
    ref = compute_metrics(pe[[0, 2]], te[[0, 2]], na[[0, 2]], [pf[0], pf[2]], [tf[0], tf[2]])
    assert int(bulk["n_structures"]) == 2 and int(bulk["n_atoms"]) == 3
    for k in ("energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "force_rmse"):
        assert float(bulk[k]) == pytest.approx(ref[k])
    js = json.loads((tmp_path / "metrics.json").read_text())
    assert js["by_group"]["bulk"]["force_rmse"] == pytest.approx(ref["force_rmse"])
    header = next(csv.reader(open(tmp_path / "metrics.csv")))
    assert "by_group" not in header
    png = (tmp_path / "parity.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_no_grouping_and_energy_only(tmp_path):
    pe, te, na, _, _ = _data()
    m = compute_metrics(pe, te, na)
    written = write_group_outputs(tmp_path, m, None, EvalArrays(pe, te, na))
    assert set(written) == {"parity.png"} and "by_group" not in m
    assert not (tmp_path / "errors_by_group.csv").exists()
    assert (tmp_path / "parity.png").read_bytes().startswith(PNG_MAGIC)
    m2 = compute_metrics(pe, te, na)
    write_group_outputs(tmp_path / "g", m2, ["a"] * 4, EvalArrays(pe, te, na))
    row = next(csv.DictReader(open(tmp_path / "g" / "errors_by_group.csv")))
    assert row["force_mae"] == "" and row["n_structures"] == "4"


def test_metrics_module_does_not_import_torch_or_matplotlib():
    code = ("import sys, launcher.core.metrics; "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
