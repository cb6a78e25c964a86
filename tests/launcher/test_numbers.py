"""Numbers that cannot train (NaN, inf, seeds out of range, NaN in a model.json or a manifest's model) are refused
by preflight with one line naming the key, dry run and launch alike, through both doors, before any run_dir."""
from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Dict

import pytest
import yaml

from launcher.core.schema import RunSpec, iter_fields, set_key, validate
from tests.launcher.conftest import run_plain_door

REPO = Path(__file__).resolve().parents[2]


def _float_keys():
    out = []
    for key, _f, t in iter_fields():
        args = typing.get_args(t)
        if t is float or (typing.get_origin(t) is typing.Union and float in args):
            out.append(key)
    return out


FLOAT_KEYS = _float_keys()


def test_the_schema_has_float_keys_to_check():
    assert {"train.lr", "train.energy_weight", "train.force_weight", "data.cache_budget_gb"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_must_be_finite(key, value):
    spec = RunSpec(run_dir="/tmp/r", device="cpu")
    spec.data.train = "/d/t.lmdb"
    spec.train.input_json = "/m.json"
    set_key(spec, key, value)
    mine = [p for p in validate(spec) if p.split(":", 1)[0] == key]
    assert mine == [f"{key}: must be a finite number, got {value}"]


@pytest.mark.parametrize("key", ["seed", "train.seed", "data.train_indices.seed", "data.val_indices.seed",
                                 "data.test_indices.seed"])
@pytest.mark.parametrize("value, ok", [(0, True), (2**64 - 1, True), (2**64, False), (-1, False), (10**30, False)])
def test_seeds_within_64_bits(key, value, ok):
    spec = RunSpec(run_dir="/tmp/r", device="cpu")
    spec.data.train = "/d/t.lmdb"
    spec.train.input_json = "/m.json"
    set_key(spec, key, value)
    mine = [p for p in validate(spec) if p.startswith(f"{key}:")]
    assert (mine == []) == ok, mine
    if not ok:
        assert "0..2**64-1" in mine[0]


# ------------------------------------------------------------------ through the doors, dry run and launch

def _model_json(tmp_path: Path, **over) -> Path:
    body = json.loads((REPO / "conf" / "mace" / "tiny.json").read_text())
    body.update(over)
    p = tmp_path / "model.json"
    p.write_text(json.dumps(body))  # json writes NaN as the bare word NaN, which json.loads reads back
    return p


CASES = {
    "lr-nan": ({"train.lr": "nan"}, "train.lr"),
    "lr-inf": ({"train.lr": "inf"}, "train.lr"),
    "energy-weight-nan": ({"train.energy_weight": "nan"}, "train.energy_weight"),
    "force-weight-inf": ({"train.force_weight": "inf"}, "train.force_weight"),
    "seed-beyond-64-bits": ({"seed": str(2**64)}, "seed"),
    "train-seed-negative": ({"train.seed": "-3"}, "train.seed"),
    "r-max-nan": ({"@model": {"r_max": float("nan")}}, "train.input_json"),
    "radial-nan-deep": ({"@model": {"atomic_inter_scale": [float("inf")]}}, "train.input_json"),
}


def _keys(tmp_path: Path, demo_data: Dict[str, Path], over: Dict, run_dir: Path) -> Dict[str, str]:
    model = over.get("@model")
    keys = {"backend": "mace", "task": "train", "device": "cpu", "run_dir": str(run_dir), "train.epochs": "1",
            "train.input_json": str(_model_json(tmp_path, **(model or {}))),
            "data.train": str(demo_data["train"]), "data.val": str(demo_data["val"])}
    keys.update({k: v for k, v in over.items() if not k.startswith("@")})
    return keys


def _plain(tmp_path: Path, keys: Dict[str, str], dry: bool, capsys):
    code, _out, err = run_plain_door(tmp_path, keys, dry, capsys,
                                     value=lambda leaf, v: yaml.safe_load(v) if leaf in ("seed", "epochs") else v)
    return code, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_and_launch_refuse_unusable_numbers(case, tmp_path, demo_data, launch, capsys):
    over, key = CASES[case]
    for door in ("launch", "launch-run"):
        for dry in (True, False):
            run_dir = tmp_path / f"out-{door}-{dry}"
            keys = _keys(tmp_path, demo_data, over, run_dir)
            if door == "launch":
                code, _out, err = launch(*[f"{k}={v}" for k, v in keys.items()], f"dry_run={str(dry).lower()}")
            else:
                code, err = _plain(tmp_path, keys, dry, capsys)
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            assert code == 2, (door, dry, err)
            assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), (door, dry, err)
            assert not run_dir.exists()


def test_a_sweep_names_the_point_with_nan(tmp_path, demo_data, launch):
    keys = _keys(tmp_path, demo_data, {}, tmp_path / "unused")
    keys.pop("run_dir")
    code, _out, err = launch("-m", *[f"{k}={v}" for k, v in keys.items()], "train.lr=0.01,nan",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}", "dry_run=true")
    assert code == 2 and "[1: train.lr=nan] train.lr: must be a finite number, got nan" in err, err
    assert not (tmp_path / "sweep").exists()


def test_manifest_model_with_nan_is_refused(tmp_path):
    from launcher.models import model_input_problems

    (tmp_path / "w.pt").write_bytes(b"PK")  # never read: the model config is refused first
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"manifest_version": 1, "backend": "mace", "weights": {"path": "w.pt"},
                             "model": {"r_max": math.nan}}))
    spec = RunSpec(backend="mace", task="finetune", run_dir=str(tmp_path / "r"))
    spec.model.manifest = str(m)
    assert model_input_problems(spec) == [f"model.manifest: {m}: the model's r_max is nan; expected a finite number"]


def test_fairchem_config_with_nan_is_refused_in_the_dry_run(tmp_path, demo_data, launch):
    cfg = tmp_path / "fc.yml"
    cfg.write_text("model: {name: equiformer_v2, cutoff: .nan}\noptim: {batch_size: 2}\n")
    for dry in ("true", "false"):
        code, _out, err = launch("backend=equiformer_v2", "task=train", "device=cpu", f"train.config_yml={cfg}",
                                 f"data.train={demo_data['train']}", f"run_dir={tmp_path / 'r'}", f"dry_run={dry}")
        assert code == 2 and "train.config_yml: model.cutoff is nan; expected a finite number" in err, err
        assert not (tmp_path / "r").exists()


def test_fairchem_seeds_fit_numpys_legacy_generator(tmp_path):
    """FairChem seeds numpy's legacy generator with --seed: 2**32 passes the schema and is refused by the backend."""
    from launcher.backends import backend_problems

    spec = RunSpec(backend="gemnet_oc", task="train", device="cpu", run_dir=str(tmp_path / "r"), seed=2**32)
    assert validate(spec) == [p for p in validate(spec) if not p.startswith("seed:")]
    mine = [p for p in backend_problems(spec) if p.startswith("seed:")]
    assert mine == [f"seed: backend=gemnet_oc passes it to FairChem, which seeds numpy's legacy generator: must be "
                    f"in 0..2**32-1, got {2**32}"]
    spec.seed, spec.train.seed = 7, 2**32 - 1
    assert not [p for p in backend_problems(spec) if "seed" in p.split(":", 1)[0]]
