"""model.json: mace_run_train names, strict keys, data-derived values written back, exact rebuild."""
from __future__ import annotations

import json

import numpy as np
import pytest

from launcher.core.errors import ConfigError
from trainers.mace import model_config as mc

from .conftest import TINY_MODEL


def test_unknown_key_names_key_and_valid_ones(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({**TINY_MODEL, "num_chanels": 8}))
    with pytest.raises(ConfigError) as e:
        mc.load_model_json(p)
    msg = str(e.value)
    assert "num_chanels" in msg and "did you mean 'num_channels'" in msg and "r_max" in msg
    assert "\n" not in msg


def test_bad_values_are_config_errors(tmp_path):
    for bad in ({"model": "BOTNet"}, {"max_L": -1}, {"r_max": 0}, {"gate": "relu"}, {"radial_MLP": "[1,"}):
        with pytest.raises(ConfigError):
            mc.check_model_config({**TINY_MODEL, **bad})
    with pytest.raises(ConfigError, match="train.input_json: file not found"):
        mc.load_model_json(tmp_path / "missing.json")


def test_resolve_computes_data_values_and_mace_defaults(tiny_data):
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["train"])
    structures = [ds[i] for i in range(len(ds))]
    cfg = mc.resolve(mc.check_model_config(dict(TINY_MODEL)), structures)
    zs = sorted({int(z) for s in structures for z in s.numbers})
    assert cfg["atomic_numbers"] == zs
    assert len(cfg["atomic_energies"]) == len(zs)
    assert cfg["avg_num_neighbors"] > 1
    assert cfg["atomic_inter_shift"] == [0.0]                  # --model MACE: no shift
    f = np.concatenate([s.forces.reshape(-1) for s in structures])
    assert cfg["atomic_inter_scale"][0] == pytest.approx(float(np.sqrt(np.mean(f**2))))
    assert cfg["interaction_first"] == "RealAgnosticInteractionBlock"
    assert cfg["hidden_irreps"] == "8x0e"
    # resolving again changes nothing: a resolved model.json needs no data
    assert mc.resolve(cfg, []) == cfg


def test_explicit_e0s_and_missing_elements(tiny_data):
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["train"])
    structures = [ds[i] for i in range(len(ds))]
    zs = sorted({int(z) for s in structures for z in s.numbers})
    e0 = {str(z): -float(z) for z in zs}
    cfg = mc.resolve(mc.check_model_config({**TINY_MODEL, "E0s": e0}), structures)
    assert cfg["atomic_energies"] == [-float(z) for z in zs]
    with pytest.raises(ConfigError, match="E0s: no value for elements"):
        mc.resolve(mc.check_model_config({**TINY_MODEL, "E0s": {str(zs[0]): 1.0}}), structures)
    with pytest.raises(ConfigError, match="lacks elements"):
        mc.resolve(mc.check_model_config({**TINY_MODEL, "atomic_numbers": zs[:1]}), structures)


def test_rebuild_from_module_is_exact(tiny_data):
    import torch

    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["train"])
    structures = [ds[i] for i in range(4)]
    torch.manual_seed(0)
    cfg = mc.resolve(mc.check_model_config({**TINY_MODEL, "heads": ["a", "b"]}), structures)
    model = mc.build_model(cfg)
    back = mc.config_from_module(model)
    again = mc.build_model(back)
    again.load_state_dict(model.state_dict())
    for (n1, t1), (n2, t2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    assert back["heads"] == ["a", "b"] and back["atomic_numbers"] == cfg["atomic_numbers"]
    assert back["avg_num_neighbors"] == pytest.approx(cfg["avg_num_neighbors"])
