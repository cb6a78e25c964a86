"""Backends by name: the entry-point group ``mlip_launch.backends``, imported only when a spec needs one."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, List, Optional, Sequence

from launcher.core.errors import NotImplementedBackend
from launcher.core.plugins import GROUP, backend_targets

if TYPE_CHECKING:  # pragma: no cover
    from launcher.core.schema import RunSpec
    from trainers.api import Backend


# name -> "module:Class", read once from the entry points (the schema's backend choices are the same names)
REGISTRY = backend_targets()


def get_backend(name: str) -> "Backend":
    """A fresh instance of the backend registered as ``name``."""
    targets = REGISTRY
    target = targets.get(name)
    if target is None:
        known = ", ".join(targets) or f"none (is mlip-launch installed? entry-point group {GROUP})"
        raise NotImplementedBackend(f"backend={name}: unknown backend; known: {known}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            raise NotImplementedBackend(f"backend={name} is not implemented yet ({module_name} missing)") from None
        raise
    backend = getattr(module, cls_name)()
    backend.name = name
    return backend


def backend_problems(spec: "RunSpec") -> List[str]:
    """The registered backend's own preflight problems for ``spec`` (none when the name is unknown:
    the schema's choice check reports that)."""
    if spec.backend not in REGISTRY:
        return []
    try:
        return list(get_backend(spec.backend).check(spec))
    except NotImplementedBackend as e:
        return [str(e)]


def prestart(argv: Sequence[str], spec: Optional["RunSpec"] = None) -> Optional[object]:
    """Let the backend named on the command line (``backend=NAME``) or by ``spec`` start early work.

    Only a backend the user named explicitly is asked (the default run needs nothing early); never raises.
    """
    from trainers.api import prestart_of

    name = spec.backend if spec is not None else _named_backend(argv)
    if name is None or name not in REGISTRY:
        return None
    try:
        backend = get_backend(name)
    except Exception:  # noqa: BLE001 - reported by preflight, not here
        return None
    return prestart_of(backend, argv, spec)


def _named_backend(argv: Sequence[str]) -> Optional[str]:
    name = None
    for a in argv:
        key, sep, value = a.lstrip("+~").partition("=")
        if sep and key == "backend":
            name = value
    return name
