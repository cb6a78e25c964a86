"""launcher.core.metrics: the cross-backend metric definitions and eval files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launcher.core.metrics import compute_metrics, write_eval_outputs


def test_compute_metrics_values():
    m = compute_metrics([1.0, 2.0], [0.0, 4.0], [2, 4],
                        [np.ones((2, 3)), np.zeros((4, 3))], [np.zeros((2, 3)), np.zeros((4, 3))])
    assert m["n_structures"] == 2 and m["n_atoms"] == 6
    assert m["energy_mae"] == pytest.approx(1.5)
    assert m["energy_rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert m["energy_mae_per_atom"] == pytest.approx((0.5 + 0.5) / 2)
    assert m["energy_rmse_per_atom"] == pytest.approx(0.5)
    assert m["force_mae"] == pytest.approx(6 / 18) and m["force_rmse"] == pytest.approx(np.sqrt(6 / 18))
    assert compute_metrics([1.0], [1.0], [3])["force_rmse"] is None
    with pytest.raises(ValueError):
        compute_metrics([1.0, 2.0], [1.0], [1, 1])


def test_write_eval_outputs(tmp_path):
    f = [np.full((2, 3), 0.5), np.full((1, 3), -1.0)]
    m = compute_metrics([1.0, 3.0], [1.5, 2.0], [2, 1])
    write_eval_outputs(tmp_path, m, [7, 9], [1.0, 3.0], [2, 1], f)
    assert json.loads((tmp_path / "metrics.json").read_text())["n_atoms"] == 3
    header, row = list(csv.reader(open(tmp_path / "metrics.csv")))
    assert header[:2] == ["n_structures", "n_atoms"] and row[0] == "2" and row[header.index("force_rmse")] == ""
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["index"] for r in rows] == ["7", "9"] and float(rows[0]["energy_per_atom"]) == 0.5
    npz = np.load(tmp_path / "predictions_forces.npz")
    assert npz["forces"].shape == (3, 3) and list(npz["natoms"]) == [2, 1]
    write_eval_outputs(tmp_path / "inf", None, [0], [1.0], [1])
    assert sorted(p.name for p in (tmp_path / "inf").iterdir()) == ["predictions.csv"]
    with pytest.raises(ValueError):
        write_eval_outputs(tmp_path / "bad", None, [0], [1.0], [2], [np.zeros((1, 3))])
