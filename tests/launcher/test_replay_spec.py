"""data.replay through the doors and preflight: its rules, paths resolved like every path key, missing files
and elements the model lacks refused in a dry run (exit 2, one line naming data.replay.paths[i] and the file,
nothing written). FairChem's part: tests/trainers/fairchem/test_replay.py."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def emt(tmp_path_factory):
    from data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("replay-emt") / "d", seed=1, n_train=4, n_val=2, n_test=3)


@pytest.fixture(scope="module")
def cu_checkpoint(tmp_path_factory) -> Path:
    """A file in our checkpoint format whose model config knows copper only (preflight reads no weights)."""
    import torch

    p = tmp_path_factory.mktemp("replay-model") / "checkpoint.pt"
    torch.save({"format": "mlip-launch/mace-checkpoint", "model_config": {"atomic_numbers": [29], "heads": ["Default"],
                "r_max": 4.0}, "model": {}}, p)
    return p


def _spec(**over):
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import deep_merge

    base = {"backend": "mace", "task": "finetune", "run_dir": "/tmp/r", "model_in": "/tmp/m.model",
            "data": {"train": "/tmp/t.lmdb", "replay": {"paths": ["/tmp/pre.lmdb"]}}}
    return spec_from_dict(deep_merge(base, over))


def test_replay_rules_one_line_each():
    from launcher.core.schema import validate

    assert not [p for p in validate(_spec()) if p.startswith("data.replay")]
    problems = validate(_spec(task="train", train={"input_json": "/tmp/m.json"},
                              data={"replay": {"ratio": 0.0, "weight": -1.0, "select": "best", "pool": 5}}))
    replay = [p for p in problems if p.startswith("data.replay")]
    assert any(p.startswith("data.replay.paths: replay is for task=finetune") and "task=train" in p for p in replay)
    assert any(p.startswith("data.replay.ratio: must be a number > 0") for p in replay)
    assert any(p.startswith("data.replay.weight: must be a number >= 0") for p in replay)
    assert any(p.startswith("data.replay.select: 'best' is not one of random, fps") for p in replay)
    assert any(p.startswith("data.replay.pool: 5 candidates cannot give data.replay.max_samples=1000") for p in replay)
    assert not [p for p in validate(_spec(data={"replay": {"paths": []}}), ) if p.startswith("data.replay")]


def test_relative_replay_paths_resolve_against_the_run_file(tmp_path):
    from launcher.core.specio import resolve_paths

    spec = resolve_paths(_spec(data={"replay": {"paths": ["pre/a.lmdb", "/abs/b.lmdb"]}}), tmp_path)
    assert spec.data.replay.paths == [str(tmp_path / "pre" / "a.lmdb"), "/abs/b.lmdb"]


def test_missing_replay_file_is_refused_in_a_dry_run(emt, cu_checkpoint, tmp_path, capsys):
    from .conftest import run_plain_door

    keys = {"backend": "mace", "task": "finetune", "device": "cpu", "run_dir": str(tmp_path / "run"),
            "model_in": str(cu_checkpoint), "data.train": str(emt["train"]), "data.replay.paths": ["pre/none.lmdb"]}
    code, out, err = run_plain_door(tmp_path, keys, True, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"data.replay.paths[0]: not found: {tmp_path / 'pre' / 'none.lmdb'}" in lines[0]
    assert "never downloaded" in lines[0]
    assert not (tmp_path / "run").exists()


def test_replay_elements_the_model_lacks_refused_in_a_dry_run(emt, cu_checkpoint, tmp_path, capsys):
    from .conftest import run_plain_door

    keys = {"backend": "mace", "task": "finetune", "device": "cpu", "run_dir": str(tmp_path / "run"),
            "model_in": str(cu_checkpoint), "data.train": str(emt["train"]), "data.replay.paths": [str(emt["test"])]}
    code, out, err = run_plain_door(tmp_path, keys, True, capsys)
    lines = [x for x in err.strip().splitlines() if "data.replay" in x]
    assert code == 2 and len(lines) == 1, err
    assert f"data.replay.paths[0]: {emt['test']}: entry " in lines[0] and "which the model" in lines[0]
    assert str(cu_checkpoint) in lines[0] and "(its elements: Cu)" in lines[0]
    assert not (tmp_path / "run").exists()

