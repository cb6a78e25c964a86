"""Fixtures for tests against a real SLURM cluster (scripts/slurm-dev-cluster start).

Every test module here is marked ``slurm`` and ``slow``; its tests are skipped, with the reason, when no cluster answers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONF = Path(os.environ.get("MLIP_SLURM_DIR", "/tmp/mlip-slurm")) / "etc" / "slurm.conf"


@pytest.fixture(scope="session")
def slurm_cluster() -> Dict[str, str]:
    """The environment that reaches the cluster (SLURM_CONF set); skips when there is none."""
    if not shutil.which("sbatch"):
        pytest.skip("no SLURM client commands (run scripts/slurm-dev-cluster start)")
    env = dict(os.environ)
    if not env.get("SLURM_CONF") and DEFAULT_CONF.exists():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    conf = Path(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    if not conf.is_file():
        pytest.skip(f"no SLURM configuration at {conf} (run scripts/slurm-dev-cluster start)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer in 10 s (run scripts/slurm-dev-cluster start)")
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated") for s in states):
        pytest.skip(f"no usable SLURM node ({out.stderr.strip() or states}); run scripts/slurm-dev-cluster start")
    if env.get("SLURM_CONF"):  # in-process submissions reach the same cluster
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def tiny_mace(demo_data) -> Dict[str, object]:
    return tiny_mace_keys(demo_data)


def tiny_mace_keys(demo_data: Dict[str, Path]) -> Dict[str, object]:
    """Keys of a tiny real MACE training (well under a second per epoch) on the demo data."""
    return {"device": "cpu", "train.input_json": str(REPO / "conf" / "mace" / "tiny.json"),
            "data.train": str(demo_data["train"]), "data.val": str(demo_data["val"]),
            "data.test": str(demo_data["test"]), "data.train_indices.max_samples": 8,
            "data.val_indices.max_samples": 4, "train.dtype": "float32", "train.batch_size": 8}


def run_cli(module: str, args: List[str], env: Dict[str, str], cwd: Path, timeout: float = 900
            ) -> subprocess.CompletedProcess:
    """Run a console entry point as the user would (a fresh interpreter)."""
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def sacct_states(job: str, env: Dict[str, str], duplicates: bool = False) -> List[str]:
    """States of a job or array task as SLURM accounting has them (all attempts with ``duplicates``)."""
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job] + (["-D"] if duplicates else [])
    for _ in range(30):  # accounting lags the job by a moment
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30).stdout
        lines = [ln.split("|") for ln in out.splitlines() if ln.strip()]
        if lines and not any(s.split()[0] in ("RUNNING", "COMPLETING", "PENDING") for _, s in lines):
            return [s.split()[0] for _, s in lines]
        time.sleep(1)
    return [s.split()[0] for _, s in lines]


def train_epochs(run_dir: Path) -> List[int]:
    """Epochs of the train records a run has logged so far."""
    from launcher.core.atomic import read_jsonl

    path = Path(run_dir) / "logs" / "metrics.jsonl"
    return [r["epoch"] for r in read_jsonl(path) if r.get("split") == "train"] if path.exists() else []


def interrupt_after_epochs(sweep: Path, jobs: Dict[str, str], cluster_env: Dict[str, str], *, after: int,
                           last: int, timeout: float) -> None:
    """USR2 the "usr2" job and requeue the "requeue" job (``jobs``: case -> job id) once the run of that case has
    logged ``after`` epochs, and not after epoch ``last``: both must be caught mid-training."""
    actions = {"usr2": ["scancel", "--signal=USR2", jobs["usr2"]], "requeue": ["scontrol", "requeue", jobs["requeue"]]}
    t0 = time.time()
    while actions and time.time() - t0 < timeout:
        for case in list(actions):
            done = max(train_epochs(Path(sweep) / case), default=0)
            if done >= after:
                assert done < last, f"{case}: finished before it could be interrupted; raise EPOCHS"
                subprocess.run(actions.pop(case), env=cluster_env, check=True, timeout=30)
        time.sleep(0.2)
    assert not actions, f"never reached epoch {after}: {sorted(actions)}"
