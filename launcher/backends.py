"""Backend registry: names to classes, imported only when a job (or preflight) needs them."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from launcher.errors import NotImplementedBackend

if TYPE_CHECKING:  # pragma: no cover
    from trainers.base import Backend

# backend name -> "module:Class". Adding a backend: one folder under trainers/, one line here,
# one file under conf/backend/.
REGISTRY = {
    "mace": "trainers.mace.backend:MaceBackend",
    "equiformer_v2": "trainers.fairchem.backend:FairchemBackend",
    "gemnet_oc": "trainers.fairchem.backend:FairchemBackend",
}


def get_backend(name: str) -> "Backend":
    target = REGISTRY.get(name)
    if target is None:
        raise NotImplementedBackend(f"backend={name}: unknown backend; known: {', '.join(REGISTRY)}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            raise NotImplementedBackend(f"backend={name} is not implemented yet ({module_name} missing)") from None
        raise
    cls = getattr(module, cls_name)
    backend = cls()
    backend.name = name
    return backend
