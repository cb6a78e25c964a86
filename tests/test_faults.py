"""Faults never lose a run: a MACE training killed (kill -9) at 10 random moments, a real SIGTERM,
and an ``overwrite=true`` launched against a live training.

Every start is a real ``launch-run --config run.yaml`` process (relative paths in the run.yaml, the
epochs given with ``--set``). After all the faults the run finishes, and its checkpoint, best model
and optimizer state equal those of one uninterrupted run bit for bit (CPU, float32). Two more README
promises end to end: ``task=resume`` with more epochs continues a finished run, and a fine-tune starts
from the weights it is given.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# max_L=1 and max_ell=3: the smallest model whose TorchScript numerics drifted on resume before
# trainers.mace.model_io.exact_jit
MODEL = {"model": "MACE", "num_channels": 8, "max_L": 1, "max_ell": 3, "correlation": 2, "num_interactions": 2,
         "r_max": 4.0, "num_radial_basis": 6, "radial_MLP": [16, 16], "MLP_irreps": "8x0e", "E0s": "average"}
EPOCHS = 3          # 24 structures, batch 4: 6 updates per epoch, a checkpoint every 3
SEED = 20240611


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with data/ (tiny EMT LMDBs), model.json and run.yaml (relative paths)."""
    from data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("faults")
    splits = make_demo_dataset(root / "data", seed=3, n_train=24, n_val=8, n_test=8)
    (root / "model.json").write_text(json.dumps(MODEL))
    rel = {k: os.path.relpath(v, root) for k, v in splits.items() if k in ("train", "val")}
    (root / "run.yaml").write_text(
        "backend: mace\ntask: train\ndevice: cpu\nrun_dir: runs/r\n"
        f"data: {{train: {rel['train']}, val: {rel['val']}}}\n"
        "train: {input_json: model.json, epochs: 1, batch_size: 4, dtype: float32, progress_bar: 'false',\n"
        "        lr: 0.005, scheduler: cosine, ema_decay: 0.8, cycle_steps: 3, drop_last: true, log_every: 1}\n")
    return root


def _launch(project: Path, run_dir: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "launcher.run", "--config", "run.yaml", "--set", f"train.epochs={EPOCHS}",
           "--set", f"run_dir={run_dir}", *extra]
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _log_size(run_dir: Path) -> int:
    try:
        return (run_dir / "logs" / "train.log").stat().st_size
    except OSError:
        return 0


def _new_steps(run_dir: Path, since: int) -> int:
    """Updates the current attempt has logged (train.log lines after byte ``since``)."""
    try:
        with open(run_dir / "logs" / "train.log", "rb") as fh:
            fh.seek(since)
            return fh.read().count(b" train step=")
    except OSError:
        return 0


def _writing_checkpoint(run_dir: Path) -> bool:
    try:
        return any(n.startswith(".checkpoint.pt.") for n in os.listdir(run_dir / "checkpoints"))
    except OSError:
        return False


def _final(run_dir: Path):
    import torch

    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    best = torch.load(run_dir / "artifacts" / "best_model.pt", weights_only=True)
    return ck, best


def _assert_identical(a, b) -> None:
    import torch

    (ck_a, best_a), (ck_b, best_b) = a, b
    for k in ck_a["model"]:
        assert torch.equal(ck_a["model"][k], ck_b["model"][k]), k
    for k in best_a:
        assert torch.equal(best_a[k], best_b[k]), k
    for i, st in ck_a["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ck_b["optimizer"]["state"][i][name])), (i, name)
    for s, t in zip(ck_a["ema"]["shadow_params"], ck_b["ema"]["shadow_params"]):
        assert torch.equal(s, t)
    assert ck_a["loop"] == ck_b["loop"]


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.002)
    return False


def test_kill9_at_random_moments_and_overwrite_race_lose_nothing(project):
    from launcher.core.layout import RunLayout

    ref = _launch(project, "runs/ref")
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    reference = _final(project / "runs" / "ref")

    run_dir = project / "runs" / "r"
    # a real SIGTERM (outside SLURM) early in the run: checkpoint, the documented exit code, resumable
    proc = _launch(project, "runs/r")
    assert _wait_for(lambda: _new_steps(run_dir, 0) >= 1 and not _writing_checkpoint(run_dir), proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out    # the number SLURM and users see, not the constant
    assert "checkpoint saved" in out and json.loads((run_dir / "state.json").read_text())["status"] == "preempted"

    rng = random.Random(SEED)
    # 10 kill -9 moments: during start-up, at a random point after a random update, or while a
    # checkpoint is being written (its temp file exists)
    moments = [("startup", rng.uniform(0.2, 2.0))] + [
        rng.choice([("step", rng.randint(1, 5), rng.uniform(0.0, 0.3)), ("checkpoint",)]) for _ in range(9)]
    moments[3], moments[6] = ("checkpoint",), ("checkpoint",)
    killed_in = []
    for i, moment in enumerate(moments):
        since = _log_size(run_dir)
        proc = _launch(project, "runs/r")
        if moment[0] == "startup":
            time.sleep(moment[1])
            hit = proc.poll() is None
        elif moment[0] == "step":
            hit = _wait_for(lambda: _new_steps(run_dir, since) >= moment[1], proc)
            time.sleep(moment[2])
        else:
            hit = _wait_for(lambda: _writing_checkpoint(run_dir), proc)
        assert proc.poll() is None, f"fault {i} ({moment}): the run ended before it could be killed"
        if i == 4:   # a live training holds its run_dir: overwrite=true is refused, nothing moves
            race = _launch(project, "runs/r", "--set", "train.lr=0.001", "--set", "overwrite=true")
            race_out, _ = race.communicate(timeout=120)
            assert race.returncode == 2, race_out
            assert "in use by" in race_out and "runs/r" in race_out, race_out
            assert not list((project / "runs").glob("r.replaced-*"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        killed_in.append((moment[0], hit))
        if (run_dir / "state.json").exists() and json.loads((run_dir / "state.json").read_text())["status"] == "running":
            assert RunLayout.of(run_dir).status() == "interrupted"

    assert sum(1 for kind, hit in killed_in if kind == "checkpoint" and hit) >= 2, killed_in

    final = _launch(project, "runs/r")
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == EPOCHS
    assert not [p for p in run_dir.rglob("*.tmp")], "temp files of killed writes are left"
    _assert_identical(reference, _final(run_dir))

    # and once it is finished, overwrite=true moves it aside whole (never deletes it)
    before = (run_dir / "checkpoints" / "checkpoint.pt").read_bytes()
    other = _launch(project, "runs/r", "--set", "train.lr=0.001", "--set", "overwrite=true",
                    "--set", "train.epochs=1", "--set", "train.cycle_steps=0")
    out, _ = other.communicate(timeout=300)
    assert other.returncode == 0, out
    moved = list((project / "runs").glob("r.replaced-*"))
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "checkpoint.pt").read_bytes() == before


def test_resume_task_with_more_epochs_continues_a_finished_run(project):
    """``task=resume`` with a larger ``train.epochs`` trains on from the finished run's last checkpoint."""
    import torch

    from launcher.core.atomic import read_jsonl

    # a constant lr: cosine has decayed to 0 by the first run's last epoch (its length is restored from the checkpoint)
    first = _launch(project, "runs/longer", "--set", "train.cycle_steps=0", "--set", "train.scheduler=none")
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    run_dir = project / "runs" / "longer"
    done = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    more = _launch(project, "runs/longer", "--set", "train.cycle_steps=0", "--set", "train.scheduler=none",
                   "--set", "task=resume",
                   "--set", f"train.epochs={EPOCHS + 1}")
    out, _ = more.communicate(timeout=300)
    assert more.returncode == 0, out
    ck = torch.load(run_dir / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert (ck["loop"]["epoch"], ck["loop"]["update_step"]) == (EPOCHS + 1, 6 * (EPOCHS + 1))
    assert any(not torch.equal(ck["model"][k], done["model"][k]) for k in ck["model"])
    rows = read_jsonl(run_dir / "logs" / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 6 * (EPOCHS + 1) + 1))
    assert [r["epoch"] for r in rows if r["split"] == "val"] == list(range(1, EPOCHS + 2))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished" and state["epochs_done"] == EPOCHS + 1 and state["attempt"] == 2


def test_finetune_starts_from_the_given_weights(project, tmp_path):
    """A fine-tune at lr 1e-30 (below float32 resolution: no update moves a weight) validates exactly as ``task=evaluate`` of its base model: it starts from those weights."""
    import glob

    import torch

    from launcher.core.atomic import read_jsonl
    from launcher.core.schema import check, spec_from_dict
    from launcher.job import run_job

    torch.set_num_threads(1)
    data = {k: glob.glob(str(project / "data" / f"{k}*"))[0] for k in ("train", "val")}
    train = {"input_json": str(project / "model.json"), "epochs": 1, "batch_size": 4, "dtype": "float32",
             "progress_bar": "false"}

    def spec(run_dir, **over):
        d = {"backend": "mace", "task": "train", "run_dir": str(run_dir), "device": "cpu", "data": data,
             "train": dict(train)}
        d["train"].update(over.pop("train", {}))
        d.update(over)
        return check(spec_from_dict(d))

    quiet = dict(echo=lambda *_: None)
    assert run_job(spec(tmp_path / "base"), **quiet).status == "finished"
    manifest = str(tmp_path / "base" / "artifacts" / "manifest.json")
    assert run_job(spec(tmp_path / "eval", task="evaluate", model={"manifest": manifest},
                        eval={"split": "val"}), **quiet).status == "finished"
    evaluated = json.loads((tmp_path / "eval" / "eval" / "metrics.json").read_text())
    assert run_job(spec(tmp_path / "ft", task="finetune", model={"manifest": manifest},
                        train={"lr": 1e-30, "ema_decay": None, "input_json": None}), **quiet).status == "finished"
    first_val = [r for r in read_jsonl(tmp_path / "ft" / "logs" / "metrics.jsonl") if r["split"] == "val"][0]
    for key in ("energy_rmse_per_atom", "force_rmse"):   # float32 sums, accumulated in another order
        assert first_val[key] == pytest.approx(evaluated[key], rel=1e-6, abs=0), key
    base = torch.load(tmp_path / "base" / "artifacts" / "best_model.pt", weights_only=True)
    tuned = torch.load(tmp_path / "ft" / "checkpoints" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(base[k], tuned[k]) for k in base)
