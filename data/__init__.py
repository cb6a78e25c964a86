"""Data layer: FairChem-layout LMDB readers and writers, index selection, converters, demo data.

Importing this package never imports torch: only reading a record (``dataset[i]``) does. Its
names load on first use, so ``launch-data`` sets up its signal handling before numpy and lmdb load.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"check_readable": "data.datasets", "count": "data.datasets",
          "detect_format": "data.datasets", "open_dataset": "data.datasets",
          "Structure": "data.structure"}

__all__ = ["Structure", "check_readable", "count", "detect_format", "open_dataset"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
