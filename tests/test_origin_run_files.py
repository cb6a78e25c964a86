"""The original implementation's run file trains on all three backends through `launch-run`.

``shared/spec/origin-files/runs/finetune_acc8_test.yaml`` fine-tunes MACE, EquiformerV2 and GemNet-OC from
manifest bundles with the same knobs (lr, accum_steps 8, AdamW, amp, sampling 8 of the data). The file is
used as it is, with local stand-ins for its paths: a v1 MACE bundle made from a real multi-head `.model`
(``tests/trainers/mace/mh_bundle.py``), the manifests of EquiformerV2 / GemNet-OC models our launcher
trained, and the demo data (train and val the same file, as in the original).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.trainers.fairchem.conftest import fairchem_python  # noqa: F401 - the provisioned FairChem interpreter

pytestmark = [pytest.mark.slow, pytest.mark.fairchem]

BIN = Path(sys.executable).parent
TEST_CONFIGS = "fixtures/fairchem-v1/tests/core/models/test_configs"


def _launch_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(BIN / "launch-run"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=1800)


def _fairchem_base_models(shared: Path, data: dict, root: Path, python: str) -> dict:
    """EquiformerV2 and GemNet-OC trained for one epoch by our launcher: backend -> artifacts folder."""
    configs = {"equiformer_v2": "test_equiformerv2.yml", "gemnet_oc": "test_gemnet_oc.yml"}
    runs = [{"name": f"base_{b}", "backend": b, "task": "train", "run_dir": f"base/{b}",
             "train": {"config_yml": str(shared / TEST_CONFIGS / c), "epochs": 1}} for b, c in configs.items()]
    cfg = root / "base.yaml"
    cfg.write_text(yaml.safe_dump({"device": "cpu", "backend_python": python, "backend_env": {"OMP_NUM_THREADS": "1"},
                                   "data": {"train": str(data["train"]), "val": str(data["val"]),
                                            "train_indices": {"max_samples": 16}},
                                   "runs": runs}))
    out = _launch_run("--config", str(cfg), cwd=root)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return {b: root / "base" / b / "artifacts" for b in configs}


def test_original_finetune_file_trains_on_all_three_backends(shared_dir, demo_data, fairchem_python, tmp_path):
    from tests.trainers.mace import mh_bundle

    mace = mh_bundle.write_bundle(tmp_path / "mace-mh", Path(demo_data["train"]))
    fairchem = _fairchem_base_models(shared_dir, demo_data, tmp_path, fairchem_python)

    original = yaml.safe_load((shared_dir / "spec" / "origin-files" / "runs" / "finetune_acc8_test.yaml").read_text())
    stand_ins = {
        "mace": (mace["manifest"], mace["weights"]),
        "equiformer_v2": (fairchem["equiformer_v2"] / "manifest.json", fairchem["equiformer_v2"] / "best_model.pt"),
        "gemnet_oc": (fairchem["gemnet_oc"] / "manifest.json", fairchem["gemnet_oc"] / "best_model.pt"),
    }
    for run in original["runs"]:
        manifest, weights = stand_ins[run["backend"]]
        run["model"] = {"manifest": str(manifest), "weights": str(weights)}
        run["data"]["train"] = run["data"]["val"] = str(demo_data["val"])   # the same file, as the original
        if run["backend"] != "mace":  # FairChem's interpreter and process environment (MACE refuses both)
            run.update({"backend_python": fairchem_python, "backend_env": {"OMP_NUM_THREADS": "1"}})
    original["device"] = "cpu"   # what only this machine needs
    cfg = tmp_path / "finetune_acc8_test.yaml"
    cfg.write_text(yaml.safe_dump(original, sort_keys=False))

    dry = _launch_run("--config", str(cfg), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    assert dry.stdout.count("would execute:") == 3

    out = _launch_run("--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    for run in original["runs"]:
        run_dir = tmp_path / run["run_dir"]
        state = json.loads((run_dir / "state.json").read_text())
        assert state["status"] == "finished", (run["name"], state)
        assert (run_dir / "artifacts" / "best_model.pt").is_file()
        train_log = (run_dir / "logs" / "train.log").read_text()
        assert "loss" in train_log and "lr" in train_log and "structures/s" in train_log   # progress lines
        if run["backend"] == "mace":
            indices = json.loads((run_dir / "logs" / "indices.json").read_text())
            assert len(indices["train"]) == 8 and len(indices["val"]) == 8     # sampling: 8 of each
            ckpt = _torch_load(run_dir / "checkpoints" / "checkpoint.pt")
            groups = ckpt["optimizer"]["param_groups"]
            assert all(g["lr"] == pytest.approx(1e-4) and g["weight_decay"] == 0.0 for g in groups)
            assert "optimizer=adamw lr=0.0001 weight_decay=0 batch_size=2 accum_steps=8" in train_log
            # 8 structures, batch 2, accum 8: one optimizer update in the epoch
            assert ckpt["loop"]["update_step"] == 1
        else:
            derived = yaml.safe_load(next((run_dir / "fairchem" / "configs").glob("finetune-*.yml")).read_text())
            optim = derived["optim"]
            assert optim["lr_initial"] == pytest.approx(1e-4)
            assert optim["optimizer"] == "AdamW" and optim["max_epochs"] == 1
            assert optim["batch_size"] == run["train"]["batch_size"]
            fc_log = next((run_dir / "logs").glob("fairchem-finetune-*.log")).read_text()
            assert "--accum-steps 8" in fc_log                                 # the command line ran
            assert "amp" in derived_header(run_dir)                            # amp on CPU is noted, not dropped silently
            n_train = sum(1 for _ in (run_dir / "fairchem" / "data").glob("train-*.lmdb"))
            assert n_train == 1 and "8 selected records" in out.stdout + train_log + fc_log


def derived_header(run_dir: Path) -> str:
    text = next((run_dir / "fairchem" / "configs").glob("finetune-*.yml")).read_text()
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


def _torch_load(path: Path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)
