from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

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


def run_plain_door(folder: Path, keys: Dict[str, str], dry: bool, capsys,
                   value: Callable[[str, str], Any] = lambda _leaf, v: v) -> Tuple[int, str, str]:
    """``launch-run --config folder/run.yaml [--dry-run]`` in-process, the run.yaml holding ``keys`` (dotted
    names, nested as a user writes them; ``value(leaf, text)`` types each value): (exit code, stdout, stderr)."""
    import yaml

    from launcher.core.specio import expand_dotted
    from launcher.run import main

    body = expand_dotted({k: value(k.rsplit(".", 1)[-1], v) for k, v in keys.items()}, source="test")
    f = folder / "run.yaml"
    f.write_text(yaml.safe_dump(body))
    capsys.readouterr()
    try:
        code = main(["--config", str(f)] + (["--dry-run"] if dry else []))
    except SystemExit as e:
        code = int(e.code or 0)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
