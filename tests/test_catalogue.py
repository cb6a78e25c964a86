"""The bad-input catalogue: every door, every kind of wrong input, run as the user runs it.

Each case runs an installed console script (``launch``, ``launch-run``, ``launch-data``,
``launch-status``) as a subprocess in its own working directory and asserts the promise of the
README: the right exit code, one ``error:`` line naming the key or file, no traceback, and a file
tree (paths, modes, bytes) byte-identical before and after, working directory and inputs alike.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

pytestmark = pytest.mark.slow  # ~100 short processes

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMES: Dict[str, float] = {}


@dataclass
class Case:
    id: str
    tool: str                      # launch | launch-run | launch-data | launch-status
    args: List[str]
    expect: str                    # the key or file the error line must name
    code: int = 2
    files: Dict[str, str] = field(default_factory=dict)   # files written into the working dir first
    lines: Optional[int] = 1       # stderr lines (None: an "N problems" list is allowed)


MACE = ["device=cpu", "train.epochs=1", "data.train=@train", "data.val=@val", "data.test=@test"]
FC_CFG = "model: {name: equiformer_v2}\noptim: {batch_size: 2}\n"


def _run_yaml(**over) -> str:
    body = {"backend": "mace", "task": "train", "run_dir": "r", "device": "cpu",
            "data": {"train": "@train", "val": "@val"}, "train": {"input_json": "@model_json", "epochs": 1}}
    for key, value in over.items():
        key = key.replace("__", ".")
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return yaml.safe_dump(body)


def _record(**over) -> str:
    rec = {"cluster": "local", "submitit_folder": "/nonexistent/%j", "array_ids": [], "params": {},
           "jobs": [{"index": 0, "run_dir": "/nonexistent/0", "state": "PENDING", "overrides": [], "job_id": "1"}]}
    rec.update(over)
    return json.dumps(rec)


CASES: List[Case] = [
    # ---------------- launch: schema, types, choices, unknown keys
    Case("epochs-0-default-run-dir", "launch", [*MACE, "train.epochs=0"], "train.epochs"),
    Case("epochs-0", "launch", [*MACE, "train.epochs=0", "run_dir=r"], "train.epochs"),
    Case("unknown-key", "launch", [*MACE, "trian.epochs=1", "run_dir=r"], "trian"),
    Case("plus-unknown-train-key", "launch", [*MACE, "+train.foo=1", "run_dir=r"], "train.foo"),
    Case("plus-misspelt-top-key", "launch", [*MACE, "+devise=cpu"], "devise"),
    Case("plus-unknown-nested", "launch", [*MACE, "+data.train_indices.foo=1"], "data.train_indices.foo"),
    Case("bad-float", "launch", [*MACE, "train.lr=abc", "run_dir=r"], "train.lr"),
    Case("bad-int", "launch", [*MACE, "train.batch_size=x"], "train.batch_size"),
    Case("no-backend-option", "launch", [*MACE, "backend=nosuch"], "backend"),
    Case("no-task-option", "launch", [*MACE, "task=nosuch"], "task"),
    Case("bad-device", "launch", [*MACE, "device=gpu"], "device"),
    Case("cuda-without-gpu", "launch", [*MACE, "device=cuda:0"], "device"),
    Case("bad-scheduler", "launch", [*MACE, "train.scheduler=bogus"], "train.scheduler"),
    Case("bad-optimizer", "launch", [*MACE, "train.optimizer=lamb"], "train.optimizer"),
    Case("batch-size-0", "launch", [*MACE, "train.batch_size=0"], "train.batch_size"),
    Case("ema-out-of-range", "launch", [*MACE, "train.ema_decay=2"], "train.ema_decay"),
    Case("negative-lr", "launch", [*MACE, "train.lr=-1"], "train.lr"),
    Case("cycle-without-drop-last", "launch", [*MACE, "train.cycle_steps=5"], "train.drop_last"),
    Case("freeze-on-train", "launch", [*MACE, "train.freeze=head_only"], "train.freeze"),
    Case("max-samples-0", "launch", [*MACE, "data.val_indices.max_samples=0"], "data.val_indices.max_samples"),
    Case("mace-refuses-backend-python", "launch", [*MACE, "backend_python=/usr/bin/python3"], "backend_python"),
    Case("mace-refuses-config-yml", "launch", [*MACE, "train.config_yml=@fc_cfg"], "train.config_yml"),
    # ---------------- launch: files and data
    Case("train-data-missing", "launch", [*MACE, "data.train=missing.lmdb"], "missing.lmdb"),
    Case("val-data-missing", "launch", [*MACE, "data.val=nowhere/val.lmdb"], "data.val"),
    Case("train-data-is-junk", "launch", [*MACE, "data.train=@junk_lmdb"], "data.train"),
    Case("no-train-data", "launch", ["device=cpu", "data=none", "run_dir=r"], "data.train"),
    Case("input-json-missing", "launch", [*MACE, "train.input_json=missing.json"], "train.input_json"),
    Case("input-json-a-list", "launch", [*MACE, "train.input_json=@list_json"], "train.input_json"),
    Case("indices-out-of-range", "launch", [*MACE, "data.indices_path=@oob_json"], "data.indices_path"),
    Case("indices-negative", "launch", [*MACE, "data.indices_path=@neg_json"], "data.indices_path"),
    Case("indices-not-integers", "launch", [*MACE, "data.indices_path=@float_json"], "data.indices_path"),
    Case("indices-empty", "launch", [*MACE, "data.indices_path=@empty_json"], "data.indices_path"),
    Case("indices-not-json", "launch", [*MACE, "data.indices_path=@junk_txt"], "data.indices_path"),
    Case("indices-file-missing", "launch", [*MACE, "data.indices_path=none.json"], "data.indices_path"),
    Case("inline-indices-out-of-range", "launch", [*MACE, "data.indices=[0,99999]"], "data.indices"),
    Case("inline-indices-repeated", "launch", [*MACE, "data.indices=[1,1]"], "data.indices"),
    Case("val-indices-out-of-range", "launch", [*MACE, "data.val_indices.indices_path=@oob_json"],
         "data.val_indices.indices_path"),
    Case("finetune-junk-model", "launch", [*MACE, "task=finetune", "model_in=@junk_model"], "model_in"),
    Case("finetune-empty-model", "launch", [*MACE, "task=finetune", "model_in=@empty_file"], "model_in"),
    Case("finetune-no-model", "launch", [*MACE, "task=finetune"], "model_in"),
    Case("finetune-model-missing", "launch", [*MACE, "task=finetune", "model_in=gone.model"], "model_in"),
    Case("evaluate-junk-weights", "launch", [*MACE, "task=evaluate", "model.weights=@junk_model"], "model.weights"),
    Case("manifest-not-json", "launch", [*MACE, "task=finetune", "model.manifest=@junk_txt"], "model.manifest"),
    Case("resume-only-manifest", "launch", [*MACE, "task=resume", "model.manifest=@manifest_json", "run_dir=r"],
         "model.manifest"),
    Case("resume-nothing", "launch", [*MACE, "task=resume", "run_dir=r"], "run_dir"),
    # ---------------- launch: run_dir and Hydra
    Case("run-dir-is-a-file", "launch", [*MACE, "run_dir=@a_file"], "run_dir"),
    Case("run-dir-under-a-file", "launch", [*MACE, "run_dir=@a_file/sub"], "run_dir"),
    Case("run-dir-holds-another-run", "launch", [*MACE, "run_dir=@other_run"], "run_dir"),
    Case("hydra-run-dir", "launch", [*MACE, "hydra.run.dir=elsewhere"], "hydra.run.dir"),
    Case("no-launcher-preset", "launch", [*MACE, "hydra/launcher=nosuch"], "hydra/launcher"),
    Case("launcher-timeout-0", "launch", [*MACE, "hydra/launcher=local", "hydra.launcher.timeout_min=0"],
         "hydra.launcher.timeout_min"),
    Case("dry-run-rejected", "launch", [*MACE, "dry_run=true", "train.epochs=0"], "train.epochs"),
    Case("sweep-rejected", "launch", ["-m", *MACE, "train.lr=0.1,0.2", "train.epochs=0"], "train.epochs",
         lines=None),
    Case("sweep-shared-run-dir", "launch", ["-m", *MACE, "train.lr=0.1,0.2", "run_dir=r"], "run_dir"),
    Case("sweep-plus-unknown", "launch", ["-m", *MACE, "train.lr=0.1,0.2", "+train.foo=1"], "train.foo"),
    Case("sweep-dry-run-rejected", "launch", ["-m", *MACE, "seed=0,1", "dry_run=true", "data.train=no.lmdb"],
         "data.train", lines=None),
    # ---------------- launch: FairChem backends (preflight only; no FairChem process may outlive it)
    Case("fc-no-config", "launch", [*MACE, "backend=equiformer_v2"], "train.config_yml"),
    Case("fc-config-missing", "launch", [*MACE, "backend=gemnet_oc", "train.config_yml=nope.yml"],
         "train.config_yml"),
    Case("fc-config-a-dir", "launch", [*MACE, "backend=equiformer_v2", "train.config_yml=@a_dir"],
         "train.config_yml"),
    Case("fc-train-is-val", "launch", [*MACE, "backend=equiformer_v2", "train.config_yml=@fc_cfg",
                                       "data.val=@train"], "data.val", lines=None),
    Case("fc-junk-model", "launch", [*MACE, "backend=equiformer_v2", "train.config_yml=@fc_cfg", "task=finetune",
                                     "model_in=@junk_model"], "model_in", lines=None),
    Case("fc-bad-freeze", "launch", [*MACE, "backend=gemnet_oc", "train.config_yml=@fc_cfg",
                                     "train.freeze=everything"], "train.freeze", lines=None),
    # ---------------- launch-run: the plain door
    Case("run-config-missing", "launch-run", ["--config", "missing.yaml"], "missing.yaml"),
    Case("run-config-a-dir", "launch-run", ["--config", "@a_dir"], "--config"),
    Case("run-config-not-yaml", "launch-run", ["--config", "run.yaml"], "run.yaml",
         files={"run.yaml": "a: [1, 2\n"}),
    Case("run-config-empty", "launch-run", ["--config", "run.yaml"], "run.yaml", files={"run.yaml": ""}),
    Case("run-config-a-list", "launch-run", ["--config", "run.yaml"], "run.yaml", files={"run.yaml": "- 1\n"}),
    Case("run-no-run-dir", "launch-run", ["--config", "run.yaml"], "run_dir", files={"run.yaml": _run_yaml(run_dir=None)}),
    Case("run-unknown-key", "launch-run", ["--config", "run.yaml"], "lrr",
         files={"run.yaml": _run_yaml(train={"lrr": 1, "input_json": "@model_json"})}),
    Case("run-bad-type", "launch-run", ["--config", "run.yaml"], "train.epochs",
         files={"run.yaml": _run_yaml(train={"epochs": "many", "input_json": "@model_json"})}),
    Case("run-epochs-0", "launch-run", ["--config", "run.yaml"], "train.epochs",
         files={"run.yaml": _run_yaml(train={"epochs": 0, "input_json": "@model_json"})}),
    Case("run-dry-run-rejected", "launch-run", ["--config", "run.yaml", "--dry-run"], "train.epochs",
         files={"run.yaml": _run_yaml(train={"epochs": 0, "input_json": "@model_json"})}),
    Case("run-no-such-run", "launch-run", ["--config", "run.yaml", "--run", "nosuch"], "--run",
         files={"run.yaml": _run_yaml()}),
    Case("run-set-without-value", "launch-run", ["--config", "run.yaml", "--set", "train.epochs"], "--set",
         files={"run.yaml": _run_yaml()}),
    Case("run-set-bad-value", "launch-run", ["--config", "run.yaml", "--set", "train.epochs=0"], "train.epochs",
         files={"run.yaml": _run_yaml()}),
    Case("run-set-unknown-key", "launch-run", ["--config", "run.yaml", "--set", "train.foo=1"], "train.foo",
         files={"run.yaml": _run_yaml()}),
    Case("run-bad-option", "launch-run", ["--config", "run.yaml", "--bogus"], "--bogus",
         files={"run.yaml": _run_yaml()}),
    Case("run-no-preset", "launch-run", ["--config", "run.yaml"], "launcher.preset",
         files={"run.yaml": _run_yaml(launcher={"preset": "nosuch"})}),
    Case("run-unknown-launcher-key", "launch-run", ["--config", "run.yaml"], "bogus",
         files={"run.yaml": _run_yaml(launcher={"preset": "local", "bogus": 1})}),
    Case("run-launcher-timeout-0", "launch-run", ["--config", "run.yaml"], "timeout_min",
         files={"run.yaml": _run_yaml(launcher={"preset": "local", "timeout_min": 0})}),
    Case("run-empty-runs", "launch-run", ["--config", "run.yaml"], "runs", files={"run.yaml": _run_yaml(runs=[])}),
    Case("run-duplicate-names", "launch-run", ["--config", "run.yaml"], "names",
         files={"run.yaml": _run_yaml(run_dir=None, runs=[{"name": "a", "run_dir": "x"},
                                                          {"name": "a", "run_dir": "y"}])}),
    Case("run-shared-run-dir", "launch-run", ["--config", "run.yaml"], "run_dir",
         files={"run.yaml": _run_yaml(run_dir=None, runs=[{"name": "a", "run_dir": "x"},
                                                          {"name": "b", "run_dir": "x"}])}),
    Case("run-indices-out-of-range", "launch-run", ["--config", "run.yaml"], "data.indices",
         files={"run.yaml": _run_yaml(data={"train": "@train", "val": "@val", "indices": [0, 5000]})}),
    Case("run-junk-model", "launch-run", ["--config", "run.yaml"], "model_in",
         files={"run.yaml": _run_yaml(task="finetune", model_in="@junk_model")}),
    Case("run-run-dir-a-file", "launch-run", ["--config", "run.yaml"], "run_dir",
         files={"run.yaml": _run_yaml(run_dir="@a_file")}),
    Case("run-train-data-missing", "launch-run", ["--config", "run.yaml"], "data.train",
         files={"run.yaml": _run_yaml(data={"train": "no/train.lmdb"})}),
    Case("run-fc-no-config", "launch-run", ["--config", "run.yaml"], "train.config_yml",
         files={"run.yaml": _run_yaml(backend="equiformer_v2", train={"epochs": 1})}),
    Case("run-fc-train-is-val", "launch-run", ["--config", "run.yaml"], "data.val", lines=None,
         files={"run.yaml": _run_yaml(backend="gemnet_oc", data={"train": "@train", "val": "@train"},
                                      train={"epochs": 1, "config_yml": "@fc_cfg"})}),
    # ---------------- launch-status
    Case("status-missing-dir", "launch-status", ["nowhere"], "nowhere"),
    Case("status-a-file", "launch-status", ["@a_file"], "SWEEP_DIR"),
    Case("status-no-record", "launch-status", ["@a_dir"], "SWEEP_DIR"),
    Case("status-record-not-json", "launch-status", ["sweep"], "sweep.json", files={"sweep/sweep.json": "{"}),
    Case("status-record-a-list", "launch-status", ["sweep"], "sweep.json", files={"sweep/sweep.json": "[]"}),
    Case("status-jobs-not-a-list", "launch-status", ["sweep"], "sweep.json",
         files={"sweep/sweep.json": _record(jobs={"0": {}})}),
    Case("status-job-wrong-keys", "launch-status", ["sweep"], "jobs[0]",
         files={"sweep/sweep.json": _record(jobs=[{"index": 0, "bogus": 1}])}),
    Case("status-job-not-a-mapping", "launch-status", ["sweep"], "jobs[0]",
         files={"sweep/sweep.json": _record(jobs=[3])}),
    Case("status-cluster-inprocess", "launch-status", ["sweep"], "cluster",
         files={"sweep/sweep.json": _record(cluster="inprocess")}),
    Case("status-no-args", "launch-status", [], "sweep_dir"),
    # ---------------- launch-data
    Case("data-info-missing", "launch-data", ["info", "missing.lmdb"], "missing.lmdb"),
    Case("data-convert-missing", "launch-data", ["convert", "missing.xyz", "out"], "missing.xyz"),
    Case("data-demo-negative", "launch-data", ["demo", "out", "--n-train", "-1"], "--n-train"),
]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, demo_data) -> Dict[str, str]:
    """Real input files every case may name with ``@NAME``."""
    from launcher.core.schema import spec_from_dict
    from launcher.core.specio import dump_run_yaml

    root = tmp_path_factory.mktemp("inputs")
    files = {
        "oob_json": "[0, 1, 99999]", "neg_json": "[0, -1]", "float_json": "[0, 1.5]", "empty_json": "[]",
        "junk_txt": "not json {", "list_json": "[1, 2]", "manifest_json": json.dumps({"backend": "mace"}),
        "a_file": "just a file\n", "fc_cfg": FC_CFG, "empty_file": "",
        "model_json": json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0}),
    }
    out = {k: str(v) for k, v in demo_data.items()}
    for name, text in files.items():
        p = root / name.replace("_json", ".json").replace("_txt", ".txt").replace("fc_cfg", "fc.yml")
        p.write_text(text)
        out[name] = str(p)
    junk = root / "junk.model"
    junk.write_bytes(bytes(range(256)) * 4)
    out["junk_model"] = str(junk)
    lmdb = root / "junk.lmdb"
    lmdb.write_bytes(b"\x00garbage" * 512)
    out["junk_lmdb"] = str(lmdb)
    (root / "a_dir").mkdir()
    out["a_dir"] = str(root / "a_dir")
    other = root / "other_run"
    other.mkdir()
    spec = spec_from_dict({"backend": "mace", "task": "train", "run_dir": str(other), "train": {"lr": 0.5}})
    (other / "run.yaml").write_text(dump_run_yaml(spec))
    (other / "state.json").write_text(json.dumps({"status": "finished"}))
    out["other_run"] = str(other)
    return out


def _subst(text: str, inputs: Dict[str, str]) -> str:
    for name in sorted(inputs, key=len, reverse=True):
        text = text.replace(f"@{name}", inputs[name])
    return text


def snapshot(*roots: Path) -> Dict[str, tuple]:
    """Every path under ``roots`` -> (mode, bytes or link target): what 'nothing touched' compares."""
    out: Dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    body: object = os.readlink(p)
                elif stat.S_ISREG(st.st_mode):
                    body = p.read_bytes()
                else:
                    body = None
                out[str(p)] = (st.st_mode, body)
    return out


def run_tool(tool: str, args: List[str], cwd: Path, **env_over: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MLIP_DEBUG", None)
    env.update(env_over)
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, inputs, tmp_path, demo_data):
    cwd = tmp_path / "work"
    cwd.mkdir()
    for rel, text in case.files.items():
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_text(_subst(text, inputs))
    args = [_subst(a, inputs) for a in case.args]
    roots = (cwd, Path(inputs["a_file"]).parent, Path(demo_data["train"]).parent)
    before = snapshot(*roots)
    private_tmp = tmp_path / "tmp"   # the tool's own TMPDIR: whatever it leaves there is its own
    private_tmp.mkdir()
    t0 = time.perf_counter()
    r = run_tool(case.tool, args, cwd, TMPDIR=str(private_tmp))
    TIMES[case.id] = time.perf_counter() - t0
    err = r.stderr.strip()
    assert r.returncode == case.code, f"exit {r.returncode}\n{r.stdout}\n{err}"
    assert "Traceback" not in r.stderr + r.stdout, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    if case.lines is not None:
        assert len(lines) == case.lines, err
    else:  # "error: N problems:" then one indented line per problem
        assert len(lines) == 1 or all(ln.startswith("  ") for ln in lines[1:]), err
    assert case.expect in err, f"the error does not name {case.expect!r}: {err}"
    after = snapshot(*roots)
    assert sorted(after) == sorted(before), f"paths changed: {sorted(set(after) ^ set(before))}"
    assert after == before, "a file's mode or bytes changed"
    leftovers = sorted(p.name for p in private_tmp.iterdir())
    assert not leftovers, leftovers


def test_catalogue_is_complete():
    """The issue's bar: at least 60 bad inputs over the four console scripts."""
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {c.tool for c in CASES} == {"launch", "launch-run", "launch-data", "launch-status"}


def test_dry_runs_leave_nothing(inputs, demo_data, tmp_path):
    """A valid dry run, single and sweep, with and without run_dir, touches nothing either."""
    base = [_subst(a, inputs) for a in MACE] + [f"train.input_json={inputs['model_json']}", "dry_run=true"]
    for extra in ([], ["run_dir=r"], ["-m", "seed=0,1"], ["-m", "seed=0,1", "run_dir=r${seed}"]):
        argv = [a for a in extra if a == "-m"] + base + [a for a in extra if a != "-m"]
        before = snapshot(tmp_path)
        r = run_tool("launch", argv, tmp_path)
        assert r.returncode == 0, r.stderr
        assert "nothing was started" in r.stdout
        assert snapshot(tmp_path) == before, extra


def test_nan_in_data_is_refused_by_preflight(demo_data, tmp_path):
    """NaN labels cannot train: preflight's sample of the selected records refuses them before anything runs
    (exit 2, one line naming the key, the file and the entry; no run_dir), dry run and launch alike. A NaN
    only in records the sample does not read fails the run by name: tests/trainers/mace/test_bad_records.py."""
    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    ds = LmdbDataset(demo_data["train"])
    structures = [ds[i] for i in range(8)]
    ds.close()
    for s in structures:
        s.energy = float("nan")
    write_lmdb(structures, tmp_path / "nan.lmdb")
    argv = ["device=cpu", "train.epochs=1", "train.batch_size=4", f"data.train={tmp_path / 'nan.lmdb'}",
            f"data.val={demo_data['val']}", "data.test=null", f"train.input_json={REPO / 'conf/mace/tiny.json'}"]
    for extra in (["dry_run=true"], []):
        r = run_tool("launch", [*argv, "run_dir=r1", *extra], tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines == [f"error: data.train: {tmp_path / 'nan.lmdb'}: key '0': energy not finite (nan); expected "
                         "finite numbers"], r.stderr
        assert not (tmp_path / "r1").exists()


def test_fairchem_preflight_times():
    """Report (not assert: another piece of work makes FairChem's early interpreter exit at once) how long
    the FairChem cases took; visible with ``pytest -rA``."""
    fc = {k: round(v, 2) for k, v in TIMES.items() if "fc-" in k}
    print("FairChem preflight-rejection times (s):", fc)
    print("all cases, median (s):", sorted(TIMES.values())[len(TIMES) // 2] if TIMES else None)


def test_training_data_without_forces_warns(demo_data, tmp_path):
    """Data without forces trains (an energy-only model is legitimate) but not silently."""
    from data.lmdb_dataset import LmdbDataset
    from data.writer import write_lmdb

    ds = LmdbDataset(demo_data["train"])
    structures = [ds[i] for i in range(4)]
    ds.close()
    for s in structures:
        s.forces = None
    write_lmdb(structures, tmp_path / "noforces.lmdb")
    argv = ["device=cpu", "dry_run=true", f"data.train={tmp_path / 'noforces.lmdb'}", f"data.val={demo_data['val']}"]
    r = run_tool("launch", argv, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: data.train:" in r.stderr and "no forces" in r.stderr, r.stderr
    r = run_tool("launch", [*argv, "train.force_weight=0"], tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = run_tool("launch", ["device=cpu", "dry_run=true", f"data.train={demo_data['train']}"], tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
