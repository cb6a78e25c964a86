"""Model inputs the job's loading would refuse are refused by preflight: a dry run and the launch give the same
verdict (exit 2, one line naming the key and file), through both doors, and no run_dir is made."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import yaml

from tests.launcher.conftest import run_plain_door

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A real torch.save archive (what a manifest's weights are)."""
    import torch

    p = tmp_path_factory.mktemp("w") / "best_model.pt"
    torch.save({"w": torch.zeros(2)}, p)
    return p


def _manifest(folder: Path, weights: Path, **over) -> Path:
    """A manifest in our own form naming ``weights`` (copied into ``folder``) with its true sha256."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    local = folder / weights.name
    local.write_bytes(weights.read_bytes())
    body = {"manifest_version": 1, "backend": "mace", "weights": {"path": local.name,
            "sha256": hashlib.sha256(local.read_bytes()).hexdigest()},
            "model": {"r_max": 4.0, "heads": ["Default"]}, "heads": []}
    body.update(over)
    path = folder / "manifest.json"
    path.write_text(json.dumps(body))
    return path


def _case_sha(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "sha", w)
    body = json.loads(m.read_text())
    body["weights"]["sha256"] = "0" * 64
    m.write_text(json.dumps(body))
    return {"model.manifest": str(m)}


def _case_escape(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "esc", w)
    body = json.loads(m.read_text())
    body["weights"] = {"path": "../../../../../../etc/hostname"}
    m.write_text(json.dumps(body))
    return {"model.manifest": str(m)}


def _case_empty_dir(tmp: Path, w: Path) -> Dict[str, str]:
    (tmp / "empty").mkdir()
    return {"model_in": str(tmp / "empty")}


def _case_empty_manifest(tmp: Path, w: Path) -> Dict[str, str]:
    (tmp / "m.json").write_text("{}")
    return {"model_in": str(tmp / "m.json")}


def _case_other_backend_manifest(tmp: Path, w: Path) -> Dict[str, str]:
    return {"model.manifest": str(_manifest(tmp / "eq", w, backend="equiformer_v2"))}


def _case_other_backend_run_dir(tmp: Path, w: Path) -> Dict[str, str]:
    d = tmp / "fc_run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "checkpoint.pt").write_bytes(w.read_bytes())
    (d / "run.yaml").write_text("backend: gemnet_oc\ntask: train\n")
    return {"model_in": str(d)}


def _case_missing_weights(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "gone", w)
    (m.parent / w.name).unlink()
    return {"model.manifest": str(m)}


def _case_empty_weights(tmp: Path, w: Path) -> Dict[str, str]:
    (tmp / "empty.pt").write_bytes(b"")
    return {"model_in": str(tmp / "empty.pt")}


def _case_not_a_head(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "heads", w, model={"r_max": 4.0, "heads": ["pbe", "r2scan"]})
    return {"model.manifest": str(m), "task": "evaluate", "train.head_key": "omat_pbe"}


def _case_foreign_checkpoint(tmp: Path, w: Path) -> Dict[str, str]:
    import torch

    p = tmp / "gemnet.pt"  # what a FairChem checkpoint holds at its top level
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(2)}, "config": {"model": {"name": "gemnet_oc"}}}, p)
    return {"model_in": str(p)}


def _case_weights_without_config(tmp: Path, w: Path) -> Dict[str, str]:
    # a state dict, and no manifest or model.json to build it (the Hydra door's train group names one by default)
    return {"model_in": str(w), "task": "evaluate", "train.input_json": "null"}


def _case_module_outside_model_file(tmp: Path, w: Path) -> Dict[str, str]:
    import torch

    p = tmp / "module.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    return {"model_in": str(p)}


def _case_not_a_head_of_the_file(tmp: Path, w: Path) -> Dict[str, str]:
    import torch

    module = torch.nn.Linear(2, 2)
    module.heads = ["pbe", "r2scan"]  # what a multi-head mace module carries
    p = tmp / "two_heads.model"
    torch.save(module, p)
    return {"model_in": str(p), "task": "evaluate", "train.head_key": "omat_pbe"}


DEMO_TEST = "<the demo test split>"   # a case's stand-in for the demo data's test.lmdb


def _case_eval_head_not_in_model(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "heads", w, model={"r_max": 4.0, "heads": ["pbe", "r2scan"]})
    return {"model.manifest": str(m), "task": "evaluate", "train.head_key": "pbe",
            "eval.heads.oc22": DEMO_TEST}


def _case_eval_head_data_missing(tmp: Path, w: Path) -> Dict[str, str]:
    m = _manifest(tmp / "heads", w, model={"r_max": 4.0, "heads": ["pbe", "r2scan"]})
    return {"model.manifest": str(m), "task": "evaluate", "train.head_key": "pbe",
            "eval.heads.r2scan": str(tmp / "no-such.lmdb")}


CASES: Dict[str, Callable[[Path, Path], Dict[str, str]]] = {
    "eval-head-not-in-model": _case_eval_head_not_in_model, "eval-head-data-missing": _case_eval_head_data_missing,
    "head-not-in-model-file": _case_not_a_head_of_the_file,
    "checkpoint-of-another-backend": _case_foreign_checkpoint, "weights-without-config": _case_weights_without_config,
    "module-outside-a-model-file": _case_module_outside_model_file,
    "sha256-mismatch": _case_sha, "weights-leave-the-folder": _case_escape, "empty-folder": _case_empty_dir,
    "empty-json-manifest": _case_empty_manifest, "manifest-of-another-backend": _case_other_backend_manifest,
    "run-dir-of-another-backend": _case_other_backend_run_dir, "weights-missing": _case_missing_weights,
    "empty-weights-file": _case_empty_weights, "head-not-in-model": _case_not_a_head,
}
EXPECT = {"head-not-in-model": "train.head_key", "head-not-in-model-file": "train.head_key",
          "eval-head-not-in-model": "eval.heads: 'oc22' is not a head", "eval-head-data-missing": "eval.heads.r2scan"}


def _keys(demo_data: Dict[str, Path], over: Dict[str, str], run_dir: Path) -> Dict[str, str]:
    keys = {"backend": "mace", "task": "finetune", "device": "cpu", "run_dir": str(run_dir), "train.epochs": "1",
            "data.train": str(demo_data["train"]), "data.val": str(demo_data["val"]),
            "data.test": str(demo_data["test"])}
    keys.update({k: str(demo_data["test"]) if v == DEMO_TEST else v for k, v in over.items()})
    return keys


def _hydra_door(launch, keys: Dict[str, str], dry: bool):
    argv = [f"{'++' if k.startswith('eval.heads.') else ''}{k}={v}" for k, v in keys.items()] + \
        (["dry_run=true"] if dry else [])   # a head of eval.heads is a new key of that mapping
    return launch(*argv)


def _plain_door(tmp: Path, keys: Dict[str, str], dry: bool, capsys):
    return run_plain_door(tmp, keys, dry, capsys,
                          value=lambda _leaf, v: int(v) if v.isdigit() else None if v == "null" else v)


def _every_door(tmp_path, demo_data, over, launch, capsys):
    """(door, dry, run_dir, exit code, stderr) of ``over`` through both doors, dry and real."""
    for door in ("launch", "launch-run"):
        for dry in (True, False):
            run_dir = tmp_path / f"out-{door}-{dry}"
            keys = _keys(demo_data, over, run_dir)
            code, _out, err = (_hydra_door(launch, keys, dry) if door == "launch"
                               else _plain_door(tmp_path, keys, dry, capsys))
            yield door, dry, run_dir, code, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_and_launch_refuse_the_same_model_input(case, tmp_path, demo_data, weights_file, launch, capsys):
    over = CASES[case](tmp_path, weights_file)
    key = EXPECT.get(case, next(k for k in over if k in ("model_in", "model.manifest", "model.weights")))
    verdicts: List[tuple] = []
    for door, dry, run_dir, code, err in _every_door(tmp_path, demo_data, over, launch, capsys):
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert code == 2, (door, dry, err)
        assert len(lines) == 1 and key in lines[0], (door, dry, err)
        assert not run_dir.exists(), (door, dry)
        verdicts.append(lines[0].replace(str(run_dir), "RUN_DIR"))
    assert len(set(verdicts)) == 1, verdicts  # the same line through every door, dry or not


def test_a_good_manifest_passes_preflight(tmp_path, demo_data, weights_file):
    """The checks refuse only what is wrong: the same manifest with its true sha256 passes."""
    from launcher.core.schema import RunSpec
    from launcher.models import model_input_problems

    spec = RunSpec(backend="mace", task="finetune", run_dir=str(tmp_path / "r"))
    good = _manifest(tmp_path / "good", weights_file)
    spec.model.manifest = str(good)
    assert model_input_problems(spec) == []
    spec.model.manifest, spec.model_in = None, str(good)  # the same manifest as model_in
    assert model_input_problems(spec) == []


def test_model_checks_stay_free_of_torch(tmp_path, demo_data):
    """A refused model input costs no torch import (the dry run and every error stay fast)."""
    (tmp_path / "m.json").write_text("{}")
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"backend": "mace", "task": "finetune", "device": "cpu", "run_dir": "r",
                                 "model_in": "m.json", "data": {"train": str(demo_data["train"])}}))
    code = ("import sys\nfrom launcher.run import main\ntry:\n    main(['--config', sys.argv[1]])\n"
            "except SystemExit as e:\n    print('exit', e.code)\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.stdout.split() == ["exit", "2", "False"], (out.stdout, out.stderr)
    assert "model_in" in out.stderr


def test_a_mace_run_dir_given_to_a_fairchem_backend(tmp_path, demo_data, weights_file, launch, capsys):
    """Refused by name in the dry run as in the launch (FairChem's own checks may add their lines)."""
    d = tmp_path / "mace_run"
    _manifest(d / "artifacts", weights_file)
    (d / "run.yaml").write_text("backend: mace\ntask: train\n")
    over = {"backend": "equiformer_v2", "model_in": str(d)}
    seen = set()
    for door, dry, run_dir, code, err in _every_door(tmp_path, demo_data, over, launch, capsys):
        assert code == 2, (door, dry, err)
        mine = [ln for ln in err.splitlines() if f"model_in: {d} is a run of backend=mace" in ln]
        assert len(mine) == 1, (door, dry, err)
        assert not run_dir.exists()
        seen.add(mine[0].strip(" -"))
    assert len(seen) == 1, seen
