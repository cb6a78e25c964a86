"""Hydra search path: the ``conf/`` folders that backends installed as their own packages ship.

A backend in this project has its file in ``conf/backend/``; one registered from another package
(entry-point group ``mlip_launch.backends``) brings ``<package>/conf/backend/NAME.yaml`` instead, and
``backend=NAME`` composes it the same way. Imported by Hydra's plugin discovery: standard library only.
"""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from launcher.core.plugins import backend_conf_dirs


class BackendConfSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in backend_conf_dirs():
            search_path.append(provider="mlip-launch-backend", path=f"file://{folder}")
