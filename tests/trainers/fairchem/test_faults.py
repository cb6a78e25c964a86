"""What a user types wrong, and what breaks, with a FairChem backend: refused in preflight with one line, fast
exits, honest failure lines, no orphaned processes, no temp folders left behind (real FairChem env)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError
from launcher.core.schema import RunSpec, check
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.runner import error_line, failure_message, hint_for, truncated_lmdbs
from trainers.fairchem.process import ProcessResult

from .conftest import TEST_CONFIGS

LAUNCH = Path(sys.executable).with_name("launch")
LAUNCH_RUN = Path(sys.executable).with_name("launch-run")
EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"


def _spec(tmp_path, demo_data, **kw) -> RunSpec:
    spec = RunSpec(backend=kw.pop("backend", "equiformer_v2"), task=kw.pop("task", "train"),
                   run_dir=str(tmp_path / "run"), device="cpu")
    spec.train.config_yml = str(kw.pop("config_yml", EQV2))
    for split in ("train", "val", "test"):
        setattr(spec.data, split, str(demo_data[split]))
    spec.model.manifest = kw.pop("manifest", None)
    for k, v in kw.items():
        setattr(spec, k, v)
    return check(spec)


def _env(tmp_path, **extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(_tmp(tmp_path)), **extra}
    env.pop("PYTHONPATH", None)
    return env


def _tmp(tmp_path) -> Path:
    d = tmp_path / "sys-tmp"
    d.mkdir(exist_ok=True)
    return d


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


# ------------------------------------------------------------------ preflight refusals (one line each)

def test_a_fairchem_config_that_does_not_parse_is_one_line(tmp_path, demo_data, fairchem_python):
    bad = tmp_path / "bad.yml"
    bad.write_text("model: {name: equiformer_v2\noptim: [\n")
    problems = FairchemBackend().check(_spec(tmp_path, demo_data, config_yml=bad, backend_python=fairchem_python))
    assert len(problems) == 1 and problems[0].startswith("train.config_yml:") and str(bad) in problems[0]
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_the_other_fairchem_model_is_refused(tmp_path, demo_data, fairchem_python):
    ckpt = tmp_path / "gemnet.pt"
    code = ("import sys, torch; torch.save({'state_dict': {'w': torch.zeros(2)}, 'normalizers': {}, "
            "'config': {'model': {'name': 'gemnet_oc'}, 'trainer': 'forces', 'optim': {}}}, sys.argv[1])")
    subprocess.run([fairchem_python, "-c", code, str(ckpt)], check=True)
    spec = _spec(tmp_path, demo_data, task="finetune", model_in=str(ckpt), backend_python=fairchem_python)
    problems = FairchemBackend().check(spec)
    assert problems == [f"model_in: {ckpt} is a gemnet_oc model; backend=equiformer_v2 needs a FairChem "
                        "equiformer_v2 or equiformer_v2_backbone checkpoint, or the manifest of such a run"]


@pytest.fixture(scope="module")
def mace_run(demo_data, tmp_path_factory):
    """A real MACE run (1 epoch, tiny model): its manifest, bare weights and training checkpoint."""
    from launcher.core.schema import spec_from_dict
    from launcher.job import run_job

    root = tmp_path_factory.mktemp("mace")
    model = root / "model.json"
    model.write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "max_ell": 1, "correlation": 1,
                                 "num_interactions": 1, "r_max": 4.0, "num_radial_basis": 4, "radial_MLP": [8],
                                 "MLP_irreps": "4x0e", "E0s": "average"}))
    spec = check(spec_from_dict({
        "backend": "mace", "task": "train", "run_dir": str(root / "run"), "device": "cpu",
        "data": {"train": str(demo_data["train"]), "val": str(demo_data["val"]),
                 "train_indices": {"max_samples": 8}, "val_indices": {"max_samples": 4}},
        "train": {"input_json": str(model), "epochs": 1, "batch_size": 4, "dtype": "float32",
                  "progress_bar": "false"}}))
    run_job(spec, echo=lambda *_: None)
    return root / "run"


def test_a_mace_model_given_to_fairchem_is_refused_in_preflight(tmp_path, demo_data, mace_run, fairchem_python):
    import torch

    from trainers.mace.model_config import build_model

    ckpt = torch.load(mace_run / "checkpoints" / "checkpoint.pt", weights_only=False)
    model = build_model(ckpt["model_config"])
    torch.save(model, tmp_path / "mace.model")          # mace_run_train's form: the whole pickled model
    cases = [
        ("model.manifest", {"task": "finetune"}, mace_run / "artifacts" / "manifest.json"),
        ("model_in", {"task": "evaluate"}, mace_run / "checkpoints" / "checkpoint.pt"),
        ("model_in", {"task": "finetune"}, mace_run / "artifacts" / "best_model.pt"),
        ("model_in", {"task": "finetune"}, tmp_path / "mace.model"),
    ]
    for key, kw, path in cases:
        where = {"manifest": str(path)} if key == "model.manifest" else {"model_in": str(path)}
        spec = _spec(tmp_path, demo_data, task=kw["task"], backend_python=fairchem_python, **where)
        t0 = time.perf_counter()
        problems = FairchemBackend().check(spec)
        assert time.perf_counter() - t0 < 2
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"{key}: {path} is a MACE model; backend=equiformer_v2 needs"), problems
        assert "use backend=mace" in problems[0]


def test_training_on_the_validation_set_is_refused(tmp_path, demo_data, fairchem_python):
    spec = _spec(tmp_path, demo_data, backend_python=fairchem_python)
    spec.data.val = spec.data.train
    problems = FairchemBackend().check(spec)
    assert any(p.startswith("data.val: the same dataset as data.train") for p in problems), problems


def test_backend_env_values_must_be_scalars_in_both_doors(tmp_path, demo_data, fairchem_python):
    spec = _spec(tmp_path, demo_data, backend_python=fairchem_python)
    spec.backend_env = {"FOO": [1, 2], "BAR": "1"}
    assert "backend_env.FOO: expected a string, number or boolean, got a list ([1, 2])" in FairchemBackend().check(spec)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(json.dumps({
        "backend": "equiformer_v2", "task": "train", "run_dir": str(tmp_path / "r"), "device": "cpu",
        "backend_python": fairchem_python, "backend_env": {"FOO": [1, 2]}, "train": {"config_yml": str(EQV2)},
        "data": {k: str(v) for k, v in demo_data.items()}}))
    out = subprocess.run([str(LAUNCH_RUN), "--config", str(run_yaml)], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=120)
    assert out.returncode == 2, out.stderr
    assert "backend_env.FOO" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ backend_python is never started by preflight

def test_a_backend_python_that_crashes_or_hangs_is_not_started_by_preflight(tmp_path, demo_data):
    """Its env is read from files; the interpreter runs only when an accepted run starts it."""
    ran = tmp_path / "ran"
    for body in ("echo 'Fatal Python error: init_fs_encoding' >&2\nexit 3\n", "sleep 300\n"):
        py = _script(tmp_path / "bin-python", f"touch {ran}\n{body}")
        t0 = time.perf_counter()
        problems = FairchemBackend().check(_spec(tmp_path, demo_data, backend_python=py))
        assert time.perf_counter() - t0 < 5
        assert problems == [] and not ran.exists()   # a wrapper script: no env layout to refuse on


# ------------------------------------------------------------------ the doors: exit at once, nothing left

@pytest.mark.fairchem
@pytest.mark.parametrize("backend", ["equiformer_v2", "gemnet_oc"])
def test_a_config_error_exits_within_a_second_of_being_reported(tmp_path, demo_data, fairchem_python, backend):
    """The early FairChem interpreter (started by ``launch backend=...``) is killed, never waited for."""
    bad = tmp_path / "bad.yml"
    bad.write_text("model: {name: equiformer_v2\n")
    cmd = [str(LAUNCH), f"backend={backend}", "device=cpu", f"run_dir={tmp_path / 'run'}",
           f"train.config_yml={bad}", *(f"data.{k}={v}" for k, v in demo_data.items())]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    first = proc.stderr.readline()
    reported = time.perf_counter()
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    exited = time.perf_counter()
    assert proc.returncode == 2 and first.startswith("error: train.config_yml:"), first + rest
    assert exited - reported < 1.0, f"reported after {reported - t0:.2f} s, exited after {exited - t0:.2f} s"
    assert not _serving_children(proc.pid)
    assert not any((tmp_path / "run").glob("*"))  # (Hydra's door may create it, empty)
    assert not any(_tmp(tmp_path).iterdir())


def _serving_children(pid: int) -> list:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.slow
@pytest.mark.fairchem
def test_a_fairchem_crash_is_one_honest_line_and_leaves_no_temp_folders(tmp_path, demo_data, fairchem_python):
    """FairChem fails at run time (an unknown model option): exit 1, the error line and the log, no hint that
    does not belong, nothing left in the temp folder."""
    run_dir = tmp_path / "run"
    cmd = [str(LAUNCH), "backend=equiformer_v2", "device=cpu", f"run_dir={run_dir}", f"train.config_yml={EQV2}",
           "train.epochs=1", "backend_args=['--model.no_such_option=1']", f"backend_python={fairchem_python}",
           *(f"data.{k}={v}" for k, v in demo_data.items())]
    out = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if "FairChem --mode train failed" in ln]
    assert errors and "no_such_option" in errors[-1] and "[log: " in errors[-1], out.stderr[-2000:]
    assert "hint:" not in errors[-1]
    assert not any(_tmp(tmp_path).iterdir()), list(_tmp(tmp_path).iterdir())
    assert not (run_dir / "fairchem" / "tmp").exists()


# ------------------------------------------------------------------ failure lines and hints

def _result(rc, tail, tmp_path):
    return ProcessResult(returncode=rc, preempted=False, wall_s=1.0, log_path=tmp_path / "f.log", tail=tail)


def _plan(tmp_path, config=None):
    from trainers.fairchem.plan import Plan

    config = config or {"dataset": {}}
    return Plan(mode="train", timestamp_id="t", native_dir=tmp_path, config_path=tmp_path / "c.yml", config=config,
                config_text="", command=[], env={}, log_path=tmp_path / "f.log")


def test_hints_only_on_the_failures_they_explain(tmp_path):
    pbc = ["Traceback (most recent call last):", '  File "x.py", line 1',
           "RuntimeError: Different structures in the batch have different PBC configurations. This is not currently supported."]
    assert "use_pbc_single" in hint_for(error_line(pbc))
    mismatch = ["INFO: BalancedBatchSampler requires a dataset that has a metadata attribute; disabling load balancing",
                "Traceback (most recent call last):",
                'RuntimeError: Error(s) in loading state_dict for EquiformerV2: size mismatch for sphere_embedding.weight']
    msg = failure_message(_plan(tmp_path), _result(1, mismatch, tmp_path))
    assert "size mismatch" in msg and "(hint:" not in msg
    killed = failure_message(_plan(tmp_path), _result(-signal.SIGKILL, mismatch, tmp_path))
    assert "killed by SIGKILL" in killed and "(hint:" not in killed and "load_balancing" not in killed
    torchrun = ["[rank1]: ValueError: bad value here", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "]
    assert error_line(torchrun) == "ValueError: bad value here"


def test_sigbus_names_the_truncated_lmdb(tmp_path, demo_data):
    import shutil

    cut = tmp_path / "cut.lmdb"
    shutil.copy(demo_data["train"], cut)
    with open(cut, "r+b") as fh:
        fh.truncate(cut.stat().st_size // 2)
    assert truncated_lmdbs([str(demo_data["val"]), str(cut)]) and not truncated_lmdbs([str(demo_data["val"])])
    plan = _plan(tmp_path, {"dataset": {"train": {"src": str(cut)}, "val": {"src": str(demo_data["val"])}}})
    msg = failure_message(plan, _result(-signal.SIGBUS, [], tmp_path))
    assert "killed by SIGBUS" in msg and f"truncated LMDB: {cut}" in msg and str(tmp_path / "f.log") in msg


def test_preflight_refuses_more_than_one_node():
    from launcher.params import LauncherParams

    backend = FairchemBackend()
    spec = RunSpec(backend="gemnet_oc")
    assert backend.check_launch(spec, LauncherParams(cluster="slurm", tasks_per_node=2)) == []
    [line] = backend.check_launch(spec, LauncherParams(cluster="slurm", nodes=2))
    assert line.startswith("hydra.launcher.nodes: backend=gemnet_oc runs FairChem's ranks from one torchrun")
    from launcher.submit import submit_runs

    with pytest.raises(ConfigError, match="hydra.launcher.nodes"):
        submit_runs([spec], LauncherParams(cluster="slurm", nodes=2), Path("/nonexistent/sweep"))
