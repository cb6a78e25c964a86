"""LoRA adapters on real mace-torch models: start equal, stay equivariant, train alone, merge exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from launcher.core.errors import ConfigError

from .conftest import TINY_MODEL

BLOCKS = ["interactions", "products", "readouts"]


@pytest.fixture
def float64():
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def structures(tiny_data):
    from data.lmdb_dataset import LmdbDataset

    ds = LmdbDataset(tiny_data["train"])
    return [ds[i] for i in range(8)]


def _model(structures, seed=0):
    """A resolved tiny MACE model with vector features (max_L=1), so that every irrep path kind is adapted."""
    import torch

    from trainers.mace.model_config import build_model, check_model_config, resolve

    cfg = resolve(check_model_config({**TINY_MODEL, "max_L": 1}), structures)
    torch.manual_seed(seed)
    return build_model(cfg), cfg


def _batch(structures, cfg):
    from trainers.mace.graphs import collate, to_atomic_data
    from trainers.mace.model_config import heads_of

    heads = heads_of(cfg)
    return collate(to_atomic_data(structures, cfg["atomic_numbers"], cfg["r_max"], heads, heads[0]))


def _train_adapters(model, layers, batch, steps=4):
    import torch

    from mace.modules.loss import WeightedEnergyForcesLoss
    from trainers.mace.lora import adapter_parameters

    opt = torch.optim.Adam(adapter_parameters(layers), lr=0.05)
    loss_fn = WeightedEnergyForcesLoss(energy_weight=1.0, forces_weight=1.0)
    for _ in range(steps):
        opt.zero_grad()
        out = model(batch.to_dict(), training=True, compute_force=True)
        loss_fn(pred=out, ref=batch).backward()
        opt.step()


def _rotated(s, rot):
    cell = None if s.cell is None else np.asarray(s.cell) @ rot.T
    return dataclasses.replace(s, positions=np.asarray(s.positions) @ rot.T, cell=cell)


def test_adapted_model_starts_equal_trains_only_adapters_and_stays_equivariant(structures, float64):
    import torch
    from scipy.spatial.transform import Rotation

    from trainers.mace.lora import PATHS_KEY, attach, count

    model, cfg = _model(structures)
    batch = _batch(structures[:4], cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    e_base = model(batch.to_dict(), compute_force=False)["energy"].detach()
    layers = attach(model, 4, 8.0, BLOCKS)
    assert {n.split(".")[0] for n in layers} == set(BLOCKS)
    assert torch.equal(model(batch.to_dict(), compute_force=False)["energy"].detach(), e_base)
    trainable, total = count(model, layers)
    assert 0 < trainable < total and {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if f".{PATHS_KEY}." in n}

    _train_adapters(model, layers, batch)
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"
    assert all(getattr(m, PATHS_KEY).delta().abs().max() > 1e-4 for m in layers.values())
    assert not torch.allclose(model(batch.to_dict(), compute_force=False)["energy"].detach(), e_base, atol=1e-4)

    rot = Rotation.random(random_state=7).as_matrix()
    plain = _batch(structures[:4], cfg)
    turned = _batch([_rotated(s, rot) for s in structures[:4]], cfg)
    a = model(plain.to_dict(), compute_force=True)
    b = model(turned.to_dict(), compute_force=True)
    np.testing.assert_allclose(b["energy"].detach().numpy(), a["energy"].detach().numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["forces"].detach().numpy(), a["forces"].detach().numpy() @ rot.T, rtol=0, atol=1e-6)


def test_state_dict_is_the_merged_plain_model_and_merge_is_exact(structures, float64, tmp_path):
    import torch
    from mace.calculators import MACECalculator

    from trainers.mace.lora import attach, merge
    from trainers.mace.model_config import build_model
    from trainers.mace.model_io import export_mace_model

    model, cfg = _model(structures)
    plain_keys = set(model.state_dict())
    layers = attach(model, 2, 2.0, ["interactions", "products"])
    batch = _batch(structures[:4], cfg)
    _train_adapters(model, layers, batch)
    adapted = model(batch.to_dict(), compute_force=True)

    state = model.state_dict()
    assert set(state) == plain_keys   # no adapter keys: loads into a model built without this code
    merged = build_model(cfg)
    merged.load_state_dict(state, strict=True)
    out = merged(batch.to_dict(), compute_force=True)
    assert torch.equal(out["energy"], adapted["energy"]) and torch.equal(out["forces"], adapted["forces"])

    export_mace_model(merged, tmp_path / "merged.model")
    calc = MACECalculator(model_paths=str(tmp_path / "merged.model"), device="cpu", default_dtype="float64")
    for i, s in enumerate(structures[:4]):
        atoms = s.to_atoms()
        atoms.calc = calc
        one = model(_batch([s], cfg).to_dict(), compute_force=True)
        assert abs(atoms.get_potential_energy() - one["energy"].detach()[0].item()) < 1e-6
        np.testing.assert_allclose(atoms.get_forces(), one["forces"].detach().numpy(), rtol=0, atol=1e-6)

    merge(layers)   # folded in place: a plain module again, the same predictions
    assert set(model.state_dict()) == plain_keys and not any(p.requires_grad for p in model.parameters())
    again = model(batch.to_dict(), compute_force=True)
    np.testing.assert_allclose(again["energy"].detach().numpy(), adapted["energy"].detach().numpy(), rtol=0, atol=1e-9)


def test_rank_beyond_the_widest_path_and_no_layers_are_config_errors(structures, float64):
    from trainers.mace.lora import attach, target_layers, widest_rank

    model, _ = _model(structures)
    widest = widest_rank(target_layers(model, BLOCKS))
    assert widest == TINY_MODEL["num_channels"]
    with pytest.raises(ConfigError, match=rf"^train\.lora_rank: {widest + 1} .*at most {widest}$"):
        attach(model, widest + 1, 1.0, BLOCKS)
    assert all(p.requires_grad for p in model.parameters())   # refused before anything changed
    with pytest.raises(ConfigError, match=r"^train\.lora_blocks: no e3nn o3\.Linear"):
        attach(model, 2, 2.0, ["embedding"])
