from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import List, Tuple

import pytest


def run_launch(argv: List[str], monkeypatch, cwd: Path | None = None) -> Tuple[int, str, str]:
    """Run the `launch` console script in-process; returns (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    from launcher.cli import main

    GlobalHydra.instance().clear()
    if cwd is not None:
        monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["launch", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
    GlobalHydra.instance().clear()
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def launch(monkeypatch, tmp_path):
    def _run(*argv: str, cwd: Path | None = None):
        return run_launch(list(argv), monkeypatch, cwd=cwd or tmp_path)

    return _run


@pytest.fixture
def model_json(tmp_path) -> Path:
    p = tmp_path / "model.json"
    p.write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0}))
    return p
