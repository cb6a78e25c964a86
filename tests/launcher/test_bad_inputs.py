"""Bad input files through every door: exit 2, one stderr line naming the file, quickly, nothing written.

Each case writes one bad file and runs the real console scripts in a subprocess with a timeout (a FIFO
or a device must not block, an alias bomb must not expand), as the run.yaml itself, as the model.json
it names, and as a Hydra experiment file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
LIMIT_S = 30  # generous: the machine may be loaded; a hang or an expansion would take far longer

BOMB = "".join(f"{c}: &{c} [{','.join(['*' + p] * 9) if p else ','.join(['lol'] * 9)}]\n"
               for p, c in zip(["", *"abcdefgh"], "abcdefghi"))

# name -> (bytes of a YAML file, what its error line must say)
YAML_CASES = {
    "non_utf8": (b"backend: mace\nrun_dir: \"\xff\xfe\"\n", "not UTF-8"),
    "python_tag": (b"backend: !!python/object/apply:os.system [\"true\"]\n", "tag '!!python/object/apply"),
    "unknown_tag": (b"backend: !mytag mace\n", "tag '!mytag'"),
    "parse_error": (b"backend: mace\ntrain: [1, 2\ntask: train\n", "not valid YAML"),
    "deep_nesting": (b"a: " + b"[" * 10000 + b"]" * 10000 + b"\n", "nested deeper"),
    "alias_bomb": (BOMB.encode(), "aliases expand"),
    "duplicate_key": (b"backend: mace\ntrain:\n  epochs: 1\ntrain:\n  lr: 0.1\n", "duplicate key 'train'"),
    "control_char": (b"backend: mace\x07\n", "not allowed in YAML"),
}
SPECIAL = ["fifo", "directory", "device", "huge"]


def _tree(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(argv, cwd: Path, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLIP_DEBUG": ""}
    env.pop("UNSET_FOR_TEST", None)
    env.update(env_extra or {})
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=LIMIT_S, env=env,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - t0


def _assert_one_line(proc, needle: str, name: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and name in lines[0] and needle in lines[0], lines[0]


def _special(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        return Path("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(64 << 20)  # sparse: big to read, nothing on disk
    return path


_SPECIAL_NEEDLE = {"fifo": "FIFO", "directory": "directory", "device": "character device", "huge": "bytes"}


@pytest.fixture
def work(tmp_path, demo_data):
    (tmp_path / "m.json").write_text(json.dumps({"model": "MACE", "num_channels": 8, "max_L": 0, "r_max": 4.0}))
    for split in ("train", "val"):
        (tmp_path / f"{split}.lmdb").symlink_to(demo_data[split])
    return tmp_path


def _run_yaml(work: Path, model_json: str) -> str:
    return (f"backend: mace\ntask: train\nrun_dir: {work / 'run'}\ndevice: cpu\n"
            f"data: {{train: {work / 'train.lmdb'}, val: {work / 'val.lmdb'}}}\n"
            f"train: {{input_json: {model_json}, epochs: 1}}\n")


@pytest.mark.parametrize("case", [*YAML_CASES, *SPECIAL])
def test_bad_run_yaml(work, case):
    """launch-run --config BAD (a dry run and a real run alike)."""
    bad = work / f"{case}.yaml"
    if case in YAML_CASES:
        bad.write_bytes(YAML_CASES[case][0])
        needle = YAML_CASES[case][1]
    else:
        bad = _special(case, bad)
        needle = _SPECIAL_NEEDLE[case]
    for extra in (["--dry-run"], []):
        before = _tree(work)
        proc, took = _run([str(BIN / "launch-run"), "--config", str(bad), *extra], work)
        _assert_one_line(proc, needle, str(bad))
        assert took < LIMIT_S and _tree(work) == before


@pytest.mark.parametrize("case, text, needle", [
    ("non_utf8", b'{"model": "MACE", "num_channels": "\xff"}', "not UTF-8"),
    ("duplicate_key", b'{"model": "MACE",\n "num_channels": 8,\n "num_channels": 16}', "duplicate key 'num_channels'"),
    ("parse_error", b'{"model": "MACE",\n "num_channels": }', "line 2, column"),
    ("deep_nesting", b"[" * 100000 + b"]" * 100000, "nested deeper"),
    ("fifo", None, "FIFO"),
    ("directory", None, "directory"),
    ("huge", None, "bytes"),
])
def test_bad_model_json(work, case, text, needle):
    """train.input_json naming a bad file, through launch-run and launch: refused in the dry run too."""
    bad = work / f"{case}.json"
    if text is None:
        bad = _special(case, bad)
    else:
        bad.write_bytes(text)
    (work / "run.yaml").write_text(_run_yaml(work, str(bad)))
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(work / "run.yaml"), "--dry-run"], work)
    _assert_one_line(proc, needle, str(bad))
    proc, _ = _run([str(BIN / "launch"), f"train.input_json={bad}", "device=cpu", "dry_run=true",
                    f"data.train={work / 'train.lmdb'}", f"data.val={work / 'val.lmdb'}", f"run_dir={work / 'run'}"], work)
    _assert_one_line(proc, needle, str(bad))
    assert _tree(work) == before


@pytest.mark.parametrize("case", [*YAML_CASES, *SPECIAL, "callbacks", "target", "unset_env", "unknown_key",
                                  "dotted_key"])
def test_bad_experiment_file(work, case):
    """launch --config-dir DIR +experiment=BAD dry_run=true: the file named, and nothing in it run."""
    exp = work / "confdir" / "experiment"
    exp.mkdir(parents=True)
    marker = work / "instantiated"
    bad = exp / f"{case}.yaml"
    if case in SPECIAL:
        target = _special(case, bad)
        if target != bad:  # a device: reached through a link named like a config
            bad.symlink_to(target)
        data, needle = None, _SPECIAL_NEEDLE[case]
    elif case in YAML_CASES:
        data, needle = YAML_CASES[case]
        data = b"# @package _global_\n" + data
    elif case == "callbacks":
        data = (f"# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: pathlib.Path.touch\n"
                f"      self: {marker}\n").encode()
        needle = "hydra.callbacks"
    elif case == "target":
        data = f"# @package _global_\nmodel:\n  _target_: os.system\n  command: touch {marker}\n".encode()
        needle = "_target_"
    elif case == "unknown_key":
        data, needle = b"# @package _global_\ntrain:\n  epochs: 1\n  lrr: 0.1\n", "line 4: unknown key 'train.lrr'"
    elif case == "dotted_key":
        data, needle = b"# @package _global_\ntrain:\n  epochs: 1\ntrain.epochs: 2\n", "line 4: unknown key"
    else:
        data, needle = b"# @package _global_\nrun_dir: ${oc.env:UNSET_FOR_TEST}\n", "UNSET_FOR_TEST"
    if data is not None:
        bad.write_bytes(data)
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch"), "--config-dir", str(work / "confdir"), f"+experiment={case}",
                    "device=cpu", "dry_run=true"], work)
    _assert_one_line(proc, needle, str(bad))
    assert not marker.exists() and _tree(work) == before


def test_dotted_and_nested_keys_for_one_field_are_refused(work):
    f = work / "run.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")) + "train.epochs: 3\n")
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--dry-run"], work)
    _assert_one_line(proc, "both set train.epochs", str(f))
    assert "line 6" in proc.stderr and "line 7" in proc.stderr


def test_unset_env_interpolation_in_run_yaml(work):
    f = work / "run.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")).replace(f"run_dir: {work / 'run'}",
                                                               "run_dir: ${oc.env:UNSET_FOR_TEST}"))
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--dry-run"], work)
    _assert_one_line(proc, "run_dir: interpolation failed: Environment variable 'UNSET_FOR_TEST'", str(f))


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", "x..y"])
def test_to_experiment_refuses_names_that_leave_the_folder(work, name):
    f = work / "runs.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")).replace(f"run_dir: {work / 'run'}\n", "")
                 + f"runs:\n  - {{name: ok, run_dir: {work / 'r1'}}}\n  - {{name: '{name}', run_dir: {work / 'r2'}}}\n")
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--to-experiment", str(work / "out")], work)
    _assert_one_line(proc, "not a plain file name", name)
    assert _tree(work) == before and not (work.parent / "escaped.yaml").exists()


def test_to_experiment_writes_nothing_when_one_run_is_invalid(work):
    f = work / "runs.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")).replace(f"run_dir: {work / 'run'}\n", "")
                 + f"runs:\n  - {{name: ok, run_dir: {work / 'r1'}}}\n"
                 f"  - {{name: bad, run_dir: {work / 'r2'}, device: tpu}}\n")
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--to-experiment", str(work / "out")], work)
    _assert_one_line(proc, "device: 'tpu'", "[bad]")
    assert _tree(work) == before


@pytest.mark.parametrize("override, needle", [
    ("data.train={dir}/nön/x.lmdb", "\"{dir}/nön/x.lmdb\""),
    ("backend_args=[--model.num_layers=1]", '["--model.num_layers=1"]'),
])
def test_override_grammar_errors_say_how_to_quote(work, override, needle):
    proc, _ = _run([str(BIN / "launch"), override.format(dir=work), "dry_run=true"], work)
    _assert_one_line(proc, needle.format(dir=work), "cannot parse override")


def test_quoted_non_ascii_and_space_paths_are_accepted(work, demo_data):
    """The quoting the message suggests works: a path with a space and non-ASCII letters reaches the spec."""
    import shutil

    folder = work / "dätä mit leer"
    folder.mkdir()
    shutil.copy(demo_data["train"], folder / "train.lmdb")
    proc, _ = _run([str(BIN / "launch"), f'data.train="{folder / "train.lmdb"}"', f"train.input_json={work / 'm.json'}",
                    "device=cpu", "dry_run=true", f"run_dir={work / 'run'}"], work)
    assert proc.returncode == 0, proc.stderr
    assert str(folder / "train.lmdb") in proc.stdout + proc.stderr


@pytest.mark.parametrize("override, needle", [
    ("+hydra.callbacks.x._target_=pathlib.Path.touch", "hydra.callbacks"),
    ("+hydra/callbacks=x", "hydra.callbacks"),
    ("+train._target_=os.system", "_target_"),
])
def test_command_line_builds_no_python_objects(work, override, needle):
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch"), override, "dry_run=true"], work)
    _assert_one_line(proc, needle.split(".")[-1], override.lstrip("+").split("=")[0].split(".")[0])
    assert _tree(work) == before


def test_missing_config_dir_is_an_input_error(work):
    proc, _ = _run([str(BIN / "launch"), "--config-dir", str(work / "nowhere"), "dry_run=true"], work)
    _assert_one_line(proc, "not found", str(work / "nowhere"))


@pytest.mark.parametrize("value, needle", [("[1, 2", "not valid YAML"), ("!!python/name:os.system", "tag")])
def test_bad_set_value(work, value, needle):
    f = work / "run.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")))
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--dry-run", "--set", f"train.epochs={value}"], work)
    _assert_one_line(proc, needle, "--set train.epochs")


@pytest.mark.parametrize("overrides", [
    ["task=finetune", "model_in={fifo}"],
    ["data.train={fifo}"],
    ["task=finetune", "model.manifest={fifo}"],
    ["data.indices_path={fifo}"],
])
def test_fifo_for_any_path_key_is_refused_without_blocking(work, overrides):
    fifo = work / "pipe"
    os.mkfifo(fifo)
    before = _tree(work)
    args = [o.format(fifo=fifo) for o in overrides]
    proc, _ = _run([str(BIN / "launch"), *args, "device=cpu", "dry_run=true", f"run_dir={work / 'run'}"], work)
    _assert_one_line(proc, "FIFO", str(fifo))
    assert _tree(work) == before


def test_refused_slurm_run_file_creates_no_sweep_folder(work):
    """A run file whose SLURM submission is refused (no sbatch here) leaves no sweeps/ folder behind."""
    f = work / "slurm.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")) + "launcher: {preset: slurm}\n")
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f)], work, {"PATH": str(work / "no-commands")})
    _assert_one_line(proc, "sbatch not found", "hydra.launcher.cluster")
    assert _tree(work) == before


@pytest.mark.parametrize("case", ["duplicate_key", "alias_bomb", "fifo", "unset_env"])
def test_multirun_door(work, case):
    """launch -m (a sweep of two points) refuses a bad experiment file the same way, before any job."""
    exp = work / "confdir" / "experiment"
    exp.mkdir(parents=True)
    bad = exp / f"{case}.yaml"
    if case == "fifo":
        os.mkfifo(bad)
        needle = "FIFO"
    elif case == "unset_env":
        bad.write_text("# @package _global_\ntrain:\n  lr: ${oc.env:UNSET_FOR_TEST}\n")
        needle = "UNSET_FOR_TEST"
    else:
        data, needle = YAML_CASES[case]
        bad.write_bytes(b"# @package _global_\n" + data)
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch"), "-m", "--config-dir", str(work / "confdir"), f"+experiment={case}",
                    "seed=1,2", "device=cpu", "dry_run=true"], work)
    _assert_one_line(proc, needle, str(bad))
    assert _tree(work) == before


def test_bad_manifest_through_run_yaml(work):
    bad = work / "manifest.json"
    bad.write_text('{"backend": "mace",\n "weights": {"path": "w.pt"},\n "backend": "mace"}')
    f = work / "run.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")).replace("task: train", "task: finetune")
                 + f"model: {{manifest: {bad}}}\n")
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--dry-run"], work)
    _assert_one_line(proc, "line 3, column 2: duplicate key 'backend' (first at line 1, column 2)", str(bad))


def test_launcher_preset_names_no_file_outside_the_presets(work):
    outside = work / "mine.yaml"
    outside.write_text("cluster: inprocess\n")
    f = work / "run.yaml"
    f.write_text(_run_yaml(work, str(work / "m.json")) + f"launcher: {{preset: '../../../../../../..{work}/mine'}}\n")
    proc, _ = _run([str(BIN / "launch-run"), "--config", str(f), "--dry-run"], work)
    _assert_one_line(proc, "available: inprocess", "launcher.preset")


@pytest.mark.parametrize("argv", [["--set", "x"], ["--config-dir"], ["--cfg", "nope"]])
def test_bad_hydra_flag_is_one_line(work, argv):
    proc, _ = _run([str(BIN / "launch"), *argv], work)
    _assert_one_line(proc, "see launch --help", "launch:")


def test_logging_config_of_the_user_builds_nothing(work):
    """A hydra/job_logging option of the user's naming a non-logging class is refused before logging is set up."""
    marker = work / "instantiated"
    group = work / "confdir" / "hydra" / "job_logging"
    group.mkdir(parents=True)
    bad = group / "evil.yaml"
    bad.write_text(f"version: 1\nhandlers:\n  h:\n    class: subprocess.Popen\n    args: [touch, {marker}]\n"
                   "root:\n  handlers: [h]\n")
    before = _tree(work)
    proc, _ = _run([str(BIN / "launch"), "--config-dir", str(work / "confdir"), "hydra/job_logging=evil",
                    "device=cpu", "dry_run=true"], work)
    _assert_one_line(proc, "line 4: hydra.job_logging.handlers.h.class", str(bad))
    assert not marker.exists() and _tree(work) == before
