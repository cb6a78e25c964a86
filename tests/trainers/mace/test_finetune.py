"""Fine-tuning: from a real mace_run_train .model, multi-head head_key + freeze=head_only, element checks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import TINY_MODEL, make_spec

pytestmark = pytest.mark.slow


def _mace_run_train() -> str:
    exe = Path(sys.executable).with_name("mace_run_train")
    return str(exe) if exe.exists() else shutil.which("mace_run_train") or "mace_run_train"


@pytest.fixture(scope="module")
def mace_model(tiny_data, tmp_path_factory) -> Path:
    """A .model written by a real mace_run_train run on the tiny training set (as extxyz)."""
    import ase.io

    from data.lmdb_dataset import LmdbDataset

    work = tmp_path_factory.mktemp("mace-run-train")
    ds = LmdbDataset(tiny_data["train"])
    frames = []
    for i in range(len(ds)):
        atoms = ds[i].to_atoms()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    xyz = work / "train.xyz"
    ase.io.write(xyz, frames, format="extxyz")
    cmd = [_mace_run_train(), "--name", "x", "--train_file", str(xyz), "--valid_fraction", "0.2", "--model", "MACE",
           "--num_channels", "8", "--max_L", "0", "--r_max", "4", "--batch_size", "4", "--max_num_epochs", "1",
           "--device", "cpu", "--default_dtype", "float32", "--E0s", "average", "--seed", "1",
           "--work_dir", str(work), "--energy_key", "REF_energy", "--forces_key", "REF_forces"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    model = work / "x.model"
    assert model.is_file(), proc.stderr[-3000:]
    return model


def test_finetune_from_mace_run_train_model(mace_model, tiny_data, tmp_path):
    import torch

    from launcher.job import run_job
    from launcher.core.layout import RunLayout, read_manifest
    from trainers.mace.model_io import load_mace_module

    base = load_mace_module(mace_model)
    run_dir = tmp_path / "ft"
    spec = make_spec(run_dir, tiny_data, task="finetune", model_in=str(mace_model),
                     train={"epochs": 1, "lr": 0.001})
    result = run_job(spec, echo=lambda *_: None)
    assert result.status == "finished" and result.result["epochs_done"] == 1
    lay = RunLayout.of(run_dir)
    m = read_manifest(lay.manifest)
    assert m["source_model"] == str(mace_model)
    assert m["z_table"] == [int(z) for z in base.atomic_numbers]
    tuned = torch.load(lay.best_model, weights_only=True)
    before = base.state_dict()
    assert set(tuned) == set(before)
    assert any(not torch.equal(tuned[k].float(), before[k].float()) for k in tuned if tuned[k].is_floating_point())
    # the base model's architecture came across: same E0s and scale as mace_run_train computed
    cfg = json.loads(lay.model_json.read_text())
    np.testing.assert_allclose(np.reshape(cfg["atomic_energies"], -1), base.atomic_energies_fn.atomic_energies.numpy().reshape(-1), rtol=1e-6)
    assert cfg["interaction_first"] == "RealAgnosticInteractionBlock"


def _save_model(cfg, path, seed=0):
    import torch

    from trainers.mace.model_config import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save(model, path)
    return model


def _resolved(tiny_data, **over):
    from data.lmdb_dataset import LmdbDataset
    from trainers.mace.model_config import check_model_config, resolve

    ds = LmdbDataset(tiny_data["train"])
    return resolve(check_model_config({**TINY_MODEL, **over}), [ds[i] for i in range(len(ds))])


def test_two_heads_head_only_changes_only_that_head(tiny_data, tmp_path):
    import torch

    from launcher.job import run_job
    from trainers.mace.graphs import collate, to_atomic_data
    from trainers.mace.model_config import build_model
    from data.lmdb_dataset import LmdbDataset

    torch.set_default_dtype(torch.float32)
    try:
        cfg = _resolved(tiny_data, heads=["pbe", "omat_pbe"])
        base = _save_model(cfg, tmp_path / "two.model")
    finally:
        torch.set_default_dtype(torch.float64)
    run_dir = tmp_path / "ft"
    spec = make_spec(run_dir, tiny_data, task="finetune", model_in=str(tmp_path / "two.model"),
                     train={"epochs": 2, "head_key": "omat_pbe", "freeze": "head_only", "weight_decay": 0.01})
    run_job(spec, echo=lambda *_: None)
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    after, before = ck["model"], base.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith("readouts.") for k in changed), changed

    # the other head predicts bit for bit as before; the tuned head does not
    ds = LmdbDataset(tiny_data["val"])
    structures = [ds[i] for i in range(4)]
    torch.set_default_dtype(torch.float32)
    try:
        tuned = build_model(cfg)
        tuned.load_state_dict(after)
        out = {}
        for head in ("pbe", "omat_pbe"):
            batch = collate(to_atomic_data(structures, cfg["atomic_numbers"], cfg["r_max"], cfg["heads"], head))
            e0 = base(batch.to_dict(), compute_force=False)["energy"]
            e1 = tuned(batch.to_dict(), compute_force=False)["energy"]
            out[head] = (e0.detach(), e1.detach())
    finally:
        torch.set_default_dtype(torch.float64)
    assert torch.equal(*out["pbe"])
    assert not torch.equal(*out["omat_pbe"])


def test_unknown_head_and_missing_elements_are_config_errors(tiny_data, tmp_path):
    import torch

    from launcher.core.errors import ConfigError
    from launcher.job import run_job

    torch.set_default_dtype(torch.float32)
    try:
        two = _resolved(tiny_data, heads=["pbe", "omat_pbe"])
        _save_model(two, tmp_path / "two.model")
        zs = two["atomic_numbers"]
        one = {**two, "heads": None, "atomic_numbers": zs[:-1], "atomic_energies": two["atomic_energies"][0][:-1],
               "atomic_inter_scale": two["atomic_inter_scale"][:1], "atomic_inter_shift": two["atomic_inter_shift"][:1]}
        _save_model(one, tmp_path / "few.model")
    finally:
        torch.set_default_dtype(torch.float64)
    spec = make_spec(tmp_path / "a", tiny_data, task="finetune", model_in=str(tmp_path / "two.model"),
                     train={"head_key": "mp_pbe"})
    with pytest.raises(ConfigError, match="head_key: 'mp_pbe' is not a head of this model; its heads: pbe, omat_pbe"):
        run_job(spec, echo=lambda *_: None)
    spec = make_spec(tmp_path / "b", tiny_data, task="finetune", model_in=str(tmp_path / "few.model"))
    with pytest.raises(ConfigError, match=rf"no parameters for elements .*Z={zs[-1]}"):
        run_job(spec, echo=lambda *_: None)
