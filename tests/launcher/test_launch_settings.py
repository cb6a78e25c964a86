"""Launcher settings a backend refuses (its ``check_launch``) are refused by the dry run of every door exactly as
by the launch: single run, grid sweep, run.yaml and Optuna study. FairChem runs its ranks from one torchrun on one
node, so ``hydra.launcher.nodes=2`` is the setting here; preflight refuses it before anything reaches SLURM."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import yaml

NEEDLE = "hydra.launcher.nodes: backend=equiformer_v2 runs FairChem's ranks from one torchrun on one node"
FC_CFG = "model: {name: equiformer_v2}\noptim: {batch_size: 2}\n"


def _keys(tmp_path: Path, demo_data: Dict[str, Path]) -> Dict[str, str]:
    cfg = tmp_path / "fc.yml"
    cfg.write_text(FC_CFG)
    return {"backend": "equiformer_v2", "task": "train", "device": "cpu", "train.config_yml": str(cfg),
            "data.train": str(demo_data["train"]), "data.val": str(demo_data["val"])}


def _argv(keys: Dict[str, str]) -> List[str]:
    return [f"{k}={v}" for k, v in keys.items()] + ["hydra/launcher=slurm", "hydra.launcher.nodes=2"]


def _refused(code: int, err: str, out_dir: Path) -> None:
    assert code == 2, err
    assert NEEDLE in err, err
    assert not out_dir.exists(), "nothing may be written"


@pytest.mark.parametrize("dry", [True, False])
def test_single_run(tmp_path, demo_data, launch, dry):
    keys = {**_keys(tmp_path, demo_data), "run_dir": str(tmp_path / "out" / "r"), "dry_run": str(dry).lower()}
    code, _out, err = launch(*_argv(keys))
    _refused(code, err, tmp_path / "out")


@pytest.mark.parametrize("dry", [True, False])
def test_grid_sweep(tmp_path, demo_data, launch, dry):
    keys = {**_keys(tmp_path, demo_data), "dry_run": str(dry).lower()}
    code, _out, err = launch("-m", *_argv(keys), "train.epochs=1,2", f"hydra.sweep.dir={tmp_path / 'out'}")
    _refused(code, err, tmp_path / "out")
    assert "[0: train.epochs=1]" in err and "[1: train.epochs=2]" in err, "every point is named"


@pytest.mark.parametrize("dry", [True, False])
def test_optuna_study(tmp_path, demo_data, launch, dry):
    keys = {**_keys(tmp_path, demo_data), "dry_run": str(dry).lower()}
    code, _out, err = launch("-m", "hydra/sweeper=optuna", *_argv(keys), "train.lr=interval(1e-4,1e-2)",
                             f"hydra.sweep.dir={tmp_path / 'out'}")
    _refused(code, err, tmp_path / "out")


@pytest.mark.parametrize("dry", [True, False])
def test_run_yaml(tmp_path, demo_data, dry, capsys):
    from launcher.run import main

    body: Dict = {"launcher": {"preset": "slurm", "nodes": 2}, "run_dir": str(tmp_path / "out" / "r")}
    for k, v in _keys(tmp_path, demo_data).items():
        node = body
        *parents, leaf = k.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(body))
    try:
        code = main(["--config", str(f)] + (["--dry-run"] if dry else []))
    except SystemExit as e:
        code = int(e.code or 0)
    _refused(code, capsys.readouterr().err, tmp_path / "out")


def test_check_sweep_takes_the_launch_settings(tmp_path, demo_data):
    """The function every door calls: without the settings it cannot see them, with them it names them."""
    from launcher.core.schema import RunSpec
    from launcher.params import LauncherParams
    from launcher.preflight import check_sweep

    spec = RunSpec(backend="equiformer_v2", task="train", device="cpu", run_dir=str(tmp_path / "r"))
    spec.train.config_yml = _keys(tmp_path, demo_data)["train.config_yml"]
    spec.data.train = str(demo_data["train"])
    params = LauncherParams(cluster="slurm", nodes=2)
    assert not any(NEEDLE in p for p in check_sweep([spec], cluster="slurm", notes=False))
    assert sum(NEEDLE in p for p in check_sweep([spec], cluster="slurm", notes=False, params=params)) == 1
