"""Exit codes as numbers, through every door: compared with the literals users and SLURM see (0, 1, 2, 3, 130,
143), never with the constants that define them, so a changed constant is caught.

A path error (a missing data file, model, model.json, config; a directory where a file belongs) exits exactly
2 with one ``error:`` line naming it, before anything runs, through ``launch``, ``launch -m`` (a real sweep, not
a dry run), ``launch-run``, ``launch-data`` and ``launch-status``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(tool: str, args: List[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLIP_DEBUG", None)
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_exit_code_constants_are_the_documented_numbers():
    from launcher.core import errors
    from launcher.reporting import EXIT_INTERRUPTED
    from launcher.status import EXIT_ACTIVE

    assert (errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_CONFIG, errors.EXIT_PREEMPTED) == (0, 1, 2, 143)
    assert (EXIT_ACTIVE, EXIT_INTERRUPTED) == (3, 130)


@pytest.fixture(scope="module")
def files(demo_data, tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("exit-inputs")
    (root / "model.json").write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0}))
    (root / "fc.yml").write_text("model: {name: equiformer_v2}\noptim: {batch_size: 2}\n")
    (root / "a_dir").mkdir()
    return {**{k: str(v) for k, v in demo_data.items()}, "model_json": str(root / "model.json"),
            "fc_cfg": str(root / "fc.yml"), "a_dir": str(root / "a_dir"), "long": "n" * 300}


#: (door, path error) -> (the door's arguments, files written into its working dir first, what the line names).
_MACE = ["device=cpu", "train.epochs=1", "data.train=@train", "data.val=@val"]
_JSON = "train.input_json=@model_json"
_HYDRA = {
    "data-missing": ([_JSON, "data.train=missing.lmdb"], "missing.lmdb"),
    "model-in-missing": (["task=finetune", "model_in=gone.model"], "model_in"),
    "input-json-missing": (["train.input_json=missing.json"], "train.input_json"),
    "input-json-a-dir": (["train.input_json=@a_dir"], "train.input_json"),
    "config-missing": (["backend=equiformer_v2", "train.config_yml=missing.yml"], "train.config_yml"),
    "indices-missing": ([_JSON, "data.indices_path=none.json"], "data.indices_path"),
    # a name too long for the file system: an OSError, not a missing file, on the way
    "indices-name-too-long": ([_JSON, "data.indices_path=@long.json"], "@long"),
    "input-json-name-too-long": (["train.input_json=@long.json"], "@long"),
    "model-in-name-too-long": (["task=finetune", "model_in=@long.model"], "@long"),
    "config-name-too-long": (["backend=equiformer_v2", "train.config_yml=@long.yml"], "@long"),
}
_RUN_YAML = {
    "data-missing": ({"data": {"train": "missing.lmdb", "val": "@val"}}, "missing.lmdb"),
    "model-in-missing": ({"task": "finetune", "model_in": "gone.model"}, "model_in"),
    "input-json-missing": ({"train": {"input_json": "missing.json", "epochs": 1}}, "train.input_json"),
    "config-missing": ({"backend": "gemnet_oc", "train": {"config_yml": "missing.yml", "epochs": 1}},
                       "train.config_yml"),
    "input-json-name-too-long": ({"train": {"input_json": "@long.json", "epochs": 1}}, "@long"),
    "model-in-name-too-long": ({"task": "finetune", "model_in": "@long.model"}, "@long"),
    "second-run-data-missing": ({"runs": [{"name": "a", "run_dir": "a"},
                                          {"name": "b", "run_dir": "b", "data": {"train": "missing.lmdb"}}],
                                 "run_dir": None}, "missing.lmdb"),
}
CASES = [
    *[pytest.param("launch", [*_MACE, *args, "run_dir=r"], {}, named, id=f"launch-{k}")
      for k, (args, named) in _HYDRA.items()],
    *[pytest.param("launch", ["-m", *_MACE, *args, "seed=0,1", "run_dir=r${seed}"], {}, named, id=f"sweep-{k}")
      for k, (args, named) in _HYDRA.items()],
    pytest.param("launch", ["-m", *_MACE, _JSON, "data.train=missing.lmdb", "seed=0,1", "hydra/launcher=local"], {},
                 "missing.lmdb", id="sweep-local-launcher-data-missing"),
    pytest.param("launch-run", ["--config", "missing.yaml"], {}, "missing.yaml", id="run-config-missing"),
    pytest.param("launch-run", ["--config", "@a_dir"], {}, "--config", id="run-config-a-dir"),
    *[pytest.param("launch-run", ["--config", "run.yaml"], over, named, id=f"run-{k}")
      for k, (over, named) in _RUN_YAML.items()],
    pytest.param("launch-data", ["info", "missing.lmdb"], {}, "missing.lmdb", id="data-info-missing"),
    pytest.param("launch-data", ["convert", "missing.xyz", "out"], {}, "missing.xyz", id="data-convert-missing"),
    pytest.param("launch-data", ["info", "@a_dir"], {}, "a_dir", id="data-info-empty-dir"),
    pytest.param("launch-data", ["info", "@long.lmdb"], {}, "@long", id="data-info-name-too-long"),
    pytest.param("launch-data", ["convert", "@long.xyz", "out"], {}, "@long", id="data-convert-name-too-long"),
    pytest.param("launch-status", ["nowhere"], {}, "nowhere", id="status-dir-missing"),
    pytest.param("launch-status", ["@long"], {}, "@long", id="status-name-too-long"),
    pytest.param("launch-status", ["sweep"], {"sweep/sweep.json/": ""}, "sweep.json", id="status-record-a-dir"),
]


def _subst(value, files: Dict[str, str]):
    if isinstance(value, str):
        for name, path in files.items():
            value = value.replace(f"@{name}", path)
        return value
    if isinstance(value, dict):
        return {k: _subst(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, files) for v in value]
    return value


def _run_yaml(over: dict, files: Dict[str, str]) -> str:
    import yaml

    body = {"backend": "mace", "task": "train", "run_dir": "r", "device": "cpu",
            "data": {"train": "@train", "val": "@val"}, "train": {"input_json": "@model_json", "epochs": 1}}
    for key, value in over.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return yaml.safe_dump(_subst(body, files))


def _tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("tool,args,over,named", CASES)
def test_a_path_error_exits_2_with_one_line_through_every_door(tool, args, over, named, files, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    if tool == "launch-run" and over is not None and args[-1] == "run.yaml":
        (cwd / "run.yaml").write_text(_run_yaml(over, files))
    elif tool == "launch-status" and over:
        for rel in over:
            (cwd / rel).mkdir(parents=True)
    before = _tree(cwd)
    r = _tool(tool, [_subst(a, files) for a in args], cwd)
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in r.stderr + r.stdout, err
    lines = err.splitlines()
    assert lines[0].startswith("error: "), err
    if len(lines) > 1:   # a sweep lists its points' problems: "error: N problems:", then one indented line each
        assert lines[0].startswith("error: ") and lines[0].endswith("problems:"), err
        assert "-m" in args or "runs" in over, err
        assert all(ln.startswith("  ") for ln in lines[1:]), err
    assert _subst(named, files) in err, f"the line does not name {named!r}: {err}"
    assert _tree(cwd) == before, "a path error created or removed files"


def _wait_for_training(proc: subprocess.Popen, metrics: Path, timeout: float = 240) -> None:
    """Until the run has logged a training step (its signal handlers are in place by then)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and '"split": "train"' in metrics.read_text():
            return
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    pytest.fail(f"the run did not start training (exit {proc.returncode}): {err[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("door,sig,code,says", [
    ("launch", "SIGTERM", 143, "checkpoint saved"),
    ("launch-run", "SIGTERM", 143, "checkpoint saved"),
    ("launch", "SIGINT", 130, "interrupted"),
])
def test_a_stopped_training_exits_with_the_documented_number(door, sig, code, says, files, tmp_path):
    """SIGTERM (SLURM's stop, preemption): 143 and resumable; ^C: 130."""
    import signal

    keys = {"backend": "mace", "task": "train", "run_dir": "r", "device": "cpu",
            "data": {"train": files["train"], "val": files["val"]},
            "train": {"input_json": files["model_json"], "epochs": 200, "log_every": 1, "save_every": 1,
                      "progress_bar": "false", "dtype": "float32"}}
    if door == "launch":
        args = ["device=cpu", f"data.train={files['train']}", f"data.val={files['val']}", "run_dir=r",
                f"train.input_json={files['model_json']}", "train.epochs=200", "train.log_every=1",
                "train.progress_bar=false", "train.dtype=float32"]
    else:
        import yaml

        (tmp_path / "run.yaml").write_text(yaml.safe_dump(keys))
        args = ["--config", "run.yaml"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLIP_DEBUG", None)
    # a shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT: give the door the
    # default disposition a terminal's ^C meets, whatever started this test run
    proc = subprocess.Popen([str(BIN / door), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_training(proc, tmp_path / "r" / "logs" / "metrics.jsonl")
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    assert says in out + err, out + err
    assert "Traceback" not in out + err, err


@pytest.mark.slow
def test_launch_status_exits_3_while_jobs_run_and_1_once_they_died(files, tmp_path):
    """A local sweep submitted without waiting: launch-status says 3 while its jobs run; killed, they failed: 1."""
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["-m", "hydra/launcher=local", "hydra.launcher.wait=false", "device=cpu", f"data.train={files['train']}",
            f"data.val={files['val']}", f"train.input_json={files['model_json']}", "train.epochs=500",
            "train.progress_bar=false", "run_dir=sw/r${seed}", "seed=0,1", "hydra.sweep.dir=sw"]
    # its own process group, which the submitted jobs join: the test ends them all, and only them
    with open(tmp_path / "submit.log", "w") as log:   # not a pipe: the submitted jobs inherit the descriptors
        sub = subprocess.Popen([str(BIN / "launch"), *args], cwd=tmp_path, env=env, stdout=log, stderr=log,
                               start_new_session=True)
    pids = []
    try:
        assert sub.wait(timeout=300) == 0, (tmp_path / "submit.log").read_text()[-3000:]
        pids = [int(j["job_id"]) for j in json.loads((tmp_path / "sw" / "sweep.json").read_text())["jobs"]]
        running = _tool("launch-status", ["sw"], tmp_path)
        assert running.returncode == 3, f"exit {running.returncode}\n{running.stdout}\n{running.stderr[-2000:]}"
        assert "2 RUNNING" in running.stdout or "PENDING" in running.stdout, running.stdout
    finally:
        try:
            os.killpg(sub.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 60
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
        time.sleep(0.2)
    dead = _tool("launch-status", ["sw"], tmp_path)
    assert dead.returncode == 1, f"exit {dead.returncode}\n{dead.stdout}\n{dead.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("door", ["launch", "launch-run"])
def test_a_dry_run_gives_the_real_runs_verdict_on_a_run_dir_name_too_long(door, files, tmp_path):
    import yaml

    run_dir = "r/" + "n" * 300
    if door == "launch":
        base = ["device=cpu", f"data.train={files['train']}", f"data.val={files['val']}",
                f"train.input_json={files['model_json']}", "train.epochs=1", f"run_dir={run_dir}"]
        dry, real = [*base, "dry_run=true"], base
    else:
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(
            {"backend": "mace", "task": "train", "run_dir": run_dir, "device": "cpu",
             "data": {"train": files["train"], "val": files["val"]},
             "train": {"input_json": files["model_json"], "epochs": 1}}))
        dry, real = ["--config", "run.yaml", "--dry-run"], ["--config", "run.yaml"]
    before = _tree(tmp_path)
    r = _tool(door, real, tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    d = _tool(door, dry, tmp_path)
    assert d.returncode == r.returncode, f"dry run: exit {d.returncode}, the run: exit {r.returncode}"
    assert _tree(tmp_path) == before, "the refused run created files"
