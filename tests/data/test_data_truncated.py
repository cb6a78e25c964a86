"""Truncated or corrupt LMDB files: one ConfigError line naming the file, never a SIGBUS.

Every read runs in a child process, so a SIGBUS shows as a failed test instead of killing pytest.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from data.shards import check_file
from data.writer import write_lmdb
from launcher.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

#: Reads every reader does, in a child: preflight's check, the dataset, every record, info.
READ_ALL = r"""
import json, sys
from data import check_readable, count, open_dataset
from data.info import summarize
from launcher.core.errors import ConfigError
path = sys.argv[1]
try:
    count(path)
    check_readable(path)
    ds = open_dataset(path)
    for i in range(len(ds)):
        ds[i]
        ds.get_data(i)
    summarize(path, progress=False)
    print(json.dumps({"ok": len(ds)}))
except ConfigError as e:
    print(json.dumps({"error": str(e)}))
"""


def _read_in_child(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", READ_ALL, str(path)], capture_output=True, text=True,
                       cwd=REPO, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, f"{path.name}: exit {r.returncode} (-7/135 = SIGBUS)\n{r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def real_lmdb(tmp_path_factory) -> Path:
    """A real multi-page shard as our writer (FairChem's layout) makes it."""
    from tests.data.conftest import random_structures

    out = tmp_path_factory.mktemp("real") / "real.lmdb"
    write_lmdb(random_structures(60, seed=3), out, progress=False)
    return out


def _psize(data: bytes) -> int:
    return struct.unpack_from("<I", data, 16 + 24)[0]


def _cut_points(data: bytes) -> list[int]:
    psize, size = _psize(data), len(data)
    return sorted({0, 1, 100, psize - 1, psize, psize + 50, 2 * psize, 2 * psize + 1, 3 * psize,
                   size // 3, size // 2, size - psize, size - 1})


@pytest.mark.slow
def test_truncated_at_many_sizes_is_one_line_never_sigbus(real_lmdb, tmp_path):
    data = real_lmdb.read_bytes()
    assert len(data) >= 8 * _psize(data)  # enough pages for the cuts to land in the data
    assert _read_in_child(real_lmdb) == {"ok": 60}
    for cut in _cut_points(data):
        bad = tmp_path / f"cut{cut}.lmdb"
        bad.write_bytes(data[:cut])
        got = _read_in_child(bad)
        assert "error" in got, (cut, got)
        msg = got["error"]
        assert str(bad) in msg and "\n" not in msg, msg
        assert any(w in msg for w in ("truncated", "empty file", "not a readable LMDB")), msg


def test_truncation_is_caught_before_lmdb_maps_the_file(real_lmdb, tmp_path):
    data = real_lmdb.read_bytes()
    bad = tmp_path / "half.lmdb"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError) as e:
        check_file(bad)
    assert str(e.value) == (f"{bad}: truncated LMDB file: {len(data) // 2} bytes, but its header "
                            f"says it uses {len(data)} (an interrupted copy or download?)")
    check_file(real_lmdb)


def _patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _current_meta(data: bytes) -> int:
    """Offset of the meta page LMDB uses (the higher transaction id)."""
    psize = _psize(data)
    t0, t1 = (struct.unpack_from("<Q", data, off + 16 + 128)[0] for off in (0, psize))
    return psize if t1 > t0 else 0


def _corruptions(data: bytes):
    """(name, bytes, text the error must hold) of files with broken headers or pages."""
    psize, meta = _psize(data), _current_meta(data)
    yield "bad magic", _patched(data, 16, "<I", 0x12345678), "not a readable LMDB file"
    yield "second meta zeroed", data[:psize] + bytes(psize) + data[2 * psize:], \
        "not a readable LMDB file"
    yield "unknown version", _patched(data, meta + 20, "<I", 7), "LMDB format version 7"
    yield "last page past the end", _patched(data, meta + 16 + 120, "<Q", 10 ** 6), "truncated"
    yield "odd page size", _patched(data, 16 + 24, "<I", 1000), "page size 1000"
    yield "text file", b"this is not an lmdb file\n" * 400, "not a readable LMDB file"
    # a data page overwritten: LMDB's own checks, or the record's unpickling, must catch it
    for k, page in enumerate((2, 3, len(data) // psize - 1)):
        junk = bytes((i * 131 + k * 7) % 256 for i in range(psize))
        yield f"page {page} garbage", data[:page * psize] + junk + data[(page + 1) * psize:], ""


@pytest.mark.slow
def test_corrupt_files_are_one_line_errors(real_lmdb, tmp_path):
    data = real_lmdb.read_bytes()
    for k, (name, content, needle) in enumerate(_corruptions(data)):
        bad = tmp_path / f"bad{k}.lmdb"
        bad.write_bytes(content)
        got = _read_in_child(bad)
        assert "error" in got, (name, got)
        msg = got["error"]
        assert str(bad) in msg and "\n" not in msg and needle in msg, (name, msg)


def test_lmdb_errors_while_reading_are_config_errors(real_lmdb, tmp_path):
    """lmdb.CorruptedError on a damaged branch page: one line naming the file, no traceback."""
    data = real_lmdb.read_bytes()
    psize, meta = _psize(data), _current_meta(data)
    root = struct.unpack_from("<Q", data, meta + 16 + 24 + 48 + 40)[0]  # main DB's root page
    b = bytearray(data)
    struct.pack_into("<H", b, root * psize + 10, 0x04)  # page flags: an overflow page
    bad = tmp_path / "flags.lmdb"
    bad.write_bytes(bytes(b))
    got = _read_in_child(bad)
    assert got["error"].startswith(f"{bad}: LMDB file is corrupt or unreadable ("), got


def test_launch_data_info_on_a_truncated_file(real_lmdb, tmp_path):
    data = real_lmdb.read_bytes()
    bad = tmp_path / "cut.lmdb"
    bad.write_bytes(data[: len(data) - _psize(data)])
    r = subprocess.run([sys.executable, "-m", "data.cli", "info", str(bad), "--quiet"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {bad}: truncated LMDB file") and r.stderr.count("\n") == 1


def test_check_is_cached_per_file_identity_size_and_mtime(real_lmdb, tmp_path):
    from data import shards

    copy = tmp_path / "c.lmdb"
    copy.write_bytes(real_lmdb.read_bytes())
    check_file(copy)
    st = os.stat(copy)
    assert (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) in shards._CHECKED
    with open(copy, "r+b") as fh:  # cut in place: new size, new mtime -> checked again
        fh.truncate(st.st_size // 2)
    with pytest.raises(ConfigError, match="truncated"):
        check_file(copy)
