"""MACE evaluate: errors_by_group.csv and parity.png on the demo data (config_type bulk / slab)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from .conftest import make_spec

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model(tiny_data, tiny_model_json, tmp_path_factory):
    from launcher.job import run_job

    run_dir = tmp_path_factory.mktemp("mace-groups") / "run"
    spec = make_spec(run_dir, tiny_data, train={"input_json": str(tiny_model_json), "epochs": 1})
    from launcher.core.layout import RunLayout

    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished"
    return str(RunLayout.of(result.run_dir).manifest)


def _evaluate(tmp_path, tiny_data, model, **eval_keys):
    from launcher.job import run_job

    spec = make_spec(tmp_path, tiny_data, task="evaluate", model_in=model, eval=eval_keys)
    run_job(spec, echo=lambda *_: None)
    return tmp_path / "eval"


def _by_hand(out, tiny_data):
    """Per-config_type errors from predictions.csv / predictions_forces.npz and the LMDB's labels."""
    from data.lmdb_dataset import LmdbDataset

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    npz = np.load(out / "predictions_forces.npz")
    pf = np.split(npz["forces"], np.cumsum(npz["natoms"])[:-1])
    ds = LmdbDataset(tiny_data["test"])
    acc: dict = {}
    for r, f in zip(rows, pf):
        s = ds[int(r["index"])]
        g = acc.setdefault(s.info["config_type"], {"de": [], "df": [], "n": 0, "atoms": 0})
        g["de"].append((float(r["energy"]) - s.energy) / int(r["natoms"]))
        g["df"].append((f - s.forces).reshape(-1))
        g["n"] += 1
        g["atoms"] += int(r["natoms"])
    ds.close()
    out_ = {}
    for name, g in acc.items():
        de, df = np.array(g["de"]), np.concatenate(g["df"])
        out_[name] = {"n_structures": g["n"], "n_atoms": g["atoms"],
                      "energy_mae_per_atom": np.mean(np.abs(de)), "energy_rmse_per_atom": np.sqrt(np.mean(de**2)),
                      "force_mae": np.mean(np.abs(df)), "force_rmse": np.sqrt(np.mean(df**2))}
    return out_


def test_errors_by_config_type_match_predictions(model, tiny_data, tmp_path):
    out = _evaluate(tmp_path / "ev", tiny_data, model)
    want = _by_hand(out, tiny_data)
    assert set(want) == {"bulk", "slab"}                        # the demo data has both
    rows = list(csv.DictReader(open(out / "errors_by_group.csv")))
    assert [r["group"] for r in rows] == sorted(want)
    for r in rows:
        w = want[r["group"]]
        assert int(r["n_structures"]) == w["n_structures"] and int(r["n_atoms"]) == w["n_atoms"]
        for k in ("energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "force_rmse"):
            assert float(r[k]) == pytest.approx(w[k], rel=1e-5, abs=1e-9), (r["group"], k)
    m = json.loads((out / "metrics.json").read_text())
    assert m["by_group"]["slab"]["force_rmse"] == pytest.approx(float(rows[1]["force_rmse"]))
    assert sum(g["n_structures"] for g in m["by_group"].values()) == m["n_structures"]
    png = (out / "parity.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000


def test_group_by_null_and_absent_key(model, tiny_data, tmp_path, capfd):
    out = _evaluate(tmp_path / "null", tiny_data, model, group_by=None)
    assert not (out / "errors_by_group.csv").exists()
    assert "by_group" not in json.loads((out / "metrics.json").read_text())
    assert (out / "parity.png").read_bytes().startswith(PNG_MAGIC)

    capfd.readouterr()
    out = _evaluate(tmp_path / "absent", tiny_data, model, group_by="no_such_key")
    err = capfd.readouterr().err
    assert "eval.group_by=no_such_key" in err and "(none)" in err
    assert "eval.group_by=no_such_key" in (tmp_path / "absent" / "logs" / "train.log").read_text()
    rows = list(csv.DictReader(open(out / "errors_by_group.csv")))
    assert [r["group"] for r in rows] == ["(none)"] and int(rows[0]["n_structures"]) == 8
