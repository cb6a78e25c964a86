"""One pipeline under every door: a dry run gets the verdict the launch gets.

Each door (``launch``, ``launch -m`` grid, ``launch -m hydra/sweeper=optuna``, ``launch-run`` with one run and with
a ``runs:`` list) is run as the real console script twice, with and without the dry run, on a launcher setting the
FairChem backend refuses (``hydra.launcher.nodes=2``: its ranks come from one torchrun on one node), and on the SLURM
launcher where its commands are missing. Both must exit with the same code and the same error lines, and neither may
create a run or sweep directory.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: a refused launcher setting -> (its hydra.launcher value, what the error line says)
SETTINGS = {"nodes": (2, "hydra.launcher.nodes: backend=equiformer_v2 runs FairChem's ranks from one torchrun on "
                         "one node"),
            "no-sbatch": (1, "hydra.launcher.cluster: slurm needs the SLURM commands (sbatch not found on PATH)")}


def _tool(tool: str, args: List[str], cwd: Path, path: str) -> Tuple[int, List[str]]:
    """(exit code, the lines of stderr from its first ``error:`` line on) of one real console-script run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PATH=path)
    env.pop("MLIP_DEBUG", None)
    p = subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    lines = p.stderr.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.startswith("error:")), len(lines))
    return p.returncode, lines[first:]


def _keys(tmp_path: Path, demo_data: Dict[str, Path]) -> Dict[str, str]:
    cfg = tmp_path / "fc.yml"
    cfg.write_text("model: {name: equiformer_v2}\noptim: {batch_size: 2}\n")
    return {"backend": "equiformer_v2", "task": "train", "device": "cpu", "train.config_yml": str(cfg),
            "data.train": str(demo_data["train"]), "data.val": str(demo_data["val"])}


def _hydra_args(door: str, keys: Dict[str, str], out: Path, nodes: int) -> List[str]:
    args = [f"{k}={v}" for k, v in keys.items()] + ["hydra/launcher=slurm", f"hydra.launcher.nodes={nodes}"]
    if door == "launch":
        return args + [f"run_dir={out / 'r'}"]
    if door == "grid":
        return ["-m", *args, "train.epochs=1,2", f"hydra.sweep.dir={out}"]
    return ["-m", "hydra/sweeper=optuna", *args, "train.lr=interval(1e-4,1e-2)", "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={out}"]


def _run_yaml(door: str, keys: Dict[str, str], out: Path, folder: Path, nodes: int) -> Path:
    from launcher.core.specio import expand_dotted

    body = expand_dotted(dict(keys), source="test")
    body["launcher"] = {"preset": "slurm", "nodes": nodes}
    if door == "run.yaml":
        body["run_dir"] = str(out / "r")
    else:
        body["runs"] = [{"name": "a", "run_dir": str(out / "a")}, {"name": "b", "run_dir": str(out / "b"),
                                                                   "train": {"epochs": 2}}]
    f = folder / "run.yaml"
    f.write_text(yaml.safe_dump(body))
    return f


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("door", ["launch", "grid", "optuna", "run.yaml", "runs-list"])
def test_dry_run_and_launch_give_the_same_verdict(door, setting, tmp_path, demo_data):
    keys = _keys(tmp_path, demo_data)
    nodes, needle = SETTINGS[setting]
    path = str(tmp_path / "no-commands") if setting == "no-sbatch" else os.environ.get("PATH", "")
    verdicts = {}
    for dry in (True, False):
        out = tmp_path / f"out-{dry}"
        if door in ("run.yaml", "runs-list"):
            f = _run_yaml(door, keys, out, tmp_path, nodes)
            verdicts[dry] = _tool("launch-run", ["--config", str(f)] + (["--dry-run"] if dry else []), tmp_path, path)
        else:
            args = _hydra_args(door, {**keys, "dry_run": str(dry).lower()}, out, nodes)
            verdicts[dry] = _tool("launch", args, tmp_path, path)
        assert not out.exists(), f"{door} (dry run {dry}) created {out}"
        assert not (tmp_path / "sweeps").exists() and not (tmp_path / "multirun").exists()
    (code, lines), (dry_code, dry_lines) = verdicts[False], verdicts[True]
    assert code == 2, lines
    assert lines and any(needle in ln for ln in lines), lines
    assert (dry_code, [ln.replace(str(tmp_path / "out-True"), "OUT") for ln in dry_lines]) \
        == (code, [ln.replace(str(tmp_path / "out-False"), "OUT") for ln in lines])


def test_preflight_keeps_each_run_dirs_state_for_the_dispatch(tmp_path, demo_data, model_json):
    """The run_dir states preflight read travel in the request (to the dry run's description and a single run's
    job) instead of being read again; a foreign folder is reported once, with its state."""
    from launcher import pipeline
    from launcher.core.schema import spec_from_dict
    from launcher.job import FOREIGN, FRESH
    from launcher.params import LauncherParams

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    specs = [spec_from_dict({"backend": "mace", "task": "train", "device": "cpu", "run_dir": str(tmp_path / name),
                             "name": name, "data": {"train": str(demo_data["train"])},
                             "train": {"input_json": str(model_json)}}) for name in ("a", "b")]
    req = pipeline.prepare(specs, pipeline.checked_params(LauncherParams()), tmp_path / "sweep", bases=[tmp_path])
    found = pipeline.problems(req, notes=False)
    assert req.states == [FRESH, FOREIGN]
    assert [p for p in found if "run_dir" in p] == [f"[b] run_dir: {tmp_path / 'b'} holds files that are not an "
                                                    "mlip-launch run; choose another run_dir or set overwrite=true"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "sweep").exists()
