"""train.freeze=lora and its keys are MACE-only: FairChem's check refuses each, one line, before anything runs."""
from __future__ import annotations

import sys

import pytest

from launcher.core.schema import RunSpec
from trainers.fairchem.backend import FairchemBackend

from .conftest import TEST_CONFIGS, empty_lmdbs


@pytest.fixture(autouse=True)
def _any_interpreter(monkeypatch):
    import trainers.fairchem.env as env

    monkeypatch.setattr(env, "check_python", lambda python, backend_env=None: python)


@pytest.mark.parametrize("backend,config", [("equiformer_v2", "test_equiformerv2.yml"),
                                            ("gemnet_oc", "test_gemnet_oc.yml")])
def test_lora_and_its_keys_are_refused_one_line_each(tmp_path, backend, config):
    spec = RunSpec(backend=backend, task="finetune", run_dir=str(tmp_path / "run"), device="cpu",
                   backend_python=sys.executable, model_in=str(tmp_path / "base.pt"))
    spec.train.config_yml = str(TEST_CONFIGS / config)
    for name, path in empty_lmdbs(tmp_path, "train", "val").items():
        setattr(spec.data, name, path)
    spec.train.freeze, spec.train.lora_rank, spec.train.lora_blocks = "lora", 4, "interactions"
    problems = FairchemBackend().check(spec)
    for key in ("train.freeze", "train.lora_rank", "train.lora_blocks"):
        mine = [p for p in problems if p.startswith(f"{key}: ")]
        assert len(mine) == 1 and f"backend={backend}" in mine[0] and "MACE-only" in mine[0], problems
    assert not any("\n" in p for p in problems) and not (tmp_path / "run").exists()
