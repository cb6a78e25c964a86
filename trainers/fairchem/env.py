"""Which interpreter runs FairChem, and the environment its process gets."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Mapping, Optional

from launcher.core.errors import ConfigError
from launcher.core.env import set_thread_defaults
from launcher.core.schema import cuda_index

SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-fairchem-env"


_found: Dict[str, str] = {}


def default_python() -> Optional[str]:
    """The interpreter of the env ``scripts/setup-fairchem-env`` made, or None when it is absent/incomplete.

    A found interpreter is remembered for the process (the script hashes the requirements file).
    """
    key = os.environ.get("MLIP_FAIRCHEM_ENV", "")
    if key in _found and Path(_found[key]).exists():
        return _found[key]
    if not SETUP_SCRIPT.exists():
        return None
    try:
        out = subprocess.run([str(SETUP_SCRIPT), "--print-python"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
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
    FairChem process's, :func:`child_env`) -- '' when none; found without importing them (fast)."""
    env = dict(child_env({}) if env is None else env)
    key = (python, env.get("PYTHONPATH", ""), env.get("PYTHONHOME", ""))
    if key not in _checked:
        code = ("import importlib.util as u\n"
                "def has(m):\n"
                "    try:\n        return u.find_spec(m) is not None\n"
                "    except ImportError:\n        return False\n"
                f"print(','.join(m for m in {REQUIRED_MODULES!r} if not has(m)))")
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, env=env)
            result = out.stdout.strip() if out.returncode == 0 else ",".join(REQUIRED_MODULES)
        except (OSError, subprocess.TimeoutExpired):
            result = ",".join(REQUIRED_MODULES)
        _checked[key] = result
    return _checked[key]


def check_python(backend_python: Optional[str], backend_env: Optional[Mapping[str, str]] = None) -> str:
    """:func:`resolve_python`, plus (for an interpreter the user named) a check that it finds FairChem v1
    in the environment its process will get (``backend_env`` included).

    The provisioned env is smoke-tested when it is built, so it is not checked again here.
    """
    python = resolve_python(backend_python)
    if backend_python:
        missing = missing_modules(python, child_env(backend_env or {}))
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
    FairChem's interpreter, so they are dropped unless ``backend_env`` sets them.
    """
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
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
