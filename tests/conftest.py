"""Shared fixtures: the demo dataset (generated once per test session) and the shared/ folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"the shared/ folder beside the checkout is missing ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """A small real EMT dataset in FairChem LMDB format: {'train','val','test': Path}."""
    from data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(out / "demo", seed=0)
