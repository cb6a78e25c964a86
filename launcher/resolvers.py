"""What Hydra needs before it composes: the conf/ folder, the schema in the ConfigStore, the
OmegaConf resolvers the configs use."""
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


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (the primary config extends ``run_schema``)."""
    from hydra.core.config_store import ConfigStore

    from launcher.core.schema import RunSpec

    ConfigStore.instance().store(name="run_schema", node=RunSpec)
