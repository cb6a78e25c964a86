"""The original implementation's MACE files: its model.json form and v1 manifest bundles, read as they are.

The bundle is built in ``mh_bundle``: a real multi-head ScaleShiftMACE with MACE-MH-1's flags (small
widths) saved as a ``.model``, its state dict, its description in the original form, and a v1
manifest recording both files' sha256.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from launcher.core.errors import ConfigError

from . import mh_bundle as mb
from .conftest import make_spec


@pytest.fixture(scope="module")
def val_structures(tiny_data):
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["val"])
    return [ds[i] for i in range(4)]


def test_origin_model_json_maps_to_our_config_and_rebuilds_the_module(bundle, val_structures):
    import torch

    from trainers.mace import model_config as mc
    from trainers.mace.origin_format import verify_against_module

    raw = json.loads(bundle["model_json"].read_text())
    assert list(raw) == mb.MH1_KEYS
    cfg = mc.load_model_json(bundle["model_json"])          # train.input_json accepts the form
    assert cfg["atomic_numbers"] == mb.Z_TABLE and cfg["heads"] == mb.HEADS and cfg["r_max"] == 5.0
    assert cfg["num_cutoff_basis"] == 5 and cfg["interaction"] == "RealAgnosticResidualNonLinearInteractionBlock"
    assert cfg["atomic_inter_scale"] == pytest.approx([0.8, 0.9, 1.0])
    assert np.asarray(cfg["atomic_energies"]).shape == (len(mb.HEADS), len(mb.Z_TABLE))
    assert mc.resolve(cfg, []) == cfg          # nothing left to compute from data
    base = torch.load(bundle["model"], weights_only=False)
    torch.set_default_dtype(torch.float32)
    try:
        model = mc.build_model(cfg)
    finally:
        torch.set_default_dtype(torch.float64)
    model.load_state_dict(torch.load(bundle["weights"], weights_only=True), strict=True)
    verify_against_module(raw, model, source="model.json")
    for head in mb.HEADS:
        assert torch.equal(mb.energies(base, val_structures, mb.HEADS, head, 5.0),
                           mb.energies(model, val_structures, mb.HEADS, head, 5.0))


@pytest.mark.parametrize("change, message", [
    ({"use_cueq": True}, "key 'use_cueq' of the original model description has no equivalent"),
    ({"use_embedding_readout": True}, "use_embedding_readout: True is not supported"),
    ({"model_type": "MACE"}, "model_type: 'MACE' is not supported"),
    ({"interactions": "x"}, "interactions: expected a list"),
    ({"num_channels": 16}, "num_channels: 16 but hidden_irreps 8x0e+8x1o has 8 scalar channels"),
    ({"readouts": [{}, {"hidden_irreps": "6x0e"}]}, "readouts[-1].hidden_irreps: 6x0e is not 3 heads x MLP_irreps"),
    ({"scale_shift": {"scale": [1.0], "shift": [0.0]}}, "scale_shift.scale: 1 values for 3 heads"),
    ({"e0_values": [[0.0] * 9]}, "e0_values: 1 rows for 3 heads"),
])
def test_original_keys_that_cannot_be_mapped_are_refused(bundle, change, message):
    from trainers.mace.model_config import check_model_config

    raw = {**json.loads(bundle["model_json"].read_text()), **change}
    with pytest.raises(ConfigError) as e:
        check_model_config(raw, source="model.json")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_description_that_the_built_module_does_not_match_is_refused(bundle):
    import torch

    from trainers.mace.model_config import build_model, check_model_config
    from trainers.mace.origin_format import verify_against_module

    raw = json.loads(bundle["model_json"].read_text())
    raw["products"][0]["contractions"][1]["path_count"] += 1
    raw["interactions"][1]["avg_num_neighbors"] = 3.0
    with pytest.raises(ConfigError, match=r"interactions\[1\]\.avg_num_neighbors: 3.0 differs"):
        check_model_config(raw)
    raw["interactions"][1]["avg_num_neighbors"] = 12.0
    torch.set_default_dtype(torch.float32)
    try:
        model = build_model(check_model_config(raw))
    finally:
        torch.set_default_dtype(torch.float64)
    with pytest.raises(ConfigError, match=r"products\[0\]\.contractions\[1\]\.path_count: \d+ in the description"):
        verify_against_module(raw, model, source="model.json")


@pytest.mark.slow
def test_finetune_and_evaluate_from_a_v1_bundle(bundle, tiny_data, tmp_path):
    import torch

    from launcher.core.layout import RunLayout, read_manifest
    from launcher.job import run_job

    ft = tmp_path / "ft"
    spec = make_spec(ft, tiny_data, task="finetune",
                     model={"manifest": str(bundle["manifest"]), "weights": str(bundle["weights"])},
                     data={"train_indices": {"max_samples": 8, "shuffle": True, "seed": 1}},
                     train={"epochs": 1, "lr": 1e-3, "optimizer": "adamw", "head_key": "omat_pbe", "accum_steps": 2})
    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished"
    lay = RunLayout.of(ft)
    log = lay.train_log.read_text()
    assert f"weights {bundle['weights']}: sha256 matches {bundle['manifest']}" in log
    assert "head=omat_pbe" in log
    m = read_manifest(lay.manifest)
    assert m["heads"] == mb.HEADS and m["z_table"] == mb.Z_TABLE and m["head"] == "omat_pbe"
    tuned = torch.load(lay.best_model, weights_only=True)
    base = torch.load(bundle["weights"], weights_only=True)
    assert set(tuned) == set(base)
    assert any(not torch.equal(tuned[k], base[k]) for k in base if base[k].is_floating_point())

    # evaluate with the bundle itself (model.manifest alone: the weights it names), per head
    base_model = torch.load(bundle["model"], weights_only=False)
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["test"])
    structures = [ds[i] for i in range(len(ds))]
    for head in ("matpes_r2scan", "spice_wB97M"):
        ev = tmp_path / f"ev-{head}"
        spec = make_spec(ev, tiny_data, task="evaluate", model={"manifest": str(bundle["manifest"])},
                         train={"head_key": head}, eval={"split": "test"})
        out = run_job(spec, echo=lambda *_: None)
        assert out.status == "finished" and out.result["metrics"]["head"] == head
        pred = np.loadtxt(RunLayout.of(ev).eval_dir / "predictions.csv", delimiter=",", skiprows=1, usecols=(1,))
        want = mb.energies(base_model, structures, mb.HEADS, head, 5.0).numpy()
        np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-4)


def test_weights_that_differ_from_the_manifest_sha256_are_refused(bundle, tiny_data, tmp_path):
    import torch

    from trainers.mace.model_io import load_model

    copy = tmp_path / "bundle"
    shutil.copytree(bundle["manifest"].parent, copy / "manifest_bundle")
    (copy / "raw").mkdir()
    shutil.copy(bundle["model"], copy / "raw" / bundle["model"].name)
    weights = copy / "manifest_bundle" / bundle["weights"].name
    state = torch.load(weights, weights_only=True)
    state["readouts.0.linear.weight"] = state["readouts.0.linear.weight"] + 1.0
    torch.save(state, weights)
    manifest = copy / "manifest_bundle" / bundle["manifest"].name
    spec = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model={"manifest": str(manifest)})
    with pytest.raises(ConfigError) as e:
        load_model(spec)
    msg = str(e.value)
    assert str(weights) in msg and "sha256" in msg and str(manifest) in msg and "\n" not in msg
    # named explicitly as the manifest's own weights: still checked
    spec = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model={"manifest": str(manifest), "weights": str(weights)})
    with pytest.raises(ConfigError, match="sha256"):
        load_model(spec)
    # model.weights elsewhere overrides the manifest's weights: taken as given
    other = tmp_path / "mine.pt"
    shutil.copy(weights, other)
    spec = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model={"manifest": str(manifest), "weights": str(other)})
    loaded = load_model(spec)
    assert loaded.source == str(other) and any("in place of" in n for n in loaded.notes)
    # a manifest whose weights entry is gone falls back to its source .model (sha256 checked too)
    m = json.loads(manifest.read_text())
    del m["weights"]
    manifest.write_text(json.dumps(m))
    spec = make_spec(tmp_path / "ev", tiny_data, task="evaluate", model={"manifest": str(manifest)})
    assert load_model(spec).source.endswith("small-mh.model")
    (copy / "raw" / bundle["model"].name).write_bytes(b"x" + bundle["model"].read_bytes())
    with pytest.raises(ConfigError, match="small-mh.model has sha256"):
        load_model(spec)


def test_preflight_reports_an_unmappable_original_key(bundle, tiny_data, tmp_path):
    from trainers.mace.backend import MaceBackend

    raw = {**json.loads(bundle["model_json"].read_text()), "use_cueq": True}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    spec = make_spec(tmp_path / "r", tiny_data, task="finetune", model={"manifest": str(bundle["manifest"])},
                     train={"input_json": str(path)})
    problems = MaceBackend().check(spec)
    assert len(problems) == 1 and "'use_cueq'" in problems[0] and str(path) in problems[0]
