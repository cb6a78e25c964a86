"""Hydra's ``file://`` config source, reading each file through ``launcher.core.readers`` first.

Hydra reads experiment files and ``--config-dir`` folders with a plain ``open`` and ``OmegaConf.load``:
a file that is not UTF-8, holds a tag, a duplicate key or an alias bomb, or nests without end would
end as a traceback, a hang or minutes of work. This source refuses such a file in one
line naming it, then lets OmegaConf parse the checked text as Hydra would.

:func:`install` puts it in Hydra's registry of sources in place of Hydra's own (it is kept out of
``hydra_plugins``: plugin discovery refuses a second class for a scheme).

A config file outside this project's ``conf/`` folders may not name Python objects for Hydra to build:
``hydra.callbacks``, any ``_target_`` (or logging ``()`` factory) outside :data:`ALLOWED_TARGETS` and a
logging handler ``class`` outside ``logging.*`` are refused, so that composing a config (a dry run included)
runs no code from it.
"""
from __future__ import annotations

import functools
import io
import os
from typing import Any, List, Tuple

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource

# what a user's config file may name in a _target_: installed Hydra plugins (a launcher or sweeper preset of
# one's own) and Optuna's samplers and pruners (hydra/sweeper/sampler options)
ALLOWED_TARGETS = ("hydra_plugins.", "optuna.samplers.", "optuna.pruners.")

# (path, text) of every file this process composed from: a failed interpolation is traced back to its file
_LOADED: List[Tuple[str, str]] = []


def where_key(full_key: str, leaf: str) -> str:
    """Where a key Hydra refused came from: ``command line`` when an override names it, else ``FILE: line N`` of
    the last config file of the user's that writes it, else ``command line``."""
    import re
    import sys

    given = [a.lstrip("+~").partition("=")[0] for a in sys.argv[1:] if "=" in a]
    if any(k in (full_key, leaf) or k.endswith("." + leaf) for k in given):
        return "command line"
    pattern = re.compile(r"^[ \t-]*['\"]?" + re.escape(leaf) + r"['\"]?[ \t]*:", re.M)
    for path, text in reversed(_LOADED):
        m = pattern.search(text) if not _trusted(path) else None
        if m:
            return f"{path}: line {text.count(chr(10), 0, m.start()) + 1}"
    return "command line"


def where_set(value: str) -> str:
    """Where a composed value came from: ``FILE: line N`` of the last config file read that holds its text,
    else ``command line`` (a value no file holds came from an override)."""
    for path, text in reversed(_LOADED):
        at = text.find(value)
        if at >= 0:
            return f"{path}: line {text.count(chr(10), 0, at) + 1}"
    return "command line"


@functools.lru_cache(maxsize=1)
def _trusted_roots() -> Tuple[str, ...]:
    """This project's ``conf/`` and the conf folders of registered backends: the configs shipped with the code."""
    from launcher.core.plugins import backend_conf_dirs
    from launcher.resolvers import conf_dir

    return tuple(os.path.realpath(r) + os.sep for r in (conf_dir(), *backend_conf_dirs()))


def _trusted(path: str) -> bool:
    return os.path.realpath(path).startswith(_trusted_roots())


def _refuse_targets(data: Any, where: str, package: str) -> None:
    """Refuse what Hydra would instantiate from an untrusted file: hydra.callbacks, foreign _target_/()."""
    from launcher.core.errors import ConfigError
    from launcher.core.readers import key_line

    def line(node: Any, key: str) -> str:
        n = key_line(node, key)
        return f"line {n}: " if n else ""

    stack = [(data, package)]
    while stack:
        node, dotted = stack.pop()
        if isinstance(node, list):
            stack.extend((v, dotted) for v in node)
            continue
        if not isinstance(node, dict):
            continue
        for k, v in node.items():
            here = f"{dotted}.{k}" if dotted else str(k)
            if (here == "hydra.callbacks" or here.startswith("hydra.callbacks.")) and v:
                raise ConfigError(f"{where}: {line(node, k)}hydra.callbacks: launch does not run Hydra callbacks "
                                  f"from config files; remove them")
            logging_class = k == "class" and here.startswith(("hydra.job_logging.", "hydra.hydra_logging."))
            if logging_class and not str(v).startswith("logging."):  # logging's dictConfig builds these too
                raise ConfigError(f"{where}: {line(node, k)}{here}: '{v}': a logging handler class must be one of "
                                  f"the standard library's (logging.*)")
            if k in ("_target_", "()") and not str(v).startswith(ALLOWED_TARGETS):
                raise ConfigError(f"{where}: {line(node, k)}{here}: '{v}': config files may not name Python "
                                  f"objects to build (only {', '.join(p + '*' for p in ALLOWED_TARGETS)})")
            stack.append((v, here))


class CheckedFileConfigSource(FileConfigSource):
    """``file://`` configs read through the safe reader (regular files, bounded, UTF-8, plain YAML)."""

    def is_config(self, config_path: str) -> bool:
        """Any existing entry, not only regular files: a FIFO or folder named like a config is then refused
        by name in :meth:`load_config` instead of reported as a missing option."""
        full_path = os.path.realpath(os.path.join(self.path, self._normalize_file_name(config_path)))
        return os.path.exists(full_path) and not os.path.isdir(os.path.join(self.path, config_path))

    def load_config(self, config_path: str) -> ConfigResult:
        from omegaconf import OmegaConf

        from launcher.core.readers import parse_yaml, read_text

        normalized = self._normalize_file_name(config_path)
        full_path = os.path.normpath(os.path.join(os.path.abspath(self.path), normalized))  # as named, links kept
        if not os.path.exists(full_path):
            raise ConfigLoadError(f"Config not found : {full_path}")
        text = read_text(full_path, key=None, what="config file")
        data = parse_yaml(text, where=full_path)
        header = ConfigSource._get_header_dict(text[:512])
        if not _trusted(full_path):
            group = os.path.dirname(normalized).replace("/", ".")
            package = (header.get("package") or group).replace("_group_", group)
            if package.startswith("_global_"):
                package = package[len("_global_"):].lstrip(".")
            _refuse_targets(data, full_path, package)
        _LOADED.append((full_path, text))
        cfg = OmegaConf.load(io.StringIO(text))
        return ConfigResult(config=cfg, path=f"{self.scheme()}://{self.path}", provider=self.provider, header=header)


def install() -> None:
    """Make ``file://`` config paths (``conf/``, ``--config-dir``, experiment files) load through this source."""
    from hydra._internal.sources_registry import SourcesRegistry
    from hydra.core.plugins import Plugins

    _LOADED.clear()  # one launch's files only (tests run several launches in one process)
    Plugins.instance()  # plugin discovery first: it registers Hydra's own file source, which this replaces
    SourcesRegistry.instance().types[CheckedFileConfigSource.scheme()] = CheckedFileConfigSource
