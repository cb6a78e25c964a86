"""Backends by name: the entry-point group ``mlip_launch.backends``, imported only when a spec needs one.

Every backend is a ``trainers.api.BackendBase``; what the launcher asks of one is a member of that contract.
"""
from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

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
    from trainers.api import BackendBase

    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BackendBase)):
        raise NotImplementedBackend(f"backend={name}: {target} is not a trainers.api.BackendBase subclass")
    backend = cls()
    backend.name = name
    return backend


def all_backends() -> Dict[str, "Backend"]:
    """Every registered backend that imports, by name (the docs and the cross-backend checks read them all)."""
    found = {}
    for name in REGISTRY:
        try:
            found[name] = get_backend(name)
        except NotImplementedBackend:
            continue
    return found


@functools.lru_cache(maxsize=1)
def key_owners() -> Dict[str, Tuple[Tuple[str, ...], str]]:
    """Schema key -> (the backends that declare it in ``own_keys``, what it is), over every registered backend."""
    owners: Dict[str, Tuple[Tuple[str, ...], str]] = {}
    for name, backend in all_backends().items():
        for key, what in backend.own_keys.items():
            names, first = owners.get(key, ((), what))
            owners[key] = (names + (name,), first)
    return owners


def foreign_key_problems(spec: "RunSpec") -> List[str]:
    """One line per key ``spec`` sets that only other backends read (their ``own_keys``)."""
    from launcher.core.schema import default_of, get_key

    problems = []
    for key, (names, what) in key_owners().items():
        value = get_key(spec, key)
        if spec.backend not in names and value not in (None, "") and value != default_of(key):
            problems.append(f"{key}: {what}, only for backend={' / '.join(names)}; leave it unset with "
                            f"backend={spec.backend}")
    return problems


def backend_problems(spec: "RunSpec") -> List[str]:
    """The registered backend's own preflight problems for ``spec`` (none when the name is unknown:
    the schema's choice check reports that), then the keys only other backends read (a key the backend's
    own check names already is not repeated)."""
    if spec.backend not in REGISTRY:
        return []
    try:
        own = list(get_backend(spec.backend).check(spec))
    except NotImplementedBackend as e:
        return [str(e)]
    named = {line.split(":", 1)[0] for line in own}
    return own + [line for line in foreign_key_problems(spec) if line.split(":", 1)[0] not in named]


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
