"""``launch-data`` stopped by SIGTERM / SIGINT in a real process: one line, 143 / 130, nothing left.

Each command is started on enough data to take a while, signalled once its temporary folder has
appeared (it has begun writing), and must remove that folder, leave OUT as it was (absent, or
byte for byte what it held) and exit with 128 + the signal number.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.writer import write_lmdb

from .conftest import raw_lmdb, random_structures

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MLIP_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "data.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".tmp-" in p.name] if folder.is_dir() else []


def _signal_once_writing(proc: subprocess.Popen, folder: Path, sig: int) -> tuple[int, str]:
    """Wait for a temp folder under ``folder`` holding a file, send ``sig``; (exit code, stderr)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any(any(t.rglob("*.lmdb")) for t in _temps(folder)):
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    else:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"never saw a temp folder with a shard in {folder} (exit {proc.returncode}): {err}")
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _one_line(err: str, name: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: interrupted by {name}"), err
    return err


def _digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


@pytest.fixture(scope="module")
def big_lmdb(tmp_path_factory) -> Path:
    """An LMDB of 3000 copies of one record: quick to make, seconds to convert or scan (the tests
    signal each command long before it would finish)."""
    folder = tmp_path_factory.mktemp("big")
    one = folder / "one.lmdb"
    write_lmdb(random_structures(1, seed=5), one, progress=False)
    import lmdb

    env = lmdb.open(str(one), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b"0")
    env.close()
    n = 3000
    items = {str(i): raw for i in range(n)}
    items["length"] = pickle.dumps(n)
    return raw_lmdb(folder / "big.lmdb", items)


@pytest.mark.parametrize("sig, name, code", [(signal.SIGTERM, "SIGTERM", 143),
                                             (signal.SIGINT, "SIGINT", 130)])
def test_convert_interrupted_leaves_nothing(tmp_path, big_lmdb, sig, name, code):
    out = tmp_path / "new" / "sub" / "out"  # folders made for OUT go too
    proc = _start("convert", str(big_lmdb), str(out), "--shards", "40")
    rc, err = _signal_once_writing(proc, tmp_path / "new" / "sub", sig)
    assert rc == code, err
    _one_line(err, name)
    assert str(out) in err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_convert_overwrite_interrupted_keeps_the_old_output(tmp_path, big_lmdb):
    out = tmp_path / "out"
    write_lmdb(random_structures(3, seed=1), out, shards=2, progress=False)
    before = _digest(out)
    proc = _start("convert", str(big_lmdb), str(out), "--shards", "40", "--overwrite")
    rc, err = _signal_once_writing(proc, tmp_path, signal.SIGTERM)
    assert rc == 143, err
    _one_line(err, "SIGTERM")
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("sig, name, code", [(signal.SIGTERM, "SIGTERM", 143),
                                             (signal.SIGINT, "SIGINT", 130)])
def test_demo_interrupted_leaves_nothing(tmp_path, sig, name, code):
    out = tmp_path / "demo"
    proc = _start("demo", str(out), "--n-train", "200", "--n-val", "0", "--n-test", "0")
    rc, err = _signal_once_writing(proc, tmp_path, sig)
    assert rc == code, err
    _one_line(err, name)
    assert list(tmp_path.iterdir()) == []


def test_demo_into_an_existing_folder_interrupted_keeps_what_it_held(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    write_lmdb(random_structures(2, seed=3), out / "train.lmdb", progress=False)
    before = _digest(out)
    proc = _start("demo", str(out), "--n-train", "200", "--n-val", "0", "--n-test", "0",
                  "--overwrite")
    rc, err = _signal_once_writing(proc, out, signal.SIGTERM)
    assert rc == 143, err
    _one_line(err, "SIGTERM")
    assert _digest(out) == before and not _temps(out)


def test_info_interrupted_is_one_line(tmp_path, big_lmdb):
    proc = _start("info", str(big_lmdb))
    time.sleep(0.05)
    deadline = time.monotonic() + 120
    # wait until the command is past start-up (it has opened the file: lmdb maps it)
    maps = Path(f"/proc/{proc.pid}/maps")
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if str(big_lmdb) in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("info finished before the signal: make the input bigger")
    assert proc.returncode == 130, err
    _one_line(err, "SIGINT")


def test_a_killed_convert_leaves_a_temp_folder_the_next_run_removes(tmp_path, big_lmdb):
    """SIGKILL runs no cleanup; the next write to the same OUT removes the dead process's folder."""
    out = tmp_path / "out"
    proc = _start("convert", str(big_lmdb), str(out), "--shards", "40")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not _temps(tmp_path):
        time.sleep(0.002)
    proc.kill()
    proc.communicate(timeout=120)
    assert _temps(tmp_path) and not out.exists()
    from data.writer import remove_stale_staging

    mine = tmp_path / f".out.tmp-{os.getpid()}-live"  # a live process's folder is never touched
    mine.mkdir()
    write_lmdb(random_structures(2, seed=9), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", mine.name])
    assert remove_stale_staging(tmp_path, "out") == []
