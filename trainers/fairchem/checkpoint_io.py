"""Checkpoint files as the FairChem environment reads and writes them: allow-listed loads, atomic writes, links.

Runs inside the FairChem environment (imported by child.py and patches.py, stdlib + torch only, never the
launcher); the launcher imports it too for :data:`CHECKPOINT_GLOBALS`, :data:`TRUST_ENV` and :func:`link_or_copy`,
which need no torch.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile

#: What a FairChem v1 checkpoint may name besides what torch's weights-only unpickler allows by itself
#: (tensors, storages, dtypes, OrderedDict): numpy values and arrays in metrics and normalizers, plain
#: containers. Read by the launcher's preflight too (no torch needed there).
CHECKPOINT_GLOBALS = (
    "collections.defaultdict", "builtins.slice", "builtins.frozenset", "torch.torch_version.TorchVersion",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "numpy.dtypes.Float64DType",
    "numpy.dtypes.Float32DType", "numpy.dtypes.Float16DType", "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType",
    "numpy.dtypes.BoolDType",
)
TRUST_ENV = "MLIP_LAUNCH_TRUST_PICKLES"   # "1": data.trust_pickles=true, checkpoints are unpickled as they are


def load(path, map_location="cpu"):
    """A checkpoint read through torch's weights-only unpickler with :data:`CHECKPOINT_GLOBALS` allowed (a
    pickle naming anything else is refused, naming it: loading it could run code); plain pickle under
    ``MLIP_LAUNCH_TRUST_PICKLES=1``."""
    import importlib
    import pickle

    import torch

    if os.environ.get(TRUST_ENV) == "1":
        return torch.load(path, map_location=map_location, weights_only=False)
    import warnings

    allowed = []
    for full in CHECKPOINT_GLOBALS:
        module, _, name = full.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # numpy 2 warns on numpy.core
                allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    scoped = getattr(torch.serialization, "safe_globals", None)
    try:
        if scoped is not None:
            with scoped(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        torch.serialization.add_safe_globals(allowed)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e).split("WeightsUnpickler error:", 1)[-1]   # torch's own reason, past its preamble
        paras = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        first = next((p for p in paras if not p.startswith(("Weights only load failed", "Check the documentation"))),
                     type(e).__name__)
        die(f"{path} could not be loaded without running code from it ({first[:300]}); "
             "if you trust this file, set data.trust_pickles=true")


def atomic_write(path, write):
    """``write(tmp)`` into a temp file beside ``path``, fsync, umask permissions, os.replace: ``path`` is
    always a complete file. The temp name starts with '.' and ends in '.tmp' (see remove_stale_temps)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(obj, path):
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _umask():
    # read, never set: os.umask(0) would race any other thread creating files
    with open("/proc/self/status") as fh:
        return next((int(line.split()[1], 8) for line in fh if line.startswith("Umask:")), 0o022)


def link_or_copy(src, dst):
    """Atomically make ``dst`` the content of ``src``: a hard link when possible, else a copy.

    A link is safe because every writer of these files (FairChem patched by :func:`install_atomic_checkpoints`,
    and the launcher) replaces files instead of rewriting them, so no two names ever see a partial write.
    """
    import shutil

    d = os.path.dirname(os.path.abspath(dst))
    os.makedirs(d, exist_ok=True)
    try:
        if os.path.samefile(src, dst):
            return
    except OSError:
        pass
    tmp = os.path.join(d, f".{os.path.basename(dst)}.{os.getpid()}.link.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or links not allowed
        atomic_write(dst, lambda t: shutil.copyfile(src, t))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise


class SaveGuard:
    """Stop signals (SIGTERM, SIGUSR2) wait until a checkpoint being written is complete.

    Outside a save, a stop signal ends FairChem at once with exit 128+signal (``SystemExit``, so
    ``finally`` blocks still run); during one, it is held and acted on when the save and its
    mirror are done. Either way the newest complete checkpoint is on disk and mirrored.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.depth = 0
        self.pending = None

    def install(self):
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.depth:
            self.pending = signum
            return
        raise SystemExit(128 + signum)

    def __enter__(self):
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if not self.depth and self.pending is not None:
            signum, self.pending = self.pending, None
            print(f"[mlip-launch] stopping on signal {signal.Signals(signum).name} after the checkpoint write",
                  flush=True)
            raise SystemExit(128 + signum)
        return False


def die(message):
    """One error line on stdout (the launcher reports it), exit 2."""
    print(f"error: {message}", flush=True)
    raise SystemExit(2)


def write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    atomic_write(path, write)
