"""The plain door's required keys, its shell-safe --to-overrides line, and the original run files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.core.errors import ConfigError, ConfigErrors
from launcher.core.specio import parse_run_file

REPO = Path(__file__).resolve().parents[2]
LAUNCH = Path(sys.executable).with_name("launch")


# ----------------------------------------------------------------------------------------------
# backend, task and run_dir: required in every run, all missing ones listed together
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, missing", [
    ({"run_dir": "r"}, ["backend", "task"]),
    ({"backend": "mace", "run_dir": "r"}, ["task"]),
    ({"task": "train", "run_dir": "r"}, ["backend"]),
    ({"backend": "mace", "task": "train"}, ["run_dir"]),
    ({"backend": "mace", "task": "train", "run_dir": None}, ["run_dir"]),
    ({"data": {"train": "t.lmdb"}}, ["backend", "task", "run_dir"]),
])
def test_single_run_lists_every_missing_required_key(tmp_path, body, missing):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigErrors) as e:
        parse_run_file(f)
    problems = e.value.problems
    assert len(problems) == len(missing), problems
    for key, line in zip(missing, problems):
        assert line.startswith(f"{f}: {key}: required in every run"), line
        assert "\n" not in line


def test_runs_list_checks_required_keys_after_merging_the_defaults(tmp_path):
    f = tmp_path / "runs.yaml"
    f.write_text(yaml.safe_dump({
        "backend": "mace",
        "runs": [{"name": "a", "run_dir": "ra", "task": "train"},     # complete through the defaults
                 {"name": "b", "run_dir": "rb"},                      # no task
                 {"name": "c", "task": "finetune"}],                  # no run_dir
    }))
    with pytest.raises(ConfigErrors) as e:
        parse_run_file(f)
    assert e.value.problems == [f"{f}: runs[1]: task: required in every run (one of train, finetune, resume, "
                                f"evaluate, infer, export)",
                                f"{f}: runs[2]: run_dir: required in every run (the run's output directory)"]


def test_missing_keys_and_bad_keys_are_listed_together(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("run_dir: r\ntrain: {lrr: 1}\n")
    with pytest.raises(ConfigErrors) as e:
        parse_run_file(f)
    text = " | ".join(e.value.problems)
    assert len(e.value.problems) == 3 and "train.lrr" in text and "backend: required" in text
    assert "task: required" in text


def test_a_missing_backend_no_longer_becomes_mace(tmp_path, capsys):
    from launcher.run import main

    f = tmp_path / "run.yaml"
    f.write_text(f"run_dir: {tmp_path / 'r'}\ndevice: cpu\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(f), "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: 2 problems:" in err and "backend: required" in err and "task: required" in err
    assert not (tmp_path / "r").exists()


def test_set_may_supply_a_required_key(tmp_path):
    from launcher.run import load_specs

    f = tmp_path / "run.yaml"
    f.write_text("backend: gemnet_oc\nrun_dir: r\n")
    with pytest.raises(ConfigError, match="task: required"):
        load_specs(str(f), [], [])
    (spec,), _ = load_specs(str(f), [], ["task=evaluate"])
    assert spec.task == "evaluate" and spec.backend == "gemnet_oc"


def test_original_run_files_parse_without_schema_errors(shared_dir):
    """The original implementation's run files: every key known, every value accepted (paths are
    preflight's business, not parsing's)."""
    from launcher.core.schema import validate

    files = sorted((shared_dir / "spec" / "origin-files" / "runs").glob("*.yaml"))
    assert files
    seen = []
    for f in files:
        specs, launcher = parse_run_file(f)
        for s in specs:
            assert validate(s) == [], (f.name, s.name)
            assert s.data.format == "lmdb"
            seen.append((s.backend, s.task))
    assert ("mace", "finetune") in seen and ("equiformer_v2", "finetune") in seen and ("gemnet_oc", "finetune") in seen


# ----------------------------------------------------------------------------------------------
# --to-overrides: one bash line that gives Hydra back the same spec
# ----------------------------------------------------------------------------------------------

TRICKY_ARGS = [
    "--optim.lr_initial=0.0004", "--model.name=a, b", "--x=[1, 2]", "--y={a: b}", "it's", 'say "hi"',
    "two  spaces", "$HOME", "${oc.env:HOME}", "back\\slash", "end\\", "`date`", "a;b|c&d", "*?", "~", "#x", "ü",
    "null", "1e3", "true", "",
]
TRICKY_ENV = {"OPTS": "--a=1 --b='2'", "LIST": "x,y", "BRACKETS": "[{()}]", "QUOTES": "\"'\"", "DOLLAR": "$(id)",
              "EMPTY": "", "EQ": "a=b=c"}


@pytest.mark.skipif(not LAUNCH.exists() or shutil.which("bash") is None, reason="needs the launch script and bash")
def test_to_overrides_line_pasted_through_bash_composes_the_same_spec(tmp_path, capsys):
    from launcher.run import main

    f = tmp_path / "run.yaml"
    spec_text = yaml.safe_dump({
        "backend": "equiformer_v2", "task": "finetune", "run_dir": "runs/a b", "device": "cuda:1",
        "model_in": "models/base 1.pt", "data": {"train": "d/train.lmdb", "val": "d/va'l.lmdb"},
        "train": {"config_yml": "c.yml", "identifier": "run, one=1", "lr": 1e-4, "early_stop_factor": 1.0},
        "backend_args": TRICKY_ARGS, "backend_env": TRICKY_ENV,
    })
    # a literal "${" is written escaped in YAML, as OmegaConf reads strings of both doors
    f.write_text(spec_text.replace("${oc.env:HOME}", "\\${oc.env:HOME}"))
    (expected,), _ = parse_run_file(f)
    assert expected.backend_args[TRICKY_ARGS.index("${oc.env:HOME}")] == "${oc.env:HOME}"

    assert main(["--config", str(f), "--to-overrides"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    r = subprocess.run(["bash", "-c", f"{LAUNCH} --cfg job --resolve {line}"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    composed = yaml.safe_load(r.stdout)  # plain YAML: the literal values as Hydra composed them
    assert composed == expected.to_dict()


def test_to_overrides_refuses_a_value_no_override_can_carry(tmp_path, capsys):
    from launcher.run import main

    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"backend": "gemnet_oc", "task": "train", "run_dir": "r",
                                 "backend_args": ["line\nbreak"]}))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(f), "--to-overrides"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: backend_args:") and "\n" not in err


def test_run_yaml_keeps_literal_dollar_braces(tmp_path):
    """run_dir/run.yaml re-reads as the same spec even when a value holds a literal "${"."""
    from launcher.core.schema import RunSpec
    from launcher.core.specio import dump_run_yaml

    spec = RunSpec(run_dir="/r", backend_args=["${x}", "\\${y}", "a${", "\\"], backend_env={"A": "${oc.env:HOME}"})
    f = tmp_path / "run.yaml"
    f.write_text(dump_run_yaml(spec))
    (back,), _ = parse_run_file(f)
    assert back == spec


# ----------------------------------------------------------------------------------------------
# device: cuda:N is checked like cuda before anything runs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, gpu, cluster, gpus_per_node, want", [
    ("cuda:1", False, "inprocess", None, "device: cuda:1 requested but no GPU is visible here"),
    ("cuda:1", True, "inprocess", None, None),
    ("cuda:0", False, "slurm", None, "device: cuda:0 needs GPUs on the SLURM nodes"),
    ("cuda:1", False, "slurm", 1, "device: cuda:1 but each SLURM job gets 1 GPU(s)"),
    ("cuda:1", False, "slurm", 2, None),
    ("cuda", False, "inprocess", None, "device: cuda requested but no GPU is visible here"),
])
def test_preflight_gpu_check_treats_cuda_n_like_cuda(tmp_path, monkeypatch, device, gpu, cluster, gpus_per_node,
                                                     want):
    from launcher import preflight
    from launcher.core.schema import spec_from_dict

    monkeypatch.setattr(preflight, "gpu_visible", lambda: gpu)
    spec = spec_from_dict({"backend": "mace", "task": "train", "run_dir": str(tmp_path / "r"), "device": device,
                           "data": {"train": str(tmp_path / "t.lmdb")}, "train": {"input_json": str(tmp_path / "m.json")}})
    lines = [p for p in preflight.check_spec(spec, cluster=cluster, gpus_per_node=gpus_per_node)
             if p.startswith("device")]
    if want is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith(want), lines
