"""A new head on a multi-head model, as the original fine-tuned MACE-MH-1 with an ``oc22`` head:
train.input_json lists the base heads plus ``oc22``; every existing part comes from the base model;
``head_init`` names where the new readout starts; ``freeze: head_only`` trains that readout alone."""
from __future__ import annotations

import json

import numpy as np
import pytest

from launcher.core.errors import ConfigError
from trainers.mace.export import head_model_path

from . import mh_bundle as mb
from .conftest import make_spec

ALL_HEADS = mb.HEADS + [mb.NEW_HEAD]


@pytest.fixture(scope="module")
def val_structures(tiny_data):
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["val"])
    return [ds[i] for i in range(len(ds))]


def _oc22_json(bundle, path, **extra):
    """The bundle's model.json with head oc22 added (E0s and scale/shift for it given), as MACE-MH-1/OC22."""
    desc = json.loads(bundle["model_json"].read_text())
    row = [e - 0.3 for e in desc["e0_values"][1]]
    path.write_text(json.dumps(mb.with_new_head(desc, row, **extra)))
    return path, row


def _load(spec):
    import torch

    from trainers.mace.model_io import load_model
    from trainers.mace.order import seed_everything

    torch.set_default_dtype(torch.float32)
    try:
        seed_everything(spec.effective_seed)
        return load_model(spec)
    finally:
        torch.set_default_dtype(torch.float64)


def _head_parts(model, state, heads):
    """{(key, head): tensor} for every head-dependent entry, and the keys outside the heads."""
    from trainers.mace.heads import head_entries, head_part

    entries = head_entries(model)
    parts = {}
    for k, (kind, m) in entries.items():
        for i, h in enumerate(heads):
            parts[(k, h)] = head_part(state[k], kind, len(heads), m, i).clone()
    return parts, [k for k in state if k not in entries and not k.endswith("output_mask")]


@pytest.mark.slow
def test_new_head_head_only_trains_that_readout_alone_then_evaluate_and_export_per_head(bundle, tiny_data, val_structures, tmp_path):
    import torch

    from launcher.core.layout import RunLayout, read_manifest
    from launcher.job import run_job

    model_json, row = _oc22_json(bundle, tmp_path / "model.json", head_init="omat_pbe")
    run_dir = tmp_path / "ft"
    over = dict(task="finetune", model={"manifest": str(bundle["manifest"])},
                data={"train_indices": {"max_samples": 12, "shuffle": True, "seed": 1}},
                train={"input_json": str(model_json), "head_key": "oc22", "freeze": "head_only", "epochs": 2,
                       "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.01})
    spec = make_spec(run_dir, tiny_data, **over)
    start = _load(spec)                     # the model the fine-tune starts from
    assert start.config["heads"] == ALL_HEADS
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    lay = RunLayout.of(run_dir)
    log = lay.train_log.read_text()
    assert ("new head 'oc22': readout copied from head 'omat_pbe'; E0s from model.json (e0_values); "
            "scale/shift from model.json") in log
    assert f"the existing heads ({', '.join(mb.HEADS)}) and every part outside the readouts keep the weights" in log

    # only oc22's readout entries changed; everything else bit for bit
    after = torch.load(lay.checkpoint, weights_only=True)["model"]
    before = start.model.state_dict()
    p0, rest = _head_parts(start.model, before, ALL_HEADS)
    p1, _ = _head_parts(start.model, after, ALL_HEADS)
    assert rest and all(torch.equal(before[k], after[k]) for k in rest)
    for (k, h), t in p0.items():
        if h != "oc22" or not k.startswith("readouts."):
            assert torch.equal(t, p1[(k, h)]), (k, h)
    assert all(not torch.equal(p0[(k, "oc22")], p1[(k, "oc22")])
               for k in ("readouts.0.linear.weight", "readouts.1.linear_1.weight", "readouts.1.linear_2.weight"))
    np.testing.assert_allclose(after["atomic_energies_fn.atomic_energies"][-1].numpy(), row, rtol=1e-6)

    # the base heads predict as the base model did; oc22 started from omat_pbe's readout
    base = torch.load(bundle["model"], weights_only=False)
    tuned = start.model
    tuned.load_state_dict(after)
    for head in mb.HEADS:
        torch.testing.assert_close(mb.energies(tuned, val_structures, ALL_HEADS, head, 5.0),
                                   mb.energies(base, val_structures, mb.HEADS, head, 5.0), rtol=1e-5, atol=1e-4)

    # evaluate per head from the run directory
    got = {}
    for head in ("oc22", "omat_pbe"):
        ev = tmp_path / f"ev-{head}"
        res = run_job(make_spec(ev, tiny_data, task="evaluate", model_in=str(run_dir), train={"head_key": head},
                                eval={"split": "val"}), echo=lambda *_: None)
        assert res.result["metrics"]["head"] == head
        got[head] = np.loadtxt(RunLayout.of(ev).eval_dir / "predictions.csv", delimiter=",", skiprows=1, usecols=(1,))
    best = torch.load(lay.best_model, weights_only=True)
    tuned.load_state_dict(best)
    np.testing.assert_allclose(got["oc22"], mb.energies(tuned, val_structures, ALL_HEADS, "oc22", 5.0).numpy(), rtol=1e-5)
    assert not np.allclose(got["oc22"], got["omat_pbe"])

    # export per head: the whole model plus oc22 alone as a mace .model
    ex = tmp_path / "ex"
    res = run_job(make_spec(ex, tiny_data, task="export", model_in=str(run_dir), train={"head_key": "oc22"}),
                  echo=lambda *_: None)
    exl = RunLayout.of(ex)
    assert res.result["head"] == "oc22" and head_model_path(exl, "oc22").is_file()
    m = read_manifest(exl.manifest)
    assert m["heads"] == ALL_HEADS and m["head"] == "oc22" and m["head_model"] == "best_model.oc22.model"
    single = torch.load(head_model_path(exl, "oc22"), weights_only=False)
    assert list(single.heads) == ["oc22"]
    torch.testing.assert_close(mb.energies(single, val_structures, ["oc22"], "oc22", 5.0),
                               torch.as_tensor(got["oc22"], dtype=torch.float32), rtol=1e-5, atol=1e-4)


def test_new_head_fresh_from_a_model_file_and_from_a_state_dict(bundle, tiny_data, val_structures, tmp_path):
    import torch

    base = torch.load(bundle["model"], weights_only=False)
    # our model.json form on a .model: only the heads are given; the new readout is fresh and its
    # E0s and scale/shift come from the training data
    ours = tmp_path / "heads.json"
    ours.write_text(json.dumps({"heads": ALL_HEADS}))
    spec = make_spec(tmp_path / "a", tiny_data, task="finetune", model_in=str(bundle["model"]),
                     train={"input_json": str(ours), "head_key": "oc22"})
    loaded = _load(spec)
    notes = " | ".join(loaded.notes)
    assert "new head 'oc22': readout initialised fresh (mace's initialisation); E0s fitted on the training data" in notes
    assert "scale/shift from the training data (rms_forces_scaling)" in notes
    assert loaded.config["heads"] == ALL_HEADS and loaded.config["head_init"] is None
    for head in mb.HEADS:
        torch.testing.assert_close(mb.energies(loaded.model, val_structures, ALL_HEADS, head, 5.0),
                                   mb.energies(base, val_structures, mb.HEADS, head, 5.0), rtol=1e-5, atol=1e-4)
    # a plain state dict of the base model with the OC22 description (as the original run had it):
    # the weights' 3 heads are the description's first 3
    oc22, _ = _oc22_json(bundle, tmp_path / "oc22.json")
    spec = make_spec(tmp_path / "b", tiny_data, task="finetune", model_in=str(bundle["weights"]),
                     train={"input_json": str(oc22), "head_key": "oc22"})
    loaded = _load(spec)
    notes = " | ".join(loaded.notes)
    assert "hold 3 heads" in notes and f"its first 3 ({', '.join(mb.HEADS)})" in notes
    assert "new head 'oc22': readout initialised fresh" in notes and "E0s from oc22.json (e0_values)" in notes
    assert loaded.config["heads"] == ALL_HEADS
    for head in mb.HEADS:
        torch.testing.assert_close(mb.energies(loaded.model, val_structures, ALL_HEADS, head, 5.0),
                                   mb.energies(base, val_structures, mb.HEADS, head, 5.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("desc, message", [
    ({"heads": ALL_HEADS, "head_init": "pbe"}, "head_init: 'pbe' is not a head of the base model"),
    ({"heads": ALL_HEADS, "head_init": {"oc20": "omat_pbe"}}, "head_init: 'oc20' is not a new head"),
    ({"heads": ["omat_pbe", "oc22"]}, "heads must list every head of the base model"),
    ({"heads": ALL_HEADS, "r_max": 6.0}, "r_max: 6.0 differs from the base model's 5.0"),
    ({"heads": ALL_HEADS, "head_init": 3}, "head_init: expected a head name"),
])
def test_new_head_refusals(bundle, tiny_data, tmp_path, desc, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(desc))
    spec = make_spec(tmp_path / "r", tiny_data, task="finetune", model={"manifest": str(bundle["manifest"])},
                     train={"input_json": str(path), "head_key": "oc22"})
    with pytest.raises(ConfigError) as e:
        _load(spec)
    assert message in str(e.value) and "\n" not in str(e.value)
