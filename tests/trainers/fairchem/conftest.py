"""Fixtures for the FairChem backend tests: FairChem's own configs from shared/, the provisioned env."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
FIXTURES = SHARED / "fixtures" / "fairchem-v1"
TEST_CONFIGS = FIXTURES / "tests" / "core" / "models" / "test_configs"
OC22 = FIXTURES / "configs" / "oc22" / "s2ef"


@pytest.fixture(scope="session")
def fairchem_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"FairChem fixture configs not found at {FIXTURES} (shared/ folder beside the checkout)")
    return FIXTURES


@pytest.fixture(scope="session")
def fairchem_python() -> str:
    """The provisioned FairChem interpreter; the test is skipped when the env is absent."""
    from trainers.fairchem.env import default_python

    py = os.environ.get("MLIP_FAIRCHEM_PYTHON") or default_python()
    if not py:
        pytest.skip("FairChem env not provisioned (run scripts/setup-fairchem-env)")
    return py


def empty_lmdbs(tmp_path, *names):
    """Empty placeholder files named like datasets: for planning tests that never open the data."""
    out = {}
    for n in names:
        p = tmp_path / f"{n}.lmdb"
        p.write_bytes(b"")
        out[n] = str(p)
    return out
