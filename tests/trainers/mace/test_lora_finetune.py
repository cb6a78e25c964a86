"""``train.freeze=lora`` end to end: the real CLI, a plain merged model out, export, exact resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, TINY_MODEL, make_spec
from .test_resume_drift import _differences, _run, _state

pytestmark = pytest.mark.slow

RANK = 4


@pytest.fixture(scope="module")
def base_model(tiny_data, tmp_path_factory):
    """A tiny float64 MACE model with vector features, saved as a mace ``.model`` (as mace_run_train writes)."""
    import torch

    from data.lmdb_dataset import LmdbDataset
    from trainers.mace.model_config import build_model, check_model_config, resolve

    ds = LmdbDataset(tiny_data["train"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = resolve(check_model_config({**TINY_MODEL, "max_L": 1}), [ds[i] for i in range(len(ds))])
        torch.manual_seed(0)
        model = build_model(cfg)
    finally:
        torch.set_default_dtype(old)
    path = tmp_path_factory.mktemp("lora-base") / "base.model"
    torch.save(model, path)
    return path, cfg, {k: v.clone() for k, v in model.state_dict().items()}


def _launch(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", "from launcher.cli import main; main()", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)


def _adapted(cfg, base_state, freeze):
    """The adapted model a checkpoint describes: base weights plus its adapters, live (not merged)."""
    from trainers.mace.lora import PATHS_KEY, attach
    from trainers.mace.model_config import build_model

    model = build_model(cfg)
    model.load_state_dict(base_state)
    layers = attach(model, freeze["rank"], freeze["alpha"], freeze["blocks"])
    for n, m in layers.items():
        assert n in freeze["base"]
        getattr(m, PATHS_KEY).load_state_dict(freeze["adapters"][n])
    return model


def test_lora_finetune_through_the_cli_gives_plain_merged_models(base_model, tiny_data, tmp_path):
    import torch
    from mace.calculators import MACECalculator

    from data.lmdb_dataset import LmdbDataset
    from trainers.mace.graphs import collate, to_atomic_data
    from trainers.mace.model_config import build_model, heads_of

    path, cfg, base_state = base_model
    run_dir = tmp_path / "ft"
    r = _launch(tmp_path, "backend=mace", "task=finetune", f"model_in={path}", "train.freeze=lora",
                f"train.lora_rank={RANK}", "device=cpu", "train.dtype=float64", "train.epochs=2",
                "train.batch_size=4", "train.lr=0.02", "train.progress_bar=false", f"data.train={tiny_data['train']}",
                f"data.val={tiny_data['val']}", f"run_dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    log = (run_dir / "logs" / "train.log").read_text()
    line = next(ln for ln in log.splitlines() if "train.freeze=lora: adapters" in ln)
    assert f"rank {RANK}" in line and "trainable" in line and line.split(" ", 2)[2] in r.stderr   # console too

    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    freeze = ck["freeze"]
    assert freeze["kind"] == "lora" and set(ck["model"]) == set(base_state)
    for n, w in freeze["base"].items():   # base weights bit for bit
        assert torch.equal(w, base_state[f"{n}.weight"]), n
    changed = {k for k in base_state if not torch.equal(ck["model"][k], base_state[k])}
    assert changed and changed <= {f"{n}.weight" for n in freeze["base"]}, changed

    manifest = json.loads((run_dir / "artifacts" / "manifest.json").read_text())
    assert manifest["lora"] == {"rank": RANK, "alpha": RANK, "blocks": ["interactions", "products", "readouts"],
                                "merged": True}
    best = torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)
    build_model(cfg).load_state_dict(best, strict=True)   # a plain mace state dict
    MACECalculator(model_paths=str(run_dir / "artifacts" / "best_model.model"), device="cpu", default_dtype="float64")

    exported = tmp_path / "exp"
    r = _launch(tmp_path, "backend=mace", "task=export", f"model_in={run_dir / 'checkpoints' / 'checkpoint.pt'}",
                "device=cpu", "train.dtype=float64", f"run_dir={exported}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (exported / "artifacts" / "best_model.model-lammps.pt").is_file()

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        adapted = _adapted(cfg, base_state, freeze)
        calc = MACECalculator(model_paths=str(exported / "artifacts" / "best_model.model"), device="cpu",
                              default_dtype="float64")
        ds = LmdbDataset(tiny_data["val"])
        for i in range(3):
            s = ds[i]
            atoms = s.to_atoms()
            atoms.calc = calc
            heads = heads_of(cfg)
            out = adapted(collate(to_atomic_data([s], cfg["atomic_numbers"], cfg["r_max"], heads, heads[0])).to_dict(),
                          compute_force=True)
            assert abs(atoms.get_potential_energy() - out["energy"].detach()[0].item()) < 1e-6
            np.testing.assert_allclose(atoms.get_forces(), out["forces"].detach().numpy(), rtol=0, atol=1e-6)
    finally:
        torch.set_default_dtype(old)


def _spec(run_dir, tiny_data, base):
    return make_spec(run_dir, tiny_data, task="finetune", model_in=str(base), train={
        "freeze": "lora", "lora_rank": RANK, "lora_alpha": 8.0, "epochs": 3, "batch_size": 6, "dtype": "float64",
        "lr": 0.02, "scheduler": "step", "ema_decay": 0.9, "log_every": 1, "max_grad_norm": None})


def _freeze_differences(a, b):
    import torch

    fa, fb = a[0]["freeze"], b[0]["freeze"]
    out = [f"freeze.base.{n}" for n in fa["base"] if not torch.equal(fa["base"][n], fb["base"][n])]
    return out + [f"freeze.adapters.{n}.{k}" for n in fa["adapters"] for k in fa["adapters"][n]
                  if not torch.equal(fa["adapters"][n][k], fb["adapters"][n][k])]


def test_lora_run_stopped_mid_epoch_resumes_bit_identical(base_model, tiny_data, tmp_path, monkeypatch):
    from trainers.mace.freeze import LoraFreeze

    path = base_model[0]
    straight = tmp_path / "straight"
    assert _run(_spec(straight, tiny_data, path)).status == "finished"
    run_dir = tmp_path / "stopped"
    spec = _spec(run_dir, tiny_data, path)
    assert _run(spec, stop_after=6).status == "preempted"
    assert _run(spec).status == "finished"
    a, b = _state(straight), _state(run_dir)
    assert a[0]["ema"] is not None and a[0]["freeze"]["kind"] == "lora"
    assert _differences(a, b) == [] and _freeze_differences(a, b) == []

    # the checkpoint as a model (evaluate / export / finetune from it): its base weights and EMA adapters, merged
    _check_ema_merge(run_dir, tiny_data, base_model)

    # the guard: a resume that drops the adapters (fresh ones on the merged weights) ends elsewhere
    forgetful = tmp_path / "forgetful"
    spec = _spec(forgetful, tiny_data, path)
    _run(spec, stop_after=6)
    monkeypatch.setattr(LoraFreeze, "load_state_dict", lambda self, st: None)
    _run(spec)
    assert _differences(a, _state(forgetful)) != []


def _check_ema_merge(run_dir, tiny_data, base_model):
    import torch

    from trainers.mace.lora import adapter_parameters, target_layers
    from trainers.mace.model_io import load_model

    _path, cfg, base_state = base_model
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        spec = make_spec(run_dir.parent / "exp", tiny_data, task="export", train={"dtype": "float64"},
                         model_in=str(run_dir / "checkpoints" / "checkpoint.pt"))   # loaded in the run's dtype
        loaded = load_model(spec).model
        want = _adapted(cfg, base_state, ck["freeze"])
        with torch.no_grad():
            for p, s in zip(adapter_parameters(target_layers(want, ck["freeze"]["blocks"])),
                            ck["ema"]["shadow_params"], strict=True):
                p.copy_(s)
    finally:
        torch.set_default_dtype(old)
    got, exp = loaded.state_dict(), want.state_dict()
    assert set(got) == set(exp) and all(torch.equal(got[k], exp[k]) for k in exp)
    assert not all(torch.equal(got[k], ck["model"][k]) for k in exp)   # the EMA, not the last adapters
