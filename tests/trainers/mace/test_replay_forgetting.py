"""Replay keeps what the base model knew: a small MACE model trained on domain A (EMT Cu/Au alloys at their
equilibrium lattice), fine-tuned on domain B (the same alloys compressed by 7 %), with and without replay of A.
With replay the error on A after fine-tuning is lower than without, and B is still learnt (better than the base
model on B). Real mace-torch models, real LMDBs written here with ASE's EMT."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import TINY_MODEL, make_spec

pytestmark = pytest.mark.slow


def _domain(n: int, seed: int, scale: float) -> list:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * scale).repeat((2, 2, 2))
        numbers = atoms.numbers.copy()
        numbers[rng.random(len(atoms)) < 0.3] = 79
        atoms.numbers = numbers
        atoms.positions += rng.normal(0.0, 0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out


def _write(atoms: list, path: Path) -> Path:
    from data.convert import atoms_to_structure
    from data.writer import write_lmdb

    write_lmdb([atoms_to_structure(a, i, "energy", "forces", None, path.parent) for i, a in enumerate(atoms)], path)
    return path


def _evaluate(model_dir: Path, test: Path, out: Path) -> dict:
    from launcher.job import run_job

    spec = make_spec(out, {"test": test}, task="evaluate", model_in=str(model_dir), eval={"split": "test"})
    assert run_job(spec, echo=lambda *_: None).status == "finished"
    return json.loads((out / "eval" / "metrics.json").read_text())


def test_replay_keeps_the_base_domain_and_still_learns_the_new_one(tmp_path, tiny_model_json):
    from launcher.job import run_job

    a = {s: _write(_domain(n, seed, 1.0), tmp_path / "a" / f"{s}.lmdb") for s, n, seed in
         (("train", 48, 1), ("val", 8, 2), ("test", 16, 3), ("pool", 48, 4))}
    b = {s: _write(_domain(n, seed, 0.93), tmp_path / "b" / f"{s}.lmdb") for s, n, seed in
         (("train", 24, 5), ("val", 8, 6), ("test", 16, 7))}
    base = tmp_path / "base"
    spec = make_spec(base, {"train": a["train"], "val": a["val"]},
                     train={"input_json": str(tiny_model_json), "epochs": 25, "lr": 0.01, "batch_size": 4})
    assert run_job(spec, echo=lambda *_: None).status == "finished"

    def finetune(name: str, replay: dict) -> Path:
        run = tmp_path / name
        s = make_spec(run, {"train": b["train"], "val": b["val"]}, task="finetune", model_in=str(base),
                      data={"replay": replay}, train={"epochs": 15, "lr": 0.01, "batch_size": 4})
        assert run_job(s, echo=lambda *_: None).status == "finished"
        return run

    plain = finetune("plain", {})
    kept = finetune("replay", {"paths": [str(a["pool"])], "max_samples": 40, "val_samples": 8, "ratio": 1.0})
    err = {name: {dom: _evaluate(run, test, tmp_path / f"eval-{name}-{dom}")
                  for dom, test in (("a", a["test"]), ("b", b["test"]))}
           for name, run in (("base", base), ("plain", plain), ("replay", kept))}
    e = {k: {d: v[d]["energy_rmse_per_atom"] for d in v} for k, v in err.items()}
    f = {k: {d: v[d]["force_rmse"] for d in v} for k, v in err.items()}
    print("energy_rmse_per_atom", e, "force_rmse", f)
    assert e["plain"]["a"] > e["base"]["a"]                    # fine-tuning on B alone forgets A ...
    assert e["replay"]["a"] < 0.7 * e["plain"]["a"]            # ... replay keeps much of it
    assert f["replay"]["a"] < f["plain"]["a"]
    assert e["replay"]["b"] < 0.7 * e["base"]["b"]             # and B is still learnt
