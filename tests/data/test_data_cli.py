import json

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
