"""Runs inside the FairChem environment: FairChem's CLI, then the checkpoint work that needs torch.

Standalone on purpose (stdlib + the FairChem env's torch/yaml; never imports the launcher): the
launcher process stays free of torch, and checkpoints are read and written by the same torch
that FairChem used.

    python child.py run [--post CKPT_DIR] [--mirror DIR] -- <fairchem CLI args>
                                                                 FairChem, then summarize CKPT_DIR
    python child.py serve                                        import FairChem, then run one command
                                                                 read from stdin: {"argv": [...], "cwd": DIR}
    python child.py summarize CKPT_DIR                           summary.json + weights.pt of CKPT_DIR
    python child.py weights-only SRC DST                         fine-tune start: model state only
    python child.py inspect CKPT                                 one JSON line: epoch, step, epochs_done
    python child.py export CKPT OUT_DIR                          weights.pt + summary.json of one file
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile

MODEL_KEYS = ("state_dict", "normalizers", "elementrefs", "scale_dict", "config", "ema")
SUMMARY = "summary.json"
WEIGHTS = "weights.pt"


def _load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _atomic_write(path, write):
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


def _save(obj, path):
    import torch

    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        _atomic_write(dst, lambda t: shutil.copyfile(src, t))
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


def install_atomic_checkpoints(mirror_dir=None, guard=None):
    """Make FairChem's checkpoint writes atomic, signal-safe, and mirrored into ``mirror_dir``.

    FairChem v1 ``torch.save``s straight onto ``checkpoint.pt``: a job stopped during that write
    leaves a torn file. Its ``save_checkpoint`` (used by the trainers' ``save``) is replaced in
    this process with one that writes through a temp file and, once the file is complete, links
    it into ``mirror_dir`` (the run's standard ``checkpoints/``).
    """
    import fairchem.core.common.utils as fc_utils
    import fairchem.core.trainers.base_trainer as fc_base

    guard = guard or SaveGuard()

    def save_checkpoint(state, checkpoint_dir="checkpoints/", checkpoint_file="checkpoint.pt"):
        filename = os.path.join(checkpoint_dir, checkpoint_file)
        with guard:
            _save(state, filename)
            if mirror_dir and checkpoint_file in ("checkpoint.pt", "best_checkpoint.pt"):
                link_or_copy(filename, os.path.join(mirror_dir, checkpoint_file))
        return filename

    fc_utils.save_checkpoint = save_checkpoint
    fc_base.save_checkpoint = save_checkpoint
    return guard


def _write_json(obj, path):
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    _atomic_write(path, write)


def _plain(x):
    """JSON-able copy (tensors -> numbers/lists)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def _epochs_done(ckpt):
    epoch = ckpt.get("epoch")
    return None if epoch is None else int(math.floor(float(epoch) + 1e-6))


def _val_metrics(ckpt):
    vm = ckpt.get("val_metrics") or {}
    out = {}
    for k, v in vm.items():
        out[k] = _plain(v.get("metric") if isinstance(v, dict) else v)
    return out


def _strip(state_dict):
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def versions():
    from importlib import metadata

    out = {}
    for name in ("fairchem-core", "torch", "torch-geometric", "e3nn", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _as_checkpoint(obj, src):
    """A FairChem checkpoint, or a bare state dict (our exported weights) wrapped as one."""
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return {"state_dict": obj, "normalizers": {}}
    raise SystemExit(f"{src}: neither a FairChem checkpoint nor a state dict")


def info(ckpt):
    cfg = ckpt.get("config") or {}
    return {
        "epoch": _plain(ckpt.get("epoch")),
        "step": _plain(ckpt.get("step")),
        "epochs_done": _epochs_done(ckpt),
        "best_val_metric": _plain(ckpt.get("best_val_metric")),
        "primary_metric": ckpt.get("primary_metric"),
        "val_metrics": _val_metrics(ckpt),
        "model": _plain(cfg.get("model", {})),
        "trainer": cfg.get("trainer"),
        "has_optimizer": "optimizer" in ckpt,
        "n_parameters": int(sum(v.numel() for v in ckpt["state_dict"].values())) if "state_dict" in ckpt else None,
        "versions": versions(),
    }


def export(src, out_dir):
    """weights.pt (bare state dict, no 'module.' prefix) and summary.json of one checkpoint."""
    ckpt = _as_checkpoint(_load(src), src)
    os.makedirs(out_dir, exist_ok=True)
    _save(_strip(ckpt["state_dict"]), os.path.join(out_dir, WEIGHTS))
    summary = info(ckpt)
    summary["source"] = os.path.abspath(src)
    _write_json(summary, os.path.join(out_dir, SUMMARY))
    return summary


def summarize(ckpt_dir):
    """Summary of a FairChem checkpoint folder; weights from best_checkpoint.pt, else checkpoint.pt."""
    last = os.path.join(ckpt_dir, "checkpoint.pt")
    best = os.path.join(ckpt_dir, "best_checkpoint.pt")
    if not os.path.isfile(last) and not os.path.isfile(best):
        return None
    source = best if os.path.isfile(best) else last
    summary = export(source, ckpt_dir)
    summary["best"] = source == best
    if os.path.isfile(last) and source != last:
        summary["last"] = info(_load(last))
        summary["last"].pop("model", None)
        for key in ("epoch", "step", "epochs_done", "best_val_metric", "primary_metric"):
            if summary.get(key) is None:  # best_checkpoint.pt carries no training state
                summary[key] = summary["last"].get(key)
    else:
        summary["last"] = {k: summary[k] for k in ("epoch", "step", "epochs_done")}
    _write_json(summary, os.path.join(ckpt_dir, SUMMARY))
    return summary


def weights_only(src, dst):
    ckpt = _as_checkpoint(_load(src), src)
    out = {k: ckpt[k] for k in MODEL_KEYS if k in ckpt}
    out.setdefault("normalizers", {})
    _save(out, dst)


def _arg(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else None


def check_gpu_extensions(fairchem_args):
    """GemNet-OC on a GPU needs torch-scatter/torch-sparse built with CUDA kernels; say so before FairChem starts."""
    import torch

    if "--cpu" in fairchem_args or not torch.cuda.is_available():
        return
    import yaml

    config = _arg(fairchem_args, "--config-yml")
    with open(config) as fh:
        name = str(((yaml.safe_load(fh) or {}).get("model") or {}).get("name", ""))
    if "gemnet" not in name:
        return
    import torch_scatter  # noqa: F401 - registers the ops
    import torch_sparse  # noqa: F401

    if torch.ops.torch_sparse.cuda_version() <= 0 or torch.ops.torch_scatter.cuda_version() <= 0:
        print("error: torch-scatter/torch-sparse in the FairChem env have no CUDA kernels, which GemNet-OC needs on "
              "a GPU: rebuild the env with MLIP_FAIRCHEM_CUDA_EXT=1 scripts/setup-fairchem-env (needs nvcc 12.x), "
              "or use device=cpu", flush=True)
        raise SystemExit(2)


def run(post_dir, fairchem_args, mirror_dir=None):
    sys.argv = ["fairchem", *fairchem_args]
    guard = SaveGuard()
    guard.install()  # before the slow imports: a stop signal during them ends the process cleanly
    check_gpu_extensions(fairchem_args)
    from fairchem.core._cli import main

    install_atomic_checkpoints(mirror_dir, guard)
    import time

    t0 = time.perf_counter()
    main()
    t1 = time.perf_counter()
    if post_dir:
        with guard:
            summarize(post_dir)
        print(f"[mlip-launch] FairChem {t1 - t0:.2f} s; checkpoint summary {time.perf_counter() - t1:.2f} s",
              flush=True)


def serve():
    """Import torch and FairChem now, then run the one command the launcher sends when it has decided it.

    Started by the launcher as soon as it knows a FairChem run is coming (see
    ``trainers/fairchem/prewarm.py``), so these imports overlap the launcher's own set-up. EOF on
    stdin (the launcher did not need us, or went away) ends the process.
    """
    import time

    t0 = time.perf_counter()
    SaveGuard().install()
    import fairchem.core._cli  # noqa: F401 - the slow part
    from fairchem.core.common.utils import setup_imports

    setup_imports()
    t1 = time.perf_counter()
    line = sys.stdin.readline()
    if not line.strip():
        return
    t2 = time.perf_counter()
    msg = json.loads(line)
    os.chdir(msg["cwd"])
    # "then waited": the part of the launcher's set-up that the imports did not cover
    print(f"[mlip-launch] FairChem interpreter started early: imports {t1 - t0:.2f} s overlapped the launcher's "
          f"set-up, then waited {t2 - t1:.2f} s for the command", flush=True)
    main(msg["argv"])


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        opts = {"--post": None, "--mirror": None}
        while rest[:1] and rest[0] in opts and len(rest) > 1:
            opts[rest[0]], rest = rest[1], rest[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        run(opts["--post"], rest, opts["--mirror"])
    elif cmd == "serve" and not rest:
        serve()
    elif cmd == "summarize" and len(rest) == 1:
        summarize(rest[0])
    elif cmd == "weights-only" and len(rest) == 2:
        weights_only(*rest)
    elif cmd == "inspect" and len(rest) == 1:
        print(json.dumps(info(_as_checkpoint(_load(rest[0]), rest[0])), default=str))
    elif cmd == "export" and len(rest) == 2:
        export(*rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
