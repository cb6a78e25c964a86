"""``eval.heads``: every head of a fine-tuned multi-head model on its own data, before (the base model) and after.

Real models and data: the small MACE-MH-1-like bundle (three heads) fine-tuned with a new head ``oc22`` on a
second EMT data set; each row of the per-head tables must equal a separate ``task=evaluate`` of that head."""
from __future__ import annotations

import csv
import json

import pytest

from . import mh_bundle as mb
from .conftest import make_spec

QUIET = dict(echo=lambda *_: None)


def _rows(path):
    with open(path, newline="") as fh:
        return {r["head"]: r for r in csv.DictReader(fh)}


def _evaluate(tmp_path, name, data, **over):
    from launcher.core.layout import RunLayout
    from launcher.job import run_job

    run_dir = tmp_path / name
    res = run_job(make_spec(run_dir, {"test": data}, task="evaluate", **over), **QUIET)
    assert res.status == "finished", res
    return json.loads((RunLayout.of(run_dir).eval_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def second_data(tmp_path_factory):
    from data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("oc22-data") / "emt", seed=11, n_train=8, n_val=4, n_test=5)


@pytest.mark.slow
def test_every_head_on_its_own_data_before_and_after_equals_separate_evaluations(bundle, tiny_data, second_data,
                                                                                 tmp_path):
    from launcher.core.layout import RunLayout, read_manifest, sha256_file
    from launcher.job import run_job

    desc = json.loads(bundle["model_json"].read_text())
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps(mb.with_new_head(desc, [e - 0.3 for e in desc["e0_values"][1]],
                                                      head_init="omat_pbe")))
    ft = tmp_path / "ft"
    spec = make_spec(ft, {"train": second_data["train"], "val": second_data["val"]}, task="finetune",
                     model={"manifest": str(bundle["manifest"])},
                     train={"input_json": str(model_json), "head_key": "oc22", "epochs": 1, "lr": 0.01})
    assert run_job(spec, **QUIET).status == "finished"
    record = read_manifest(RunLayout.of(ft).manifest)["base_model"]
    assert record["manifest"] == str(bundle["manifest"])
    assert record["sha256"] == sha256_file(bundle["weights"]) == mb.sha256(bundle["weights"])

    heads = {"omat_pbe": str(tiny_data["test"]), "oc22": str(second_data["test"]),
             "spice_wB97M": str(tiny_data["val"])}
    ev = tmp_path / "ev"
    res = run_job(make_spec(ev, {}, task="evaluate", model_in=str(ft), eval={"heads": heads}), **QUIET)
    assert res.status == "finished", res
    lay = RunLayout.of(ev)
    by_head = _rows(lay.eval_dir / "metrics_by_head.csv")
    compare = _rows(lay.eval_dir / "compare_base_by_head.csv")
    assert list(by_head) == list(heads) == list(compare)
    assert not (lay.eval_dir / "metrics.json").exists()   # no data.test: the heads alone
    assert all((lay.eval_dir / "heads" / h / "parity.png").is_file() for h in heads)

    keys = ("n_structures", "n_atoms", "energy_mae", "energy_rmse", "energy_mae_per_atom", "energy_rmse_per_atom",
            "force_mae", "force_rmse")
    for head, data in heads.items():
        alone = _evaluate(tmp_path, f"after-{head}", data, model_in=str(ft), train={"head_key": head})
        row = by_head[head]
        assert row["dataset"] == data
        for k in keys:
            assert float(row[k]) == pytest.approx(alone[k], rel=1e-6, abs=1e-9), (head, k)
            assert float(compare[head][f"{k}_after"]) == pytest.approx(alone[k], rel=1e-6, abs=1e-9) \
                if f"{k}_after" in compare[head] else True
        if head in mb.HEADS:   # the base model alone, on the same data and head
            base = _evaluate(tmp_path, f"before-{head}", data, model={"manifest": str(bundle["manifest"])},
                             train={"head_key": head})
            for k in keys[2:]:
                before, after = float(compare[head][f"{k}_before"]), float(compare[head][f"{k}_after"])
                assert before == pytest.approx(base[k], rel=1e-6, abs=1e-9), (head, k)
                assert float(compare[head][f"{k}_delta"]) == pytest.approx(after - before, rel=1e-6, abs=1e-12)
        else:                  # a new head: the base model has none
            assert compare[head]["energy_rmse_per_atom_before"] == "n/a"
            assert compare[head]["force_rmse_delta"] == "n/a"
    # the fine-tune moved the shared weights: the base heads' errors changed
    assert float(compare["omat_pbe"]["energy_rmse_per_atom_delta"]) != 0.0
    log = lay.train_log.read_text()
    assert "vs" in log and "omat_pbe" in log and "n/a ->" in log
    assert set(res.result["by_head"]) == set(heads) and len(res.result["compare_base"]) == len(heads)

    # a base model whose file no longer matches the record: a note, the heads' own table, no comparison
    import shutil

    ft2 = tmp_path / "ft2"
    shutil.copytree(ft, ft2)
    manifest = json.loads(RunLayout.of(ft2).manifest.read_text())
    manifest["base_model"]["sha256"] = "0" * 64
    RunLayout.of(ft2).manifest.write_text(json.dumps(manifest))
    ev2 = tmp_path / "ev2"
    res = run_job(make_spec(ev2, {}, task="evaluate", model_in=str(ft2), eval={"heads": {"oc22": heads["oc22"]}}),
                  **QUIET)
    assert res.status == "finished" and "compare_base" not in res.result
    assert "has changed since the fine-tune (sha256); no comparison" in RunLayout.of(ev2).train_log.read_text()
    assert _rows(RunLayout.of(ev2).eval_dir / "metrics_by_head.csv")["oc22"] == by_head["oc22"]
    assert not (RunLayout.of(ev2).eval_dir / "compare_base_by_head.csv").exists()
