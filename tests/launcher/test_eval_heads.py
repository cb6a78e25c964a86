"""``eval.heads`` before anything runs: the schema's rule, relative paths, and preflight's refusals (no torch);
and the per-head tables of ``launcher.core.head_tables``."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.core.head_tables import (BY_HEAD_COLUMNS, NA, compare_lines, compare_rows, write_compare_csv,
                                       write_metrics_by_head)
from launcher.core.schema import RunSpec, validate


def test_only_evaluate_reads_eval_heads_and_it_may_stand_without_the_split(tmp_path):
    spec = RunSpec(backend="mace", task="infer", run_dir=str(tmp_path), model_in="m.model")
    spec.eval.heads = {"a": "x.lmdb"}
    assert "eval.heads: only task=evaluate reads it (task=infer); leave it unset" in validate(spec)
    spec.task = "evaluate"
    assert validate(spec) == []                      # no data.test needed: the heads bring their data
    spec.eval.heads = {}
    assert validate(spec) == ["data.test: required for task=evaluate with eval.split=test"]


def test_head_paths_resolve_against_the_run_file_and_bad_ones_are_refused_without_torch(tmp_path, demo_data):
    """One line per problem, exit 2, no torch imported: an unknown head (read from the manifest) and a
    missing data file; a good spec's head paths become absolute against run.yaml's folder."""
    weights = tmp_path / "m" / "w.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"PK")
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "backend": "mace",
        "weights": {"path": "w.pt", "sha256": hashlib.sha256(b"PK").hexdigest()},
        "model": {"r_max": 4.0, "heads": ["pbe", "r2scan"]}, "heads": []}))
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"backend": "mace", "task": "evaluate", "device": "cpu", "run_dir": "r",
                                   "model": {"manifest": "m/manifest.json"}, "train": {"head_key": "pbe"},
                                   "eval": {"heads": {"oc22": str(demo_data["test"]), "r2scan": "nope.lmdb"}}}))
    code = ("import sys\nfrom launcher.run import main\ntry:\n    main(['--config', sys.argv[1], '--dry-run'])\n"
            "except SystemExit as e:\n    print('exit', e.code)\nprint('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["exit", "2", "False"], proc.stdout + proc.stderr
    assert f"eval.heads.r2scan: {tmp_path / 'nope.lmdb'}: no such file" in proc.stderr
    assert f"eval.heads: 'oc22' is not a head of the model in {tmp_path / 'm' / 'manifest.json'}; its heads: " \
           "pbe, r2scan" in proc.stderr
    assert not (tmp_path / "r").exists()

    from launcher.core.specio import resolve_paths

    spec = RunSpec(backend="mace", task="evaluate", run_dir="r")
    spec.eval.heads = {"pbe": "data/pbe.lmdb", "r2scan": str(demo_data["test"])}
    resolve_paths(spec, tmp_path)
    assert spec.eval.heads == {"pbe": str(tmp_path / "data" / "pbe.lmdb"), "r2scan": str(demo_data["test"])}


def _metrics(e, f):
    return {"n_structures": 4, "n_atoms": 40, "energy_mae": 10 * e, "energy_rmse": 12 * e, "energy_mae_per_atom": e,
            "energy_rmse_per_atom": 1.2 * e, "force_mae": f, "force_rmse": 1.5 * f, "stress_mae": None,
            "stress_rmse": None, "head": "x", "dataset": f"/d/{e}.lmdb"}


def test_tables_by_head_and_before_after(tmp_path):
    after = {"pbe": _metrics(0.02, 0.1), "oc22": _metrics(0.03, 0.2)}
    before = {"pbe": _metrics(0.025, 0.09), "oc22": None}
    with open(write_metrics_by_head(tmp_path / "m.csv", after), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == BY_HEAD_COLUMNS and [r["head"] for r in rows] == ["pbe", "oc22"]
    assert float(rows[1]["force_rmse"]) == 1.5 * 0.2 and rows[0]["stress_mae"] == ""
    assert rows[0]["dataset"] == "/d/0.02.lmdb"

    cmp = compare_rows(after, before)
    assert "stress_mae_before" not in cmp[0]          # no model has stress errors: no columns for them
    assert cmp[0]["energy_rmse_per_atom_delta"] == pytest.approx(1.2 * (0.02 - 0.025))
    assert cmp[1]["force_rmse_before"] == NA and cmp[1]["force_rmse_delta"] == NA
    assert cmp[1]["force_rmse_after"] == 1.5 * 0.2
    with open(write_compare_csv(tmp_path / "c.csv", cmp), newline="") as fh:
        back = list(csv.DictReader(fh))
    assert back[1]["energy_mae_before"] == "n/a" and float(back[0]["force_mae_after"]) == 0.1
    lines = compare_lines(cmp)
    assert lines[0].split()[:3] == ["head", "n", "E_rmse/atom"]
    assert "30.00 meV/atom -> 24.00 meV/atom (-6.000 meV/atom)" in lines[1]
    assert "n/a -> 0.3000 eV/Å (n/a)" in lines[2]


def test_head_data_inside_the_run_dir_counts_as_an_input_overwrite_would_move(tmp_path):
    from launcher.job import inputs_in_run_dir

    spec = RunSpec(backend="mace", task="evaluate", run_dir=str(tmp_path / "r"), model_in="/elsewhere/m.model")
    spec.eval.heads = {"oc22": str(tmp_path / "r" / "oc22.lmdb"), "omat_pbe": str(tmp_path / "omat.lmdb")}
    for path in spec.eval.heads.values():
        Path(path).parent.mkdir(exist_ok=True)
        Path(path).write_bytes(b"")
    assert inputs_in_run_dir(spec, tmp_path / "r") == [("eval.heads.oc22", str(tmp_path / "r" / "oc22.lmdb"))]
