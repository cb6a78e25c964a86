"""Which interpreter runs FairChem, and the environment its process gets."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Mapping, Optional

from launcher.core.errors import ConfigError
from launcher.core.env import set_thread_defaults
from launcher.core.schema import cuda_index

# torchrun's rendezvous variables: set for FairChem's own ranks only (see ranks.py), never inherited
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")
SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-fairchem-env"


_found: Dict[str, str] = {}


def probe_timeout() -> float:
    """Seconds an interpreter probe or the env script may take (``MLIP_FAIRCHEM_PROBE_TIMEOUT_S``, default 30)."""
    try:
        return max(0.1, float(os.environ.get("MLIP_FAIRCHEM_PROBE_TIMEOUT_S", "30")))
    except ValueError:
        return 30.0


def default_python() -> Optional[str]:
    """The interpreter of the env ``scripts/setup-fairchem-env`` made, or None when it is absent/incomplete.

    A found interpreter is remembered for the process (the script hashes the requirements file).
    """
    from trainers.fairchem.process import ProbeFailed, run_probe

    key = os.environ.get("MLIP_FAIRCHEM_ENV", "")
    if key in _found and Path(_found[key]).exists():
        return _found[key]
    if not SETUP_SCRIPT.exists():
        return None
    try:
        out = run_probe([str(SETUP_SCRIPT), "--print-python"], timeout=probe_timeout(), what=str(SETUP_SCRIPT))
    except ProbeFailed:
        return None
    path = out.stdout.strip()
    if out.returncode == 0 and path:
        _found[key] = path
        return path
    return None


REQUIRED_MODULES = ("fairchem.core", "torch_scatter", "torch_sparse")
_checked: Dict[tuple, str] = {}


def missing_modules(python: str, env: Optional[Mapping[str, str]] = None) -> str:
    """Which of :data:`REQUIRED_MODULES` ``python`` cannot find with environment ``env`` (default: the
    FairChem process's, :func:`child_env`) -- '' when none; found without importing them (fast).

    Raises ``ProbeFailed`` with one honest line when the interpreter does not answer: it timed out
    (:func:`probe_timeout`; its whole process group is killed), could not start, or died on start.
    """
    from trainers.fairchem.process import ProbeFailed, run_probe

    env = dict(child_env({}) if env is None else env)
    key = (python, env.get("PYTHONPATH", ""), env.get("PYTHONHOME", ""))
    if key not in _checked:
        code = ("import importlib.util as u\n"
                "def has(m):\n"
                "    try:\n        return u.find_spec(m) is not None\n"
                "    except ImportError:\n        return False\n"
                f"print('MLIP-MISSING:' + ','.join(m for m in {REQUIRED_MODULES!r} if not has(m)))")
        out = run_probe([python, "-c", code], env=env, timeout=probe_timeout(), what=python)
        answer = [ln for ln in out.stdout.splitlines() if ln.startswith("MLIP-MISSING:")]
        if out.returncode != 0 or not answer:
            last = next((ln.strip() for ln in reversed((out.stderr + out.stdout).splitlines()) if ln.strip()),
                        "no output")
            how = f"exit code {out.returncode}" if out.returncode >= 0 else f"signal {-out.returncode}"
            raise ProbeFailed(f"{python} failed on start ({how}): {last[:200]}")
        _checked[key] = answer[-1][len("MLIP-MISSING:"):].strip()
    return _checked[key]


def check_python(backend_python: Optional[str], backend_env: Optional[Mapping[str, str]] = None) -> str:
    """:func:`resolve_python`, plus (for an interpreter the user named) a check that it finds FairChem v1
    in the environment its process will get (``backend_env`` included).

    The provisioned env is smoke-tested when it is built, so it is not checked again here.
    """
    from trainers.fairchem.process import ProbeFailed

    python = resolve_python(backend_python)
    if backend_python:
        try:
            missing = missing_modules(python, child_env(backend_env or {}))
        except ProbeFailed as e:
            raise ConfigError(f"backend_python: {e} (asked which of {', '.join(REQUIRED_MODULES)} it finds; "
                              "MLIP_FAIRCHEM_PROBE_TIMEOUT_S sets the time limit)") from None
        if missing:
            raise ConfigError(f"backend_python: {python} cannot import {missing.replace(',', ', ')}; point it at an "
                              f"interpreter with fairchem-core 1.10, torch-scatter and torch-sparse, or leave it "
                              f"unset and run {SETUP_SCRIPT}")
    return python


def resolve_python(backend_python: Optional[str]) -> str:
    """``backend_python`` when given (a path or a command on PATH), else the provisioned env's python."""
    if backend_python:
        if "/" not in backend_python:
            found = shutil.which(backend_python)
            if found is None:
                raise ConfigError(f"backend_python: '{backend_python}' is not on PATH")
            return found
        p = Path(backend_python).expanduser()
        if not p.exists():
            raise ConfigError(f"backend_python: file not found: {p}")
        if not os.access(p, os.X_OK):
            raise ConfigError(f"backend_python: not executable: {p}")
        return str(p)
    found = default_python()
    if found is None:
        raise ConfigError("backend_python: not set and the FairChem environment is not provisioned; "
                          f"run {SETUP_SCRIPT} (about 20 minutes the first time) or set backend_python")
    return found


def child_env(backend_env: Mapping[str, str], base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The FairChem process's environment: ours + ``backend_env``, explicit threads, no wandb surprise.

    ``PYTHONPATH``/``PYTHONHOME`` of the launcher's env would leak the launcher's packages into
    FairChem's interpreter, so they are dropped unless ``backend_env`` sets them; so are the rendezvous
    variables of a job the launcher itself runs in (torchrun's): FairChem would join that process group.
    """
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", *DIST_VARS):
        env.pop(key, None)
    env.update({str(k): str(v) for k, v in backend_env.items()})
    set_thread_defaults(env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not env.get("WANDB_API_KEY"):
        env.setdefault("WANDB_MODE", "disabled")
    return env


def device_env(device: str, backend_env: Mapping[str, str], base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for ``device: cuda:N`` (FairChem then uses its cuda:0): GPU N of those visible
    to the launcher; nothing when ``backend_env`` sets it, or for any other device."""
    n = cuda_index(device)
    if n is None or "CUDA_VISIBLE_DEVICES" in backend_env:
        return {}
    base = os.environ if base is None else base
    visible = [v.strip() for v in str(base.get("CUDA_VISIBLE_DEVICES", "")).split(",") if v.strip()]
    if visible and n < len(visible):
        return {"CUDA_VISIBLE_DEVICES": visible[n]}
    return {"CUDA_VISIBLE_DEVICES": str(n)}
