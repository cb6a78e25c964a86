"""What Hydra needs before it composes: the conf/ folder, the schema in the ConfigStore, the
OmegaConf resolvers the configs use."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

_SCRATCH: Optional[str] = None


def conf_dir() -> Path:
    """The Hydra config folder, from a clone or an installed package alike."""
    import conf

    return Path(conf.__file__).resolve().parent


def hydra_scratch_dir() -> str:
    """Hydra's run-mode output folder (``hydra.run.dir``): a private, not yet existing temp folder.

    Hydra creates ``hydra.run.dir`` before the job function runs, i.e. before preflight; pointing it
    here keeps a rejected or dry run from leaving an empty run_dir behind. The run's own directory is
    ``run_dir`` (default ``runs/DATE/TIME``), created only by the job. :func:`remove_hydra_scratch`
    deletes this folder when ``launch`` ends.
    """
    global _SCRATCH
    if _SCRATCH is None:
        import secrets
        import tempfile

        _SCRATCH = os.path.join(tempfile.gettempdir(), f"mlip-launch-hydra-{os.getpid()}-{secrets.token_hex(4)}")
    return _SCRATCH


def remove_hydra_scratch() -> None:
    """Delete this process's Hydra scratch folder (and whatever ``hydra.output_subdir`` put there)."""
    global _SCRATCH
    if _SCRATCH is not None:
        import shutil

        shutil.rmtree(_SCRATCH, ignore_errors=True)
        _SCRATCH = None


def register() -> None:
    from omegaconf import OmegaConf

    from launcher.demo_data import demo_path

    if not OmegaConf.has_resolver("mlip_conf"):
        OmegaConf.register_new_resolver("mlip_conf", lambda rel: str(conf_dir() / rel))
    if not OmegaConf.has_resolver("mlip_demo"):
        OmegaConf.register_new_resolver("mlip_demo", demo_path)
    if not OmegaConf.has_resolver("mlip_scratch"):
        OmegaConf.register_new_resolver("mlip_scratch", hydra_scratch_dir)
    if not OmegaConf.has_resolver("mlip_or"):
        OmegaConf.register_new_resolver("mlip_or", lambda a, b: b if a in (None, "", "None") else a)


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (the primary config extends ``run_schema``)."""
    from hydra.core.config_store import ConfigStore

    from launcher.core.schema import RunSpec

    ConfigStore.instance().store(name="run_schema", node=RunSpec)
