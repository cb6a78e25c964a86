"""Where the embedded default's demo dataset lives; generated on first use, not at start-up."""
from __future__ import annotations

from pathlib import Path

from launcher.core.env import cache_root

DEMO_VERSION = "demo-v1-seed0"


def demo_root() -> Path:
    return cache_root() / DEMO_VERSION


def demo_path(split: str) -> str:
    """Path of one demo split (``train``/``val``/``test``); the ``${mlip_demo:...}`` resolver."""
    return str(demo_root() / f"{split}.lmdb")


def ensure_if_demo(path: str) -> None:
    """Generate the demo dataset when ``path`` points into it and it is not there yet."""
    p = Path(path).expanduser().resolve()
    root = demo_root().resolve()
    if p.exists() or root not in (p, *p.parents):
        return
    from data.demo import ensure_demo_dataset

    ensure_demo_dataset(cache_root())  # it adds the versioned folder name itself
