"""The FairChem env is learned from its files: preflight and dry runs start no program.

A ``backend_python`` is the user's program: a dry run, and the preflight of a real run, must not start it.
What the launcher needs (where the provisioned env is, whether an interpreter's env holds FairChem, whether
torch-scatter/torch-sparse carry CUDA kernels) is read from disk; these tests build such envs as folders.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.core.errors import ConfigError
from launcher.core.schema import RunSpec, check
from trainers.fairchem.backend import FairchemBackend
from trainers.fairchem.env import check_python, default_python
from trainers.fairchem.provision import (CUDA_FIX, ENV_RECORD, SETUP_SCRIPT, STAMP, env_facts, env_hash,
                                         script_versions)

from .conftest import TEST_CONFIGS

LAUNCH = Path(sys.executable).with_name("launch")
LAUNCH_RUN = Path(sys.executable).with_name("launch-run")
EQV2 = TEST_CONFIGS / "test_equiformerv2.yml"
GEMNET = TEST_CONFIGS / "test_gemnet_oc.yml"


def _python_script(path: Path, marker: Path) -> str:
    """An executable named like an interpreter that leaves ``marker`` behind when anything starts it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ntouch {marker}\nexit 3\n")
    path.chmod(0o755)
    return str(path)


def _venv(root: Path, marker: Path, packages=(), cuda=False) -> str:
    """A venv's folders: pyvenv.cfg, bin/python (a marker-writing script), site-packages with ``packages``
    (torch_scatter/torch_sparse with their compiled files, CPU-only unless ``cuda``)."""
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n")
    for pkg in packages:
        folder = site.joinpath(*pkg.split("."))
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        if pkg in ("torch_scatter", "torch_sparse"):
            (folder / "_version_cpu.so").write_bytes(b"")
            if cuda:
                (folder / "_version_cuda.so").write_bytes(b"")
    return _python_script(root / "bin" / "python", marker)


FAIRCHEM_PACKAGES = ("fairchem.core", "torch_scatter", "torch_sparse")


def _env(tmp_path, **extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("PYTHONPATH", None)
    return env


# ------------------------------------------------------------------ the provisioned env, from its files

def test_env_hash_is_the_setup_scripts_own(tmp_path):
    """The script names its env after this hash; the launcher finds the env without running the script."""
    for cuda in ("0", "1"):
        out = subprocess.run(["bash", str(SETUP_SCRIPT), "--env-dir"], capture_output=True, text=True,
                             env={**{k: v for k, v in os.environ.items() if k != "MLIP_FAIRCHEM_ENV"},
                                  "MLIP_LAUNCH_CACHE": str(tmp_path), "MLIP_FAIRCHEM_CUDA_EXT": cuda})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith(f"-{env_hash(cuda == '1')}")
        assert f"fairchem-{script_versions()['FAIRCHEM_VERSION']}-py" in out.stdout
    assert env_hash(False) != env_hash(True)


def _cached_env(tmp_path: Path, monkeypatch, marker: Path) -> Path:
    """The folder (and venv) the setup script would build under an empty cache at ``tmp_path/cache``, no stamp
    yet; the launcher looks there (no MLIP_FAIRCHEM_ENV, CPU-only extensions)."""
    monkeypatch.setenv("MLIP_LAUNCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLIP_FAIRCHEM_ENV", raising=False)
    monkeypatch.delenv("MLIP_FAIRCHEM_CUDA_EXT", raising=False)
    root = tmp_path / "cache" / "envs" / f"fairchem-{script_versions()['FAIRCHEM_VERSION']}-py3.11-{env_hash(False)}"
    _venv(root, marker, FAIRCHEM_PACKAGES)
    return root


def test_default_python_is_found_without_starting_anything(tmp_path, monkeypatch):
    marker = tmp_path / "started"
    root = _cached_env(tmp_path, monkeypatch, marker)
    py = str(root / "bin" / "python")
    assert default_python() is None                               # no stamp: the build did not finish
    (root / STAMP).write_text(env_hash(False) + "\n")
    assert default_python() == py
    monkeypatch.setenv("MLIP_FAIRCHEM_CUDA_EXT", "1")              # the CUDA-kernel env is another folder
    assert default_python() is None
    monkeypatch.setenv("MLIP_FAIRCHEM_CUDA_EXT", "0")
    (root / STAMP).write_text("0123456789ab\n")                   # a stale env: other requirements
    assert default_python() is None
    (root / STAMP).write_text(env_hash(False) + "\n")
    monkeypatch.setenv("MLIP_FAIRCHEM_ENV", str(root))
    assert default_python() == py
    assert not marker.exists()


def test_the_setup_script_records_what_an_env_holds(tmp_path):
    """A complete env built before the record existed gets one (versions, cuda_ext) without being rebuilt."""
    marker = tmp_path / "started"
    root = tmp_path / "env"
    _venv(root, marker, FAIRCHEM_PACKAGES)
    (root / "lib" / "python3.11" / "site-packages" / "torch-2.4.1.dist-info").mkdir()
    (root / STAMP).write_text(env_hash(False) + "\n")
    env = {**os.environ, "MLIP_LAUNCH_CACHE": str(tmp_path / "cache"), "MLIP_FAIRCHEM_ENV": str(root),
           "MLIP_FAIRCHEM_CUDA_EXT": "0"}
    # complete as the script sees it: its build command below can only write the record (never build)
    assert subprocess.run(["bash", str(SETUP_SCRIPT), "--print-python"], env=env, capture_output=True).returncode == 0
    out = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "env is complete" in out.stderr, out.stderr
    record = json.loads((root / ENV_RECORD).read_text())
    assert record == {"hash": env_hash(False), "cuda_ext": False, "python": "3.11",
                      "fairchem_core": script_versions()["FAIRCHEM_VERSION"], "torch": "2.4.1",
                      "torch_scatter": script_versions()["TORCH_SCATTER_VERSION"],
                      "torch_sparse": script_versions()["TORCH_SPARSE_VERSION"]}
    assert env_facts(str(root / "bin" / "python")).cuda_ext() is False
    assert not marker.exists()


# ------------------------------------------------------------------ an interpreter the user names

def test_a_named_interpreter_without_fairchem_is_refused_from_its_files(tmp_path):
    with pytest.raises(ConfigError, match=r"backend_python: .*: its env .* has no fairchem\.core, torch_scatter, "
                                          r"torch_sparse"):
        check_python(sys.executable)                              # the launcher's own venv has no FairChem
    dev = tmp_path / "src"                                        # a development set-up: FairChem on PYTHONPATH
    for pkg in FAIRCHEM_PACKAGES:
        (dev / pkg.replace(".", "/")).mkdir(parents=True)
        (dev / pkg.replace(".", "/") / "__init__.py").write_text("")
    assert check_python(sys.executable, {"PYTHONPATH": str(dev)}) == sys.executable
    marker = tmp_path / "started"
    partial = _venv(tmp_path / "partial", marker, ("fairchem.core",))
    with pytest.raises(ConfigError, match=r"has no torch_scatter, torch_sparse \(looked for their folders in "):
        check_python(partial)
    full = _venv(tmp_path / "full", marker, FAIRCHEM_PACKAGES)
    assert check_python(full) == full
    wheels = tmp_path / "wheels"                                  # installed as distributions (dist-info only)
    py = _venv(wheels, marker)
    for dist in ("fairchem_core-1.10.0", "torch_scatter-2.1.2", "torch_sparse-0.6.18"):
        (wheels / "lib" / "python3.11" / "site-packages" / f"{dist}.dist-info").mkdir()
    assert check_python(py) == py
    assert not marker.exists()


def test_cuda_kernels_from_the_record_or_the_compiled_files(tmp_path):
    marker = tmp_path / "started"
    cpu = env_facts(_venv(tmp_path / "cpu", marker, FAIRCHEM_PACKAGES))
    gpu = env_facts(_venv(tmp_path / "gpu", marker, FAIRCHEM_PACKAGES, cuda=True))
    unknown = env_facts(_venv(tmp_path / "none", marker, ("fairchem.core",)))
    assert (cpu.cuda_ext(), gpu.cuda_ext(), unknown.cuda_ext()) == (False, True, None)
    (tmp_path / "cpu" / ENV_RECORD).write_text(json.dumps({"cuda_ext": True}))   # the script's record first
    assert env_facts(str(tmp_path / "cpu" / "bin" / "python")).cuda_ext() is True


def _spec(tmp_path, demo_data, **kw) -> RunSpec:
    spec = RunSpec(backend=kw.pop("backend", "gemnet_oc"), task="train", run_dir=str(tmp_path / "run"),
                   device=kw.pop("device", "cuda"))
    spec.train.config_yml = str(kw.pop("config_yml", GEMNET))
    for split in ("train", "val"):
        setattr(spec.data, split, str(demo_data[split]))
    for k, v in kw.items():
        setattr(spec, k, v)
    return check(spec)


def test_a_gpu_run_of_gemnet_with_cpu_only_extensions_is_refused_with_the_fix(tmp_path, demo_data,
                                                                              fairchem_fixtures):
    marker = tmp_path / "started"
    cpu = _venv(tmp_path / "cpu", marker, FAIRCHEM_PACKAGES)
    gpu = _venv(tmp_path / "gpu", marker, FAIRCHEM_PACKAGES, cuda=True)
    problems = FairchemBackend().check(_spec(tmp_path, demo_data, backend_python=cpu))
    assert len(problems) == 1 and problems[0].startswith(f"backend_python: the FairChem env at {tmp_path / 'cpu'} "
                                                         "has torch-scatter/torch-sparse without CUDA kernels")
    assert CUDA_FIX in problems[0] and "device=cpu" in problems[0] and "\n" not in problems[0]
    assert FairchemBackend().check(_spec(tmp_path, demo_data, backend_python=gpu)) == []
    assert FairchemBackend().check(_spec(tmp_path, demo_data, backend_python=cpu, device="cpu")) == []
    assert [p.replace("cuda:1", "cuda") for p in
            FairchemBackend().check(_spec(tmp_path, demo_data, backend_python=cpu, device="cuda:1"))] == problems
    # EquiformerV2 does not use their kernels
    assert FairchemBackend().check(_spec(tmp_path, demo_data, backend="equiformer_v2", config_yml=EQV2,
                                         backend_python=cpu)) == []
    assert not marker.exists()


def test_the_cpu_env_here_is_refused_for_a_gpu_gemnet_run(tmp_path, demo_data, fairchem_fixtures, fairchem_python):
    """The env scripts/setup-fairchem-env built here (CPU-only extensions): a dry run on this GPU-less machine
    names both problems, the GPU and the rebuild, one line each, and exits 2."""
    facts = env_facts(fairchem_python)
    if facts.cuda_ext():
        pytest.skip("this FairChem env was built with CUDA kernels")
    out = subprocess.run([str(LAUNCH), "backend=gemnet_oc", "device=cuda", f"run_dir={tmp_path / 'run'}",
                          f"train.config_yml={GEMNET}", f"data.train={demo_data['train']}",
                          f"data.val={demo_data['val']}", "dry_run=true"],
                         capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = [ln.strip() for ln in out.stderr.splitlines()]
    assert any(ln.startswith("backend_python:") and CUDA_FIX in ln for ln in lines), out.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ dry runs and refused runs start nothing

@pytest.mark.parametrize("layout", ["script", "venv"])
def test_dry_runs_and_refused_runs_never_start_backend_python(tmp_path, demo_data, fairchem_fixtures, layout):
    """Both doors, dry run and real run: a ``backend_python`` that would leave a marker behind is never started
    before the run is accepted (a wrapper script is accepted as it is; a venv without FairChem is refused)."""
    marker = tmp_path / "started"
    py = (_python_script(tmp_path / "wrapper" / "python", marker) if layout == "script"
          else _venv(tmp_path / "venv", marker))
    data = {k: str(demo_data[k]) for k in ("train", "val")}
    base = {"backend": "equiformer_v2", "task": "train", "device": "cpu", "backend_python": py,
            "train": {"config_yml": str(EQV2)}, "data": data}
    refused_key = {"train": {"config_yml": str(EQV2), "head_key": "x"}}
    accepted = 0 if layout == "script" else 2
    cases = [
        ([str(LAUNCH_RUN), "--config", "{cfg}", "--dry-run"], base, accepted),
        ([str(LAUNCH_RUN), "--config", "{cfg}"], {**base, **refused_key}, 2),
    ]
    for i, (cmd, run, want) in enumerate(cases):
        cfg = tmp_path / f"run{i}.yaml"
        cfg.write_text(json.dumps({**run, "run_dir": str(tmp_path / f"r{i}")}))
        out = subprocess.run([c.format(cfg=cfg) for c in cmd], capture_output=True, text=True, env=_env(tmp_path),
                             cwd=tmp_path, timeout=120)
        assert out.returncode == want, (cmd, out.stdout, out.stderr)
        assert not marker.exists(), cmd
        assert not (tmp_path / f"r{i}").exists()
    hydra = [str(LAUNCH), "backend=equiformer_v2", "device=cpu", f"backend_python={py}", f"train.config_yml={EQV2}",
             f"data.train={data['train']}", f"data.val={data['val']}"]
    for extra, want in ((["dry_run=true"], accepted), (["train.head_key=x"], 2)):
        out = subprocess.run([*hydra, f"run_dir={tmp_path / 'h'}", *extra], capture_output=True, text=True,
                             env=_env(tmp_path), cwd=tmp_path, timeout=120)
        assert out.returncode == want, (extra, out.stderr)
        assert not marker.exists(), extra
    if layout == "venv":
        assert "has no fairchem.core, torch_scatter, torch_sparse" in out.stderr


@pytest.mark.parametrize("named", [False, True])
def test_preflight_and_the_dry_run_text_start_no_process(tmp_path, demo_data, fairchem_fixtures, monkeypatch, named):
    """Every check and the dry run's description, in process, with process creation itself refused."""
    import subprocess as sp

    from launcher.preflight import check_sweep, describe

    marker = tmp_path / "started"
    root = _cached_env(tmp_path, monkeypatch, marker)
    provisioned = str(root / "bin" / "python")
    (root / STAMP).write_text(env_hash(False) + "\n")
    mine = _venv(tmp_path / "mine", marker, FAIRCHEM_PACKAGES)

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[1] if len(args) > 1 else kwargs.get('args')!r}")

    monkeypatch.setattr(sp.Popen, "__init__", no_process)
    monkeypatch.setattr(os, "posix_spawn", no_process)
    for task in ("train", "evaluate"):
        spec = RunSpec(backend="equiformer_v2", task=task, run_dir=str(tmp_path / task), device="cpu",
                       backend_python=mine if named else None, dry_run=True)
        spec.train.config_yml = str(EQV2)
        spec.data.train, spec.data.val, spec.data.test = (str(demo_data[s]) for s in ("train", "val", "test"))
        if task == "evaluate":
            spec.model_in = str(tmp_path / "model.pt")
            Path(spec.model_in).write_bytes(b"\x80\x02}q\x00.")   # a pickle protocol-2 header: torch's legacy form
        spec = check(spec)
        assert check_sweep([spec], notes=False) == []
        text = describe(spec)
        assert (mine if named else provisioned) in text and "not runnable" not in text, text
    assert not marker.exists()
