"""FairChem checkpoints are read through the allow-list: a payload is refused (preflight and the child's
loader), a real checkpoint's contents still load, ``data.trust_pickles`` lifts the list.

The child's loader runs here in the launcher's interpreter (its torch has the same weights-only unpickler
as the FairChem env's); the end-to-end tests exercise it inside the FairChem env.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest

from launcher.core.schema import RunSpec


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fairchem_like(path: Path, **extra) -> dict:
    """What FairChem v1's BaseTrainer.save writes: weights, optimizer and scheduler state, config, metrics."""
    import numpy as np
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.SiLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    ckpt = {
        "epoch": 1, "step": 10,
        "state_dict": OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items()),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "normalizers": {"target": {"mean": torch.tensor(0.5), "std": torch.tensor(2.0)}},
        "config": {"model": {"name": "equiformer_v2", "num_layers": 2}, "cmd": {"timestamp_id": "x"}},
        "val_metrics": {"energy_mae": {"total": np.float64(3.0), "numel": 10, "metric": np.float64(0.3)}},
        "best_val_metric": np.float64(0.3), "primary_metric": "energy_mae",
        "ema": {"decay": 0.99, "num_updates": 10, "shadow_params": [p.detach().clone() for p in model.parameters()]},
        "amp": None, **extra,
    }
    torch.save(ckpt, path)
    return ckpt


def test_a_fairchem_checkpoint_loads_through_the_allow_list(tmp_path, monkeypatch):
    import torch

    from trainers.fairchem import checkpoint_io

    monkeypatch.delenv(checkpoint_io.TRUST_ENV, raising=False)
    want = _fairchem_like(tmp_path / "checkpoint.pt")
    got = checkpoint_io.load(str(tmp_path / "checkpoint.pt"))
    assert list(got["state_dict"]) == list(want["state_dict"])
    assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())
    assert float(got["best_val_metric"]) == 0.3 and got["config"] == want["config"]
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]


def test_the_child_refuses_a_payload_naming_it(tmp_path, monkeypatch, capsys):
    from trainers.fairchem import checkpoint_io

    monkeypatch.delenv(checkpoint_io.TRUST_ENV, raising=False)
    marker = tmp_path / "MARKER"
    _fairchem_like(tmp_path / "payload.pt", extra=_Touch(marker))
    with pytest.raises(SystemExit) as e:
        checkpoint_io.load(str(tmp_path / "payload.pt"))
    assert e.value.code == 2
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "system" in out and "data.trust_pickles=true" in out, out
    assert not marker.exists()


def test_the_opt_in_loads_what_the_list_lacks(tmp_path, monkeypatch):
    from fractions import Fraction

    from trainers.fairchem import checkpoint_io

    _fairchem_like(tmp_path / "noted.pt", note=Fraction(1, 3))
    monkeypatch.delenv(checkpoint_io.TRUST_ENV, raising=False)
    with pytest.raises(SystemExit):
        checkpoint_io.load(str(tmp_path / "noted.pt"))
    monkeypatch.setenv(checkpoint_io.TRUST_ENV, "1")
    assert checkpoint_io.load(str(tmp_path / "noted.pt"))["note"] == Fraction(1, 3)


@pytest.mark.parametrize("task", ["evaluate", "finetune", "export"])
def test_preflight_refuses_a_payload_checkpoint(tmp_path, task):
    from launcher.model_files import model_file_problems
    from launcher.preflight import check_spec

    marker = tmp_path / "MARKER"
    _fairchem_like(tmp_path / "payload.pt", extra=_Touch(marker))
    spec = RunSpec(backend="equiformer_v2", task=task, run_dir=str(tmp_path / "run"), device="cpu",
                   model_in=str(tmp_path / "payload.pt"))
    spec.data.test = spec.data.train = str(tmp_path / "missing.lmdb")
    problems = model_file_problems(spec)
    assert len(problems) == 1 and problems[0].startswith(f"model_in: {tmp_path / 'payload.pt'} refers to ")
    assert "system" in problems[0]
    assert problems[0] in check_spec(spec)
    spec.data.trust_pickles = True
    assert model_file_problems(spec) == []
    assert not marker.exists() and not (tmp_path / "run").exists()
