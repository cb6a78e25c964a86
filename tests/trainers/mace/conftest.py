"""Fixtures of the MACE trainer tests: a tiny EMT dataset, a tiny model.json, spec builders."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict

import pytest

os.environ["OMP_NUM_THREADS"] = "1"
warnings.filterwarnings("ignore", message=".*TorchScript type system.*")

REPO = Path(__file__).resolve().parents[3]

TINY_MODEL = {
    "model": "MACE", "num_channels": 8, "max_L": 0, "max_ell": 2, "correlation": 2, "num_interactions": 2,
    "r_max": 4.0, "num_radial_basis": 6, "radial_MLP": [16, 16], "MLP_irreps": "8x0e", "E0s": "average",
}


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Dict[str, Path]:
    """24 train / 8 val / 8 test EMT structures (8-32 atoms) as FairChem LMDB files."""
    from data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("mace-data") / "emt", seed=3, n_train=24, n_val=8, n_test=8)


@pytest.fixture(scope="session")
def tiny_model_json(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("mace-model") / "model.json"
    p.write_text(json.dumps(TINY_MODEL))
    return p


def make_spec(run_dir: Path, splits: Dict[str, Path], **over: Any):
    """A validated RunSpec for the core trainer on CPU, float32, tiny and quiet."""
    from launcher.core.schema import check, spec_from_dict
    from launcher.core.specio import deep_merge, resolve_paths

    base = {
        "backend": "mace", "task": "train", "run_dir": str(run_dir), "device": "cpu",
        "data": {k: str(v) for k, v in splits.items()},
        "train": {"epochs": 2, "batch_size": 4, "dtype": "float32", "progress_bar": "false"},
    }
    spec = spec_from_dict(deep_merge(base, over))
    return check(resolve_paths(spec, Path.cwd()))


@pytest.fixture(scope="module")
def bundle(tiny_data, tmp_path_factory):
    """A v1 manifest bundle of a real small multi-head MACE model (built once per session folder)."""
    from . import mh_bundle

    return mh_bundle.write_bundle(tmp_path_factory.getbasetemp() / "mh-bundle", tiny_data["train"])


_CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {repo!r})
from launcher.job import run_job
from launcher.core.schema import spec_from_dict
run_job(spec_from_dict(json.loads(sys.argv[1])), echo=lambda *_: None)
"""


def kill_training_at(spec: Any, run_dir: Path, step: int, timeout: float = 300) -> int:
    """Train ``spec`` in a child process and kill -9 it once metrics.jsonl has a train record at ``step`` or
    later; the child's return code."""
    import signal
    import subprocess
    import sys
    import time

    from launcher.core.atomic import read_jsonl

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(REPO)), json.dumps(spec.to_dict())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "logs" / "metrics.jsonl"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(r.get("step", 0) >= step and r["split"] == "train" for r in read_jsonl(metrics)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode


def run_two_ranks(spec: Any, tmp_path: Path, timeout: float = 900) -> None:
    """Run ``spec`` as a real 2-rank DDP job (torchrun + ``launcher.worker``); fails the test on a non-zero exit."""
    import subprocess
    import sys

    from launcher.core.specio import dump_run_yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(dump_run_yaml(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "launcher.worker", str(spec_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


def run_with_hook(spec: Any, method: str, after: Any) -> Any:
    """Run ``spec`` in this process with ``after(trainer)`` called right after each call of the real
    ``Trainer.<method>``: the job's result."""
    from launcher.job import run_job
    from trainers.mace import loop

    orig = getattr(loop.Trainer, method)

    def wrapped(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        after(self)
        return out

    setattr(loop.Trainer, method, wrapped)
    try:
        return run_job(spec, echo=lambda *_: None)
    finally:
        setattr(loop.Trainer, method, orig)


def run_preempted_after(spec: Any, updates: int) -> Any:
    """Run ``spec`` in this process with a preemption requested right after update number ``updates``: the
    job's result (its status should be ``preempted``)."""
    from launcher.core import preemption

    calls = {"n": 0}

    def count(_trainer):
        calls["n"] += 1
        if calls["n"] == updates:
            preemption.request_preemption()

    try:
        return run_with_hook(spec, "_update", count)
    finally:
        preemption.reset()
