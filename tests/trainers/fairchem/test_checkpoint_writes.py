"""FairChem checkpoint writes under the launcher: atomic, mirrored, and never torn by a stop signal.

FairChem v1 ``torch.save``s onto ``checkpoint.pt`` in place; a preemption signal that lands during
that write used to leave a torn file and nothing to resume from. The signal here is delivered
*during* the write on purpose (from inside the pickling of the state), so the race is exercised
every time, not by chance.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.fairchem import checkpoints as ck
from trainers.fairchem.checkpoint_io import SaveGuard, link_or_copy

CHILD_DIR = Path(ck.__file__).resolve().parent

# Runs in the FairChem env: two checkpoint saves through FairChem's own base_trainer name, the
# second sending itself SIGNAL while its state is being pickled.
SCRIPT = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import checkpoint_io, patches
ckdir, mirror, signame = sys.argv[2:5]
guard = checkpoint_io.SaveGuard()
guard.install()
patches.install_atomic_checkpoints(mirror, guard)
import torch
from fairchem.core.trainers import base_trainer


class SignalWhilePickled:
    def __reduce__(self):
        os.kill(os.getpid(), getattr(signal, signame))
        return (int, (0,))


base_trainer.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, ckdir, "checkpoint.pt")
print("first checkpoint saved", flush=True)
state = {"state_dict": {"w": torch.full((200000,), 2.0)}, "epoch": 2, "probe": SignalWhilePickled(),
         "tail": torch.zeros(200000)}
base_trainer.save_checkpoint(state, ckdir, "checkpoint.pt")
print("kept training after the signal", flush=True)
"""

LOAD = "import sys, torch; print(int(torch.load(sys.argv[1], weights_only=False)['epoch']))"


def _epoch(python: str, path: Path) -> int:
    out = subprocess.run([python, "-c", LOAD, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"{path} is not a readable checkpoint: {out.stderr[-800:]}"
    return int(out.stdout.strip().splitlines()[-1])


def _save_with_signal(python: str, tmp_path: Path, signame: str):
    ckdir, mirror = tmp_path / "fairchem" / "checkpoints" / "ts", tmp_path / "checkpoints"
    ckdir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, "-c", SCRIPT, str(CHILD_DIR), str(ckdir), str(mirror), signame],
                         capture_output=True, text=True, env=env, timeout=300)
    return out, ckdir / "checkpoint.pt", mirror / "checkpoint.pt"


@pytest.mark.fairchem
def test_stop_signal_during_a_checkpoint_write_waits_for_it(fairchem_python, tmp_path):
    out, native, mirrored = _save_with_signal(fairchem_python, tmp_path, "SIGUSR2")
    assert out.returncode == 128 + signal.SIGUSR2, out.stdout + out.stderr[-2000:]
    assert "first checkpoint saved" in out.stdout and "kept training" not in out.stdout
    assert "after the checkpoint write" in out.stdout
    assert _epoch(fairchem_python, native) == 2           # the write in progress was completed ...
    assert os.path.samefile(native, mirrored)            # ... and mirrored before the process stopped
    assert not [p for p in native.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.fairchem
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(fairchem_python, tmp_path):
    out, native, mirrored = _save_with_signal(fairchem_python, tmp_path, "SIGKILL")
    assert out.returncode == -signal.SIGKILL, out.stdout + out.stderr[-2000:]
    assert "first checkpoint saved" in out.stdout
    assert _epoch(fairchem_python, native) == 1           # not torn: the old file was never written over
    assert _epoch(fairchem_python, mirrored) == 1
    assert [p for p in native.parent.iterdir() if p.name.endswith(".tmp")]  # the unfinished write, aside
    assert ck.remove_stale_temps(tmp_path / "fairchem") == 1
    assert not [p for p in native.parent.iterdir() if p.name.endswith(".tmp")]


def test_guard_holds_a_signal_until_the_write_is_done():
    guard = SaveGuard()
    old = {s: signal.getsignal(s) for s in SaveGuard.SIGNALS}
    try:
        guard.install()
        steps = []
        with pytest.raises(SystemExit) as exc:
            with guard:
                os.kill(os.getpid(), signal.SIGUSR2)
                steps.append("write finished")
        assert steps == ["write finished"] and exc.value.code == 128 + signal.SIGUSR2
        with pytest.raises(SystemExit) as exc:  # outside a write: at once
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        assert exc.value.code == 128 + signal.SIGTERM
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_link_or_copy_replaces_atomically_and_is_idempotent(tmp_path):
    src, dst = tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt"
    src.parent.mkdir()
    src.write_bytes(b"one")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"one" and os.path.samefile(src, dst)
    link_or_copy(src, dst)  # same file already: nothing to do
    new = tmp_path / "a" / "new.pt"
    new.write_bytes(b"two")
    os.replace(new, src)    # the writer replaces, so the mirror keeps the old content until relinked
    assert dst.read_bytes() == b"one"
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"two"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["checkpoint.pt"]


def test_the_run_copy_is_made_once_whatever_the_child_mirrored(tmp_path, monkeypatch):
    """ck.mirror (the end of a training, a preemption) copies a checkpoint into the run's checkpoints/ only where
    the child's mirror does not already hold it: a link, or on another filesystem the child's own copy."""
    src, dst = tmp_path / "native" / "checkpoint.pt", tmp_path / "run" / "checkpoint.pt"
    src.parent.mkdir()
    src.write_bytes(b"epoch 1")
    os.utime(src, ns=(10**18, 10**18))           # explicit times: file system clocks tick coarsely
    link_or_copy(src, dst)                       # the child's mirror, a link
    assert ck.mirror(src, dst) is False
    dst.unlink()

    def no_links(*_a, **_k):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)    # another filesystem: the child copies
    link_or_copy(src, dst)
    os.utime(dst, ns=(10**18 + 10**9, 10**18 + 10**9))   # written after src was complete
    assert not os.path.samefile(src, dst) and dst.read_bytes() == b"epoch 1"
    inode = dst.stat().st_ino
    assert ck.mirror(src, dst) is False and dst.stat().st_ino == inode   # not copied a second time
    new = tmp_path / "native" / "new.pt"
    new.write_bytes(b"epoch 2")
    os.utime(new, ns=(10**18 + 2 * 10**9, 10**18 + 2 * 10**9))
    os.replace(new, src)                         # a newer checkpoint the mirror lacks
    assert ck.mirror(src, dst) is True and dst.read_bytes() == b"epoch 2"
    assert ck.mirror(src, dst) is False
    dst.unlink()
    assert ck.mirror(src, dst) is True and dst.read_bytes() == b"epoch 2"   # no mirror at all
