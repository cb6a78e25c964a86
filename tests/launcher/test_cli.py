"""The Hydra door: composition, bad input (exit 2, one line naming the key), dry runs, sweeps."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mace", "e3nn", "fairchem", "torch_geometric")


def _heavy_modules_after(argv: list, cwd: Path) -> tuple:
    code = (
        "import sys\n"
        f"sys.argv = ['launch', *{argv!r}]\n"
        "from launcher.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), code)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("HEAVY")]
    assert line, r.stdout + r.stderr
    return line[-1], r


def test_help_does_not_import_torch(tmp_path):
    line, r = _heavy_modules_after(["--help"], tmp_path)
    assert line == "HEAVY [] 0", line
    assert "backend: equiformer_v2, gemnet_oc, mace" in r.stdout


def test_dry_run_does_not_import_torch(tmp_path, demo_data):
    argv = ["dry_run=true", "device=cpu", f"data.train={demo_data['train']}", f"data.val={demo_data['val']}",
            f"data.test={demo_data['test']}", f"run_dir={tmp_path / 'r'}"]
    line, r = _heavy_modules_after(argv, tmp_path)
    assert line == "HEAVY [] 0", line + r.stderr
    assert "would execute:" in r.stdout and "dry run: 1 run(s) validated" in r.stdout
    assert not (tmp_path / "r" / "run.yaml").exists()


def test_cfg_job_prints_composed_config(launch):
    code, out, err = launch("--cfg", "job", "backend=mace", "task=finetune", "data.train=/x", "model_in=/y")
    assert code == 0, err
    assert "task: finetune" in out and "model_in: /y" in out and "head_key: omat_pbe" in out


def _group_options():
    from launcher.resolvers import conf_dir

    root = conf_dir()
    for group in ("backend", "task", "data", "train", "eval"):
        for f in sorted((root / group).glob("*.yaml")):
            yield group, f.stem


@pytest.mark.parametrize("group, option", list(_group_options()))
def test_every_group_option_composes(group, option):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from launcher.resolvers import conf_dir, register
    from launcher.resolvers import register_configs
    from launcher.translate import spec_from_hydra_cfg

    register()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}", "run_dir=/r"])
    GlobalHydra.instance().clear()
    spec = spec_from_hydra_cfg(cfg)
    if group in ("backend", "task"):
        assert getattr(spec, group) == option


@pytest.fixture
def base(tmp_path, demo_data):
    """Arguments of a valid run; each bad-input case changes one thing."""
    return ["device=cpu", f"data.train={demo_data['train']}", f"data.val={demo_data['val']}",
            f"data.test={demo_data['test']}", f"run_dir={tmp_path / 'run'}", "dry_run=true"]


def test_base_is_valid(launch, base):
    code, out, err = launch(*base)
    assert code == 0, err


def _bad_cases(tmp: Path) -> list:
    (tmp / "empty").mkdir()
    (tmp / "nolmdb").mkdir()
    (tmp / "nolmdb" / "readme.txt").write_text("x")
    (tmp / "bad.json").write_text("{not json")
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("mine")
    return [
        (["train.lrr=1"], "train.lrr"),
        (["lrr=1"], "lrr"),
        (["backend=torchani"], "backend"),
        (["task=fly"], "task"),
        (["train.epochs=abc"], "train.epochs"),
        (["train.epochs=0"], "train.epochs"),
        (["train.batch_size=-1"], "train.batch_size"),
        (["device=gpu"], "device"),
        (["train.optimizer=rmsprop"], "train.optimizer"),
        (["train.scheduler=linear"], "train.scheduler"),
        (["task=finetune"], "model_in"),
        (["task=export"], "model_in"),
        (["task=evaluate"], "model_in"),
        (["backend=equiformer_v2"], "train.config_yml"),
        (["backend=gemnet_oc", f"train.config_yml={tmp / 'nope.yml'}"], "train.config_yml"),
        ([f"data.train={tmp / 'nope.lmdb'}"], "data.train"),
        ([f"data.train={tmp / 'empty'}"], "data.train"),
        ([f"data.val={tmp / 'nolmdb'}"], "data.val"),
        ([f"train.input_json={tmp / 'nope.json'}"], "train.input_json"),
        ([f"train.input_json={tmp / 'bad.json'}"], "train.input_json"),
        ([f"train.input_json={tmp / 'list.json'}"], "train.input_json"),
        (["task=finetune", f"model_in={tmp / 'nope.model'}"], "model_in"),
        (["task=finetune", f"model.manifest={tmp / 'bad.json'}"], "model.manifest"),
        (["train.cycle_steps=10"], "train.drop_last"),
        (["train.scheduler_step_unit=cycle"], "train.scheduler_step_unit"),
        (["train.ema_decay=1.5"], "train.ema_decay"),
        (["train.lr=-1"], "train.lr"),
        ([f"data.indices_path={tmp / 'nope.json'}"], "data.indices_path"),
        (["data.train_indices.max_samples=0"], "data.train_indices.max_samples"),
        (["train.freeze=all"], "train.freeze"),
        (["train.freeze=head_only"], "train.freeze"),
        (["train.config_yml=x.yml"], "train.config_yml"),
        (["train.progress_bar=maybe"], "train.progress_bar"),
        (["eval.split=dev"], "eval.split"),
        (["data.indices=notalist"], "data.indices"),
        (["hydra/launcher=nope"], "hydra/launcher"),
        ([f"run_dir={tmp / 'foreign'}"], "run_dir"),
    ]


def test_bad_inputs_exit_2_with_one_line_naming_the_key(launch, base, tmp_path):
    failures = []
    cases = _bad_cases(tmp_path)
    assert len(cases) >= 30
    for extra, key in cases:
        code, out, err = launch(*base, *extra)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or key not in lines[0] or not lines[0].startswith("error: "):
            failures.append(f"{extra}: exit {code}, stderr {err.strip()!r}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]  # untouched


def test_all_problems_listed_not_only_the_first(launch, base):
    code, out, err = launch(*base, "device=gpu", "train.epochs=0", "train.lr=-1")
    assert code == 2
    assert "3 problems" in err and "device" in err and "train.epochs" in err and "train.lr" in err


def test_multirun_16_point_dry_run_distinct_run_dirs(launch, demo_data, tmp_path):
    code, out, err = launch(
        "-m", "train.lr=1e-2,3e-3,1e-3,3e-4", "seed=0,1,2,3", "dry_run=true", "device=cpu",
        f"data.train={demo_data['train']}", f"data.val={demo_data['val']}", f"data.test={demo_data['test']}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    assert "dry run: 16 run(s) validated" in out
    run_dirs = [ln.split()[1] for ln in out.splitlines() if ln.startswith("run_dir: /") and "(fresh" in ln]
    assert len(run_dirs) == 16 and len(set(run_dirs)) == 16
    assert all(rd.startswith(str(tmp_path / "sweep")) for rd in run_dirs)
    assert not any((tmp_path / "sweep").glob("*/run.yaml"))


def test_multirun_checks_every_point_before_starting_any(launch, demo_data, tmp_path):
    code, out, err = launch(
        "-m", "train.epochs=1,0,2,-1", "device=cpu", f"data.train={demo_data['train']}",
        f"data.val={demo_data['val']}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 2
    assert "[1: train.epochs=0]" in err and "[3: train.epochs=-1]" in err
    assert not any((tmp_path / "sweep").glob("*/run.yaml")), "no point may start when one is invalid"


def test_plain_door_runs_list_with_selection_dry_run(tmp_path, demo_data, capsys):
    import yaml

    from launcher.run import main

    f = tmp_path / "runs.yaml"
    f.write_text(yaml.safe_dump({
        "backend": "mace", "task": "train", "device": "cpu",
        "train": {"input_json": str(REPO / "conf" / "mace" / "small.json"), "epochs": 1},
        "data": {k: str(v) for k, v in demo_data.items()},
        "runs": [{"name": n, "run_dir": f"out/{n}"} for n in ("a", "b", "c")],
    }))
    assert main(["--config", str(f), "--run", "b", "--run", "c", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "=== b" in out and "=== c" in out and "=== a" not in out
    assert "dry run: 2 run(s) validated" in out


def test_plain_door_bad_input_exit_2(tmp_path, capsys):
    from launcher.run import main

    f = tmp_path / "run.yaml"
    f.write_text(json.dumps({"backend": "mace", "task": "train", "run_dir": "x", "train": {"epochz": 1}}))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(f)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochz" in err


def test_plain_door_to_overrides(tmp_path, capsys):
    from launcher.run import main

    f = tmp_path / "run.yaml"
    f.write_text("backend: gemnet_oc\ntask: train\nrun_dir: r\ntrain: {config_yml: c.yml}\n")
    assert main(["--config", str(f), "--to-overrides"]) == 0
    out = capsys.readouterr().out
    assert "backend=gemnet_oc" in out and f"train.config_yml={tmp_path / 'c.yml'}" in out


def test_multirun_bad_swept_value_or_key_is_a_config_error(launch, demo_data, tmp_path):
    common = ["dry_run=true", "device=cpu", f"data.train={demo_data['train']}", f"data.val={demo_data['val']}",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    code, out, err = launch("-m", "train.epochs=1,abc", *common)
    assert code == 2 and "train.epochs" in err and err.count("\n") == 1, err
    code, out, err = launch("-m", "train.epochz=1,2", *common)
    assert code == 2 and "train.epochz" in err, err


def test_multirun_over_a_config_group_composes_each_point(launch, demo_data, tmp_path):
    code, out, err = launch("-m", "task=train,resume", "train.epochs=1,2", "dry_run=true", "device=cpu",
                            f"data.train={demo_data['train']}", f"data.val={demo_data['val']}",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    # resume points target fresh run dirs: preflight refuses them, all listed, nothing started
    assert code == 2, err
    assert err.count("holds no run to resume") == 2


def test_a_run_time_failure_is_one_line_exit_1(tmp_path, capsys):
    from launcher.core.errors import TrainingDiverged
    from launcher.core.schema import RunSpec
    from launcher.reporting import guarded_submit

    spec = RunSpec(run_dir=str(tmp_path / "r"))

    def diverge():
        raise TrainingDiverged("loss is nan at epoch 0, step 1\n(check the data)")

    with pytest.raises(SystemExit) as e:
        guarded_submit([spec], diverge)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: training diverged: loss is nan at epoch 0, step 1 (check the data) "
                   f"(run_dir {spec.run_dir}, log {tmp_path / 'r' / 'logs' / 'train.log'})")


def test_hydra_scratch_folder_is_removed(launch, tmp_path):
    import glob
    import tempfile

    before = set(glob.glob(f"{tempfile.gettempdir()}/mlip-launch-hydra-*"))
    code, _out, err = launch("device=cpu", "train.epochs=0")
    assert code == 2 and "train.epochs" in err
    assert set(glob.glob(f"{tempfile.gettempdir()}/mlip-launch-hydra-*")) <= before
    assert not any(tmp_path.iterdir())  # no runs/DATE/TIME either
