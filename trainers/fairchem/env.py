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
from trainers.fairchem.provision import SETUP_SCRIPT, env_facts, provisioned_env


def default_python() -> Optional[str]:
    """The interpreter of the env ``scripts/setup-fairchem-env`` made, or None when it is absent/incomplete.

    Found from the script's naming rule and the env's stamp (:mod:`trainers.fairchem.provision`): nothing is run.
    """
    root = provisioned_env()
    return str(root / "bin" / "python") if root is not None else None


def check_python(backend_python: Optional[str], backend_env: Optional[Mapping[str, str]] = None) -> str:
    """:func:`resolve_python`, plus (for an interpreter the user named) a check that its env holds FairChem v1,
    torch-scatter and torch-sparse, read from the env's files (see provision.py): the interpreter is not started
    (it is the user's program; it runs when the run does). An env whose layout we cannot read passes; the
    provisioned env is smoke-tested when it is built.
    """
    python = resolve_python(backend_python)
    if backend_python:
        facts = env_facts(python, child_env(backend_env or {}))
        missing = facts.missing()
        if missing:
            where = f"its env {facts.root}" if facts.root else "its env"
            raise ConfigError(f"backend_python: {python}: {where} has no {', '.join(missing)} (looked for their "
                              f"folders in {', '.join(str(d) for d in facts.site_dirs[:3])}"
                              f"{' ...' if len(facts.site_dirs) > 3 else ''}); point it at an interpreter with "
                              f"fairchem-core 1.10, torch-scatter and torch-sparse, or leave it unset and run "
                              f"{SETUP_SCRIPT}")
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
        if p.is_dir() or not os.access(p, os.X_OK):
            raise ConfigError(f"backend_python: not an executable file: {p}")
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
