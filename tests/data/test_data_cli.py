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
