"""OmegaConf resolvers the configs in conf/ use; registered before Hydra composes."""
from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The Hydra config folder, from a clone or an installed package alike."""
    import conf

    return Path(conf.__file__).resolve().parent


def register() -> None:
    from omegaconf import OmegaConf

    from launcher.demo_data import demo_path

    if not OmegaConf.has_resolver("mlip_conf"):
        OmegaConf.register_new_resolver("mlip_conf", lambda rel: str(conf_dir() / rel))
    if not OmegaConf.has_resolver("mlip_demo"):
        OmegaConf.register_new_resolver("mlip_demo", demo_path)
    if not OmegaConf.has_resolver("mlip_or"):
        OmegaConf.register_new_resolver("mlip_or", lambda a, b: b if a in (None, "", "None") else a)
