"""train.freeze: what preflight refuses for lora, one line naming the key, without torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.core.schema import spec_from_dict, validate
from trainers.mace.backend import MaceBackend


def _spec(tmp_path, task="finetune", **train):
    return spec_from_dict({"backend": "mace", "task": task, "run_dir": str(tmp_path / "r"), "device": "cpu",
                           "model_in": str(tmp_path / "base.model"), "data": {"train": str(tmp_path / "t.lmdb")},
                           "train": train})


@pytest.mark.parametrize("train, key", [
    ({"freeze": "lora", "kernels": "cueq"}, "train.kernels"),
    ({"freeze": "lora", "kernels": "oeq"}, "train.kernels"),
    ({"freeze": "lora", "compile": True}, "train.compile"),
    ({"lora_rank": 4}, "train.lora_rank"),
    ({"freeze": "head_only", "lora_alpha": 2.0}, "train.lora_alpha"),
    ({"lora_blocks": "readouts"}, "train.lora_blocks"),
])
def test_mace_check_refuses_what_lora_cannot_honour(tmp_path, train, key):
    # (a kernel whose packages are missing also gets its install line: only the lora line is counted)
    problems = [p for p in MaceBackend().check(_spec(tmp_path, **train)) if p.startswith(f"{key}: ") and "lora" in p]
    assert len(problems) == 1 and "\n" not in problems[0], problems


def test_lora_alone_passes_the_mace_check(tmp_path):
    spec = _spec(tmp_path, freeze="lora", lora_rank=4, lora_alpha=8.0, lora_blocks="interactions+products",
                 kernels="e3nn")
    assert not [p for p in MaceBackend().check(spec) if p.startswith(("train.lora", "train.freeze", "train.kernels"))]


def test_auto_kernels_pick_e3nn_for_lora_even_on_cuda(tmp_path):
    from trainers.mace import kernels

    spec = _spec(tmp_path, freeze="lora", kernels="auto")
    spec.device = "cuda"
    assert not [p for p in MaceBackend().check(spec) if p.startswith("train.kernels")]
    assert kernels.choose("auto", "cuda", lora=True) == ("e3nn", "auto: train.freeze=lora adapts e3nn's linear layers")


@pytest.mark.parametrize("task, train, key", [
    ("train", {"freeze": "lora"}, "train.freeze"),
    ("finetune", {"freeze": "lora", "lora_rank": 0}, "train.lora_rank"),
    ("finetune", {"freeze": "lora", "lora_alpha": -1.0}, "train.lora_alpha"),
    ("finetune", {"freeze": "lora", "lora_blocks": "embedding"}, "train.lora_blocks"),
])
def test_schema_rules(tmp_path, task, train, key):
    problems = [p for p in validate(_spec(tmp_path, task=task, **train)) if p.startswith(f"{key}: ")]
    assert len(problems) == 1, problems


@pytest.mark.parametrize("dry", [True, False])
def test_the_door_refuses_lora_on_task_train_before_anything_runs(tmp_path, dry):
    """The dry run and the launch give the same one line (exit 2), and nothing is created."""
    (tmp_path / "m.json").write_text('{"num_channels": 8, "max_L": 0, "r_max": 4.0}')
    args = ["backend=mace", "task=train", "device=cpu", f"run_dir={tmp_path / 'run'}",
            f"train.input_json={tmp_path / 'm.json'}", f"data.train={tmp_path / 'none.lmdb'}",
            "train.freeze=lora", *(["dry_run=true"] if dry else [])]
    r = subprocess.run([sys.executable, "-c", "from launcher.cli import main; main()", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "train.freeze: lora needs task=finetune or resume" in r.stderr
    assert not (tmp_path / "run").exists()
