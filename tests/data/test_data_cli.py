import json

import pytest
from ase.io import read

from data import count
from data.cli import main


def test_convert_info_and_errors(tmp_path, solvent_train, capsys):
    out = tmp_path / "solv"
    assert main(["convert", str(solvent_train), str(out), "--shards", "2", "--quiet"]) == 0
    assert "wrote 203 structures in 2 shard(s)" in capsys.readouterr().out
    assert count(out) == len(read(solvent_train, ":"))

    assert main(["convert", str(solvent_train), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "already exists" in err and "\n" not in err

    assert main(["info", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "structures: 203" in text and "H (" in text and "isolated atoms: 3" in text
    assert "energy 203/203" in text and "stress 0/203" in text and "data.0001.lmdb: " in text

    assert main(["info", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 203 and set(summary["elements"]) == {"H", "C", "O"}
    assert sum(summary["natoms"].values()) == 203 and len(summary["shards"]) == 2

    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_convert_with_wrong_energy_key(tmp_path, solvent_train, capsys):
    code = main(["convert", str(solvent_train), str(tmp_path / "o"), "--energy-key", "REF_energy",
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "energy key 'REF_energy' found in no entry" in err and "energy_xtb" in err


def test_demo_command(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--n-train", "3", "--n-val", "2", "--n-test",
                 "1"]) == 0
    assert [count(tmp_path / "d" / f"{s}.lmdb") for s in ("train", "val", "test")] == [3, 2, 1]
    assert "train: " in capsys.readouterr().out


def _unwritable_folder(tmp_path):
    """A folder this process cannot create files in (as root: /proc, which refuses new files)."""
    import os
    from pathlib import Path

    if os.geteuid() == 0:
        return Path("/proc")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_convert_io_problems_are_one_line_exit_2(tmp_path, solvent_train, capsys, monkeypatch):
    monkeypatch.delenv("MLIP_DEBUG", raising=False)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([str(solvent_train), str(_unwritable_folder(tmp_path) / "out.lmdb")], "out.lmdb"),
        ([str(solvent_train), str(a_file / "out")], "is not a folder"),
        ([str(solvent_train), str(a_file)], "already exists"),
        ([str(solvent_train), str(tmp_path / "o"), "--stress-key", "nope"],
         "stress key 'nope' found in no entry"),
        ([str(solvent_train), str(tmp_path / "o"), "--stress-key", "energy_xtb"],
         "stress has 1 components"),
        ([str(tmp_path / "missing.xyz"), str(tmp_path / "o")], "no such file"),
        ([str(solvent_train), str(tmp_path / "o"), "--shards", "0"], "--shards"),
        ([str(a_file), str(tmp_path / "o")], "cannot tell the format"),
    ]
    for args, needle in cases:
        assert main(["convert", *args, "--quiet"]) == 2, args
        assert needle in _one_error_line(capsys), args
    assert a_file.read_text() == "x" and not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] + (
        [] if not (tmp_path / "ro").exists() else ["ro"])


def test_info_and_demo_io_problems(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["info", str(a_file), "--quiet"]) == 2
    assert "a_file" in _one_error_line(capsys)
    assert main(["demo", str(a_file / "d")]) == 2
    assert "a_file" in _one_error_line(capsys)


def test_mlip_debug_adds_the_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = _unwritable_folder(tmp_path) / "out.lmdb"
    env = dict(os.environ, MLIP_DEBUG="1")
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "data.cli", "demo", str(out), "--n-train", "2",
                        "--n-val", "0", "--n-test", "0"], capture_output=True,
                       text=True, cwd=repo, env=env, timeout=300)
    assert r.returncode == 2 and "Traceback" in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"error: {out}")
    r = subprocess.run([sys.executable, "-m", "data.cli", "demo", str(out), "--n-train", "2",
                        "--n-val", "0", "--n-test", "0"], capture_output=True,
                       text=True, cwd=repo, env=dict(env, MLIP_DEBUG="0"), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # (the EMT progress bar is there)
    assert r.stderr.splitlines()[-1].startswith(f"error: {out}")


# ------------------------------------------------------------------ hostile input, every subcommand
def _lmdb_files(tmp_path):
    """(name, path) of LMDB inputs that hold nothing readable."""
    import pickle

    from .conftest import raw_lmdb

    raw_lmdb(tmp_path / "no_entries.lmdb", {})
    raw_lmdb(tmp_path / "length0.lmdb", {"length": pickle.dumps(0)})
    (tmp_path / "zero_bytes.lmdb").write_bytes(b"")
    (tmp_path / "garbage.lmdb").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "no_shards").mkdir()
    (tmp_path / "no_shards" / "readme.txt").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    raw_lmdb(tmp_path / "bad_record.lmdb", {"0": b"not a pickle", "length": pickle.dumps(1)})
    raw_lmdb(tmp_path / "missing_key.lmdb", {"0": b"x", "length": pickle.dumps(3)})
    import os

    os.mkfifo(tmp_path / "fifo.lmdb")
    return [(p.name, p) for p in sorted(tmp_path.iterdir())]


def test_hostile_lmdb_inputs_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLIP_DEBUG", raising=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = _lmdb_files(inputs)
    assert len(cases) == 9
    for name, path in cases:
        assert main(["info", str(path), "--quiet"]) == 2, name
        assert name in _one_error_line(capsys), name
        out = tmp_path / f"out_{name}"
        assert main(["convert", str(path), str(out), "--quiet"]) == 2, name
        assert name in _one_error_line(capsys), name
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("option", ["--energy-key", "--forces-key", "--stress-key"])
def test_label_keys_are_refused_for_lmdb_input(tmp_path, make_structures, capsys, option):
    from data.writer import write_lmdb

    src = tmp_path / "src.lmdb"
    write_lmdb(make_structures(2), src, progress=False)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), option, "energy", "--quiet"]) == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {option}:") and "src.lmdb" in err, err
    assert not out.exists()


def test_options_that_do_not_apply_to_the_input_are_refused(tmp_path, make_structures, capsys,
                                                            solvent_train):
    from data.writer import write_lmdb

    src = tmp_path / "src.lmdb"
    write_lmdb(make_structures(2), src, progress=False)
    out = tmp_path / "out"
    assert main(["convert", str(src), str(out), "--format", "aselmdb", "--quiet"]) == 2
    assert "--format aselmdb" in _one_error_line(capsys)
    assert main(["convert", str(solvent_train), str(out), "--trust-pickles", "--quiet"]) == 2
    assert "--trust-pickles" in _one_error_line(capsys)
    assert not out.exists()
    assert main(["convert", str(src), str(out), "--format", "lmdb", "--quiet"]) == 0  # it applies


def test_trust_pickles_is_refused_for_ase_lmdb(tmp_path, capsys):
    from .test_data_aselmdb import _legacy_row, _write_legacy

    path = tmp_path / "a.aselmdb"
    _write_legacy(path, [_legacy_row(0), _legacy_row(1)])
    assert main(["info", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(path), "--quiet", "--trust-pickles"]) == 2
    assert "--trust-pickles" in _one_error_line(capsys)
    assert main(["convert", str(path), str(tmp_path / "o"), "--trust-pickles", "--quiet"]) == 2
    assert "--trust-pickles" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line_exit_2(capsys):
    for argv in (["convert"], ["convert", "a", "b", "--shards", "x"], ["info", "--bogus", "p"],
                 ["demo", "d", "--seed", "1.5"], ["nope"], []):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
        assert "launch-data" in _one_error_line(capsys), argv


def test_demo_refuses_sizes_and_seeds_it_cannot_use(tmp_path, capsys):
    for argv, needle in ((["--n-train", "0", "--n-val", "0", "--n-test", "0"], "nothing to write"),
                         (["--n-val", "-1"], "--n-val"), (["--seed", "-2"], "--seed")):
        assert main(["demo", str(tmp_path / "d"), *argv]) == 2, argv
        assert needle in _one_error_line(capsys), argv
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_datasets_only(tmp_path, solvent_train, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.0000.lmdb").write_bytes(b"old")
    (out / "notes.txt").write_text("keep")
    assert main(["convert", str(solvent_train), str(out), "--overwrite", "--quiet"]) == 2
    assert "notes.txt" in _one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "keep" and (out / "data.0000.lmdb").read_bytes() == b"old"
    (out / "notes.txt").unlink()
    assert main(["convert", str(solvent_train), str(out), "--overwrite", "--quiet"]) == 0
    assert count(out) == 203
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp, no old copy left


def test_non_regular_inputs_and_outputs(tmp_path, solvent_train, capsys):
    import os

    fifo = tmp_path / "f.xyz"
    os.mkfifo(fifo)
    assert main(["convert", str(fifo), str(tmp_path / "o"), "--quiet"]) == 2
    assert "f.xyz: not a regular file" in _one_error_line(capsys)
    assert main(["convert", str(solvent_train), str(fifo), "--overwrite", "--quiet"]) == 2
    assert "f.xyz: not a regular file" in _one_error_line(capsys)
    assert fifo.exists() and not (tmp_path / "o").exists()


def test_demo_keeps_what_an_existing_folder_holds(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["demo", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train.lmdb", "val.lmdb"]
    assert [count(out / f"{s}.lmdb") for s in ("train", "val")] == [2, 1]
    assert main(["demo", str(out), "--n-train", "2", "--n-val", "0", "--n-test", "0"]) == 2
    assert "train.lmdb: already exists" in _one_error_line(capsys)


def test_convert_never_replaces_its_own_extxyz_input(tmp_path, capsys):
    src = tmp_path / "in.xyz"
    (tmp_path / "unused").write_text("x")
    src.write_text("2\nenergy=1.0 Properties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 1\n")
    before = src.read_bytes()
    assert main(["convert", str(src), str(src), "--overwrite", "--quiet"]) == 2
    assert "OUT is the input file" in _one_error_line(capsys)
    assert src.read_bytes() == before
    # an LMDB may be rewritten in place (e.g. into another number of shards): it is read as it is written
    assert main(["convert", str(src), str(tmp_path / "a.lmdb"), "--quiet"]) == 0
    assert main(["convert", str(tmp_path / "a.lmdb"), str(tmp_path / "a.lmdb"), "--overwrite", "--quiet"]) == 0
    assert count(tmp_path / "a.lmdb") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lmdb", "in.xyz", "unused"]


def test_a_folder_of_both_kinds_of_shards_is_refused(tmp_path, make_structures, capsys):
    from data.writer import write_lmdb

    from .test_data_aselmdb import _legacy_row, _write_legacy

    folder = tmp_path / "mixed"
    write_lmdb(make_structures(2), folder, shards=1, progress=False)
    _write_legacy(folder / "b.aselmdb", [_legacy_row(0)])
    assert main(["info", str(folder), "--quiet"]) == 2
    assert "both *.lmdb and *.aselmdb" in _one_error_line(capsys)
    assert main(["convert", str(folder), str(tmp_path / "o"), "--quiet"]) == 2
    assert "both *.lmdb and *.aselmdb" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_an_unforeseen_failure_is_one_line_exit_1(tmp_path, make_structures, capsys, monkeypatch):
    import data.info
    from data.writer import write_lmdb

    monkeypatch.delenv("MLIP_DEBUG", raising=False)
    write_lmdb(make_structures(2), tmp_path / "a.lmdb", progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(data.info, "summarize", broken)
    assert main(["info", str(tmp_path / "a.lmdb"), "--quiet"]) == 1
    err = _one_error_line(capsys)
    assert "launch-data info failed: RuntimeError: disk on fire second line" in err
