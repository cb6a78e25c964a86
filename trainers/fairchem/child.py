"""Runs inside the FairChem environment: FairChem's CLI, then the checkpoint work that needs torch.

Standalone on purpose (stdlib + the FairChem env's torch/yaml; never imports the launcher): the
launcher process stays free of torch, and checkpoints are read and written by the same torch
that FairChem used.

    python child.py run [--post CKPT_DIR] [--mirror DIR] [training options] -- <fairchem CLI args>
                                                                 FairChem, then summarize CKPT_DIR
    python child.py serve                                        import FairChem, then run one command
                                                                 read from stdin: {"argv": [...], "cwd": DIR}
    python child.py summarize CKPT_DIR                           summary.json + weights.pt of CKPT_DIR
    python child.py weights-only SRC DST                         fine-tune start: model state only
    python child.py inspect CKPT                                 one JSON line: epoch, step, epochs_done
    python child.py export CKPT OUT_DIR                          weights.pt + summary.json of one file

Training options of ``run`` (FairChem v1 has no such knobs; see :class:`TrainOptions`):

    --accum-steps N        one optimizer update every N micro-batches (FairChem's step = one update)
    --freeze head_only     train only the model's energy/force output head (equiformer_v2, gemnet_oc)
    --early-stop N         stop after N validations in a row without a better primary val metric
    --log-every N          every N optimizer updates one progress line on stdout (and in --progress-log)
    --progress-log FILE    append the progress lines (and the early-stop line) to FILE
    --logs-dir DIR         FairChem's logger writes under DIR: tensorboard events in DIR/tensorboard/, wandb's files
                           in DIR/wandb/ (see install_logger); a config's logger 'none': no logger
    --run-name NAME        the wandb run's name when no --identifier names it
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


def _load(path, map_location="cpu"):
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
        _die(f"{path} could not be loaded without running code from it ({first[:300]}); "
             "if you trust this file, set data.trust_pickles=true")


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


# FairChem 1.10 records the task (s2ef, is2re) where its config named the trainer; its own ASE calculator
# (OCPCalculator) looks that name up in the trainer registry and fails on it.
TASK_NAMES = ("s2ef", "is2re")


def config_trainer(fairchem_args):
    """The trainer the run's config names (``--config-yml``, then a ``--trainer=`` override), or None."""
    name = None
    config = _arg(fairchem_args, "--config-yml")
    if config:
        import yaml

        with open(config) as fh:
            name = (yaml.safe_load(fh) or {}).get("trainer")
    for a in fairchem_args:
        if a.startswith("--trainer="):
            name = a.split("=", 1)[1]
    return name if isinstance(name, str) and name not in TASK_NAMES else None


def install_atomic_checkpoints(mirror_dir=None, guard=None, trainer=None):
    """Make FairChem's checkpoint writes atomic, signal-safe, and mirrored into ``mirror_dir``.

    FairChem v1 ``torch.save``s straight onto ``checkpoint.pt``: a job stopped during that write
    leaves a torn file. Its ``save_checkpoint`` (used by the trainers' ``save``) is replaced in
    this process with one that writes through a temp file and, once the file is complete, links
    it into ``mirror_dir`` (the run's standard ``checkpoints/``). ``trainer``: the registry name written as the
    checkpoint config's ``trainer`` where FairChem wrote the task name.
    """
    import fairchem.core.common.utils as fc_utils
    import fairchem.core.trainers.base_trainer as fc_base

    guard = guard or SaveGuard()

    def save_checkpoint(state, checkpoint_dir="checkpoints/", checkpoint_file="checkpoint.pt"):
        filename = os.path.join(checkpoint_dir, checkpoint_file)
        cfg = state.get("config") if isinstance(state, dict) else None
        if trainer and isinstance(cfg, dict) and cfg.get("trainer") in TASK_NAMES:
            # the trainer's registry name, so that OCPCalculator(checkpoint_path=...) loads the file as it is
            state = {**state, "config": {**cfg, "trainer": trainer}}
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


# ------------------------------------------------------------------------------ training options of `run`

# The output head of each model a training option can restrict training to: the modules that FairChem 1.10's own
# backbone/heads split of the same model puts into its heads. EquiformerV2Backbone + EqV2ScalarHead/EqV2VectorHead
# hold energy_block and force_block; GemNetOCBackbone + GemNetOCEnergyAndGradForceHead/GemNetOCForceHead hold the
# output MLPs out_mlp_E/out_mlp_F and the final layers out_energy/out_forces (the per-block out_blocks, which
# read the interaction blocks, stay in the backbone).
HEAD_MODULES = {
    "equiformer_v2": ("energy_block", "force_block"),
    "gemnet_oc": ("out_mlp_E", "out_energy", "out_mlp_F", "out_forces"),
}
FREEZE_CHOICES = ("none", "head_only")
STATE_KEY = "mlip_launch"  # our part of a training checkpoint: {"accum_steps": N, "bad_validations": n}
RUN_FLAGS = ("--post", "--mirror", "--accum-steps", "--freeze", "--early-stop", "--log-every", "--progress-log",
             "--logs-dir", "--run-name")


def _die(message):
    print(f"error: {message}", flush=True)
    raise SystemExit(2)


class TrainOptions:
    """Training knobs FairChem v1 lacks, applied inside its trainer by :func:`install_training_options`.

    ``accum_steps``: one optimizer update every N micro-batches (FairChem batches). Each micro-batch loss is
    scaled by 1/k, k the micro-batches of its group (N, or fewer for the last group of an epoch, which still
    steps), so an update applies the mean gradient of its group; gradient clipping, the AMP scaler and the EMA
    act once per update. FairChem's ``step`` counts optimizer updates, ceil(batches / N) per epoch: so do the
    checkpoint's ``step``, ``eval_every``, ``checkpoint_every``, ``print_every``, the logger and the lr
    scheduler (EquiformerV2's trainer converts its epoch-based scheduler lengths with that count too).

    ``freeze='head_only'``: parameters outside :data:`HEAD_MODULES` get ``requires_grad=False`` and are left out
    of the optimizer (and so of the EMA); other models are refused.

    ``early_stop``: stop after N validations in a row whose primary metric is no better than the best so far
    (FairChem's own test, the one that writes best_checkpoint.pt); ``checkpoint.pt`` is written and FairChem
    ends normally (exit 0). The count survives a resume (kept in the checkpoint under :data:`STATE_KEY`).

    ``log_every``: every N optimizer updates one line ``step S | epoch E | loss L | lr X | T structures/s`` on
    stdout, appended to ``progress_log`` too: L is the mean training loss of the micro-batches since the previous
    line, X the lr of the last update, T the structures trained per second of training (validation and
    checkpoint writes excluded) over the same span, counted over all processes.
    """

    def __init__(self, accum_steps=1, freeze=None, early_stop=None, log_every=None, progress_log=None,
                 logs_dir=None, run_name=None):
        self.accum_steps = accum_steps
        self.freeze = None if freeze in (None, "none") else freeze
        self.early_stop = early_stop
        self.log_every = log_every
        self.progress_log = progress_log
        self.logs_dir = logs_dir
        self.run_name = run_name

    def __repr__(self):
        return f"TrainOptions({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _whole(flag, value):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        _die(f"{flag} must be a whole number >= 1, got {value!r}")
    return n


def parse_run_args(args):
    """``run``'s own options (all before ``--``) -> (post_dir, mirror_dir, TrainOptions, FairChem's arguments)."""
    values, rest = {}, list(args)
    while rest[:1] and rest[0] in RUN_FLAGS:
        if len(rest) < 2:
            _die(f"{rest[0]} needs a value")
        values[rest[0]], rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    freeze = values.get("--freeze")
    if freeze is not None and freeze not in FREEZE_CHOICES:
        _die(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {freeze!r}")
    whole = {flag: _whole(flag, values[flag]) for flag in ("--accum-steps", "--early-stop", "--log-every")
             if flag in values}
    options = TrainOptions(accum_steps=whole.get("--accum-steps", 1), freeze=freeze,
                           early_stop=whole.get("--early-stop"), log_every=whole.get("--log-every"),
                           progress_log=values.get("--progress-log"), logs_dir=values.get("--logs-dir"),
                           run_name=values.get("--run-name"))
    return values.get("--post"), values.get("--mirror"), options, rest


def head_modules(model_name):
    """The top-level modules that make up ``model_name``'s output head; a one-line error for other models."""
    if model_name not in HEAD_MODULES:
        _die(f"--freeze head_only: no output head is defined for model '{model_name}' "
             f"(only for {' and '.join(HEAD_MODULES)})")
    return HEAD_MODULES[model_name]


def freeze_to_head(model, model_name):
    """``requires_grad=False`` on every parameter outside the head; (head parameters, all parameters, head modules)."""
    heads = head_modules(model_name)
    n_head = n_all = 0
    found = []
    for name, p in model.named_parameters():
        n_all += p.numel()
        top = name.split(".", 1)[0]
        if top in heads:
            n_head += p.numel()
            if top not in found:
                found.append(top)
        else:
            p.requires_grad_(False)
    if not found:
        _die(f"--freeze head_only: model '{model_name}' has none of the head modules {', '.join(heads)}")
    return n_head, n_all, found


class _Batches:
    """Stands in for the train loader while a trainer turns epochs into steps: len() = optimizer updates per epoch."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _KeepGrads:
    """FairChem's ``_backward`` starts with ``optimizer.zero_grad()``; inside this block that call keeps the
    gradients the earlier micro-batches of the group accumulated (an instance attribute shadows the method)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def __enter__(self):
        self.optimizer.zero_grad = lambda *args, **kwargs: None
        return self

    def __exit__(self, *exc):
        del self.optimizer.zero_grad
        return False


class _Progress:
    """What the progress line reports, summed since the previous line."""

    def __init__(self, options, world):
        self.options, self.world = options, world
        self.reset()

    def reset(self):
        self.loss = 0.0
        self.batches = 0
        self.structures = 0
        self.seconds = 0.0

    def line(self, step, epoch, lr):
        loss = self.loss / self.batches if self.batches else float("nan")
        rate = self.structures * self.world / self.seconds if self.seconds > 0 else float("nan")
        lr = float("nan") if lr is None else float(lr)
        return f"step {step} | epoch {epoch:.3f} | loss {loss:.6g} | lr {lr:.3e} | {rate:.1f} structures/s"


def _announce(options, line):
    """One line on stdout (the launcher's console and FairChem log) and in the progress log."""
    print(line, flush=True)
    if options.progress_log:
        with open(options.progress_log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def install_training_options(options):
    """Patch FairChem's trainers in this process to honour ``options`` (a :class:`TrainOptions`).

    ``OCPTrainer.train`` (FairChem's forces/energy/ocp trainers and ``equiformerv2_forces``) is replaced with
    :func:`train` below, FairChem 1.10's loop with micro-batch groups, the early stop and the progress line
    added: with the default options it trains exactly as FairChem's own loop, except that it always ends with the
    final training state on disk (FairChem's saves nothing when no ``checkpoint_every``/``eval_every`` step falls
    within the run). Trainers with a loop of their own are refused when an option needs the loop.
    """
    import contextlib
    import logging
    import time

    import torch
    import fairchem.core.trainers.base_trainer as fc_base
    from fairchem.core.common import distutils
    from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer
    from fairchem.core.modules.scaling.util import ensure_fitted
    from fairchem.core.trainers.ocp_trainer import OCPTrainer
    from torch.nn.parallel import DistributedDataParallel

    BaseTrainer = fc_base.BaseTrainer
    accum = options.accum_steps
    extra = {"accum_steps": accum}  # written into every training checkpoint under STATE_KEY
    if options.progress_log:
        os.makedirs(os.path.dirname(os.path.abspath(options.progress_log)), exist_ok=True)

    # -- checkpoints carry our state; a loaded one hands it to the loop
    inner_save = fc_base.save_checkpoint

    def save_checkpoint(state, checkpoint_dir="checkpoints/", checkpoint_file="checkpoint.pt"):
        if "optimizer" in state:  # a training checkpoint (best_checkpoint.pt holds the model only)
            state = {**state, STATE_KEY: dict(extra)}
        return inner_save(state, checkpoint_dir=checkpoint_dir, checkpoint_file=checkpoint_file)

    fc_base.save_checkpoint = save_checkpoint

    load_checkpoint_orig = BaseTrainer.load_checkpoint

    def load_checkpoint(self, checkpoint_path, checkpoint=None, inference_only=False):
        if checkpoint is None and os.path.isfile(checkpoint_path):  # loaded as FairChem does, once
            logging.info(f"Loading checkpoint from: {checkpoint_path}")
            checkpoint = _load(checkpoint_path, torch.device("cpu") if self.cpu else self.device)  # allow-listed, as every load
        if checkpoint is not None and not inference_only:
            self._mlip_resumed = dict(checkpoint.get(STATE_KEY) or {})
        return load_checkpoint_orig(self, checkpoint_path, checkpoint=checkpoint, inference_only=inference_only)

    BaseTrainer.load_checkpoint = load_checkpoint

    # -- head_only: frozen before the optimizer, the EMA (and DistributedDataParallel) see the parameters
    load_model_orig = BaseTrainer.load_model

    def load_model(self):
        load_model_orig(self)
        if options.freeze == "head_only":
            model = self._unwrapped_model
            n_head, n_all, found = freeze_to_head(model, self.config["model"].get("name"))
            if isinstance(self.model, DistributedDataParallel):
                self.model = DistributedDataParallel(model)  # re-wrapped: DDP expects gradients for what it holds
            if distutils.is_master():
                print(f"[mlip-launch] freeze head_only: training {n_head} of {n_all} parameters "
                      f"({', '.join(found)})", flush=True)

    BaseTrainer.load_model = load_model

    load_optimizer_orig = BaseTrainer.load_optimizer

    def load_optimizer(self):
        needs_loop = accum > 1 or options.early_stop or options.log_every
        if needs_loop and type(self).train is not train:
            _die(f"--accum-steps/--early-stop/--log-every: trainer '{self.config.get('trainer')}' "
                 f"({type(self).__name__}) runs a training loop of its own; they work with FairChem's "
                 "forces, energy and equiformerv2_forces trainers")
        load_optimizer_orig(self)
        if options.freeze:
            for group in self.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p.requires_grad]

    BaseTrainer.load_optimizer = load_optimizer

    # -- EquiformerV2's trainer turns epoch-based scheduler lengths into steps with len(train_loader)
    load_extras_orig = EquiformerV2ForcesTrainer.load_extras

    def load_extras(self):
        loader = self.train_loader
        if accum > 1 and loader is not None:
            self.train_loader = _Batches(math.ceil(len(loader) / accum))
        try:
            load_extras_orig(self)
        finally:
            self.train_loader = loader

    EquiformerV2ForcesTrainer.load_extras = load_extras

    # -- the loop: OCPTrainer.train of FairChem 1.10, one iteration per optimizer update
    def train(self, disable_eval_tqdm: bool = False) -> None:
        ensure_fitted(self._unwrapped_model, warn=True)
        n_batches = len(self.train_loader)
        per_epoch = math.ceil(n_batches / accum)  # optimizer updates (FairChem steps) per epoch
        eval_every = self.config["optim"].get("eval_every", per_epoch)
        checkpoint_every = self.config["optim"].get("checkpoint_every", eval_every)
        primary_metric = self.evaluation_metrics.get(
            "primary_metric", self.evaluator.task_primary_metric[self.name]
        )
        if not hasattr(self, "primary_metric") or self.primary_metric != primary_metric:
            self.best_val_metric = 1e9 if "mae" in primary_metric else -1.0
        else:
            primary_metric = self.primary_metric
        self.metrics = {}
        master = distutils.is_master()

        resumed = getattr(self, "_mlip_resumed", None) or {}
        saved_accum = int(resumed.get("accum_steps", 1))
        if self.step and saved_accum != accum:
            done = int(round(float(self.epoch) * n_batches))  # micro-batches trained, from the saved epoch
            epoch_int, in_epoch = divmod(done, n_batches)
            step = epoch_int * per_epoch + in_epoch // accum
            if master:
                print(f"[mlip-launch] the checkpoint counts {saved_accum} micro-batch(es) per step, this run "
                      f"{accum}: step {self.step} -> {step} (epoch {float(self.epoch):.3f}); the lr scheduler "
                      "continues from its saved state", flush=True)
            self.step = step
        bad = int(resumed.get("bad_validations", 0))
        extra["bad_validations"] = bad
        if options.early_stop and self.val_loader is None and master:
            print(f"[mlip-launch] --early-stop {options.early_stop}: no validation set, so no early stop", flush=True)

        ddp = isinstance(self.model, DistributedDataParallel)
        progress = _Progress(options, distutils.get_world_size())
        stopped = False
        saved_step = self.step   # the newest step whose training state is on disk (a resumed one's is)
        start_epoch = self.step // per_epoch
        for epoch_int in range(start_epoch, self.config["optim"]["max_epochs"]):
            skip_updates = self.step % per_epoch
            self.train_sampler.set_epoch_and_start_iteration(epoch_int, skip_updates * accum)
            train_loader_iter = iter(self.train_loader)

            for update in range(skip_updates, per_epoch):
                first, end = update * accum, min((update + 1) * accum, n_batches)
                self.step = epoch_int * per_epoch + update + 1
                t0 = time.perf_counter()
                self.model.train()
                self.optimizer.zero_grad()
                for i in range(first, end):
                    self.epoch = epoch_int + (i + 1) / n_batches
                    last = i == end - 1
                    batch = next(train_loader_iter)
                    # DDP: gradients are reduced once per update, on the last micro-batch
                    with contextlib.nullcontext() if last or not ddp else self.model.no_sync():
                        with torch.autocast("cuda", enabled=self.scaler is not None):
                            out = self._forward(batch)
                            loss = self._compute_loss(out, batch)
                        self.metrics = self._compute_metrics(out, batch, self.evaluator, self.metrics)
                        value = loss.item()
                        self.metrics = self.evaluator.update("loss", value, self.metrics)
                        progress.loss += value
                        progress.batches += 1
                        progress.structures += batch.natoms.numel()
                        if end - first > 1:
                            loss = loss / (end - first)
                        loss = self.scaler.scale(loss) if self.scaler else loss
                        if last:  # FairChem's backward + update (shared-parameter scaling, AMP, clipping, EMA)
                            with _KeepGrads(self.optimizer):
                                self._backward(loss)
                        else:
                            loss.backward()
                progress.seconds += time.perf_counter() - t0

                # Log metrics.
                log_dict = {k: self.metrics[k]["metric"] for k in self.metrics}
                log_dict.update({"lr": self.scheduler.get_lr(), "epoch": self.epoch, "step": self.step})
                if self.step % self.config["cmd"]["print_every"] == 0 and master:
                    log_str = [f"{k}: {v:.2e}" for k, v in log_dict.items()]
                    logging.info(", ".join(log_str))
                    self.metrics = {}

                if self.logger is not None:
                    self.logger.log(log_dict, step=self.step, split="train")

                if options.log_every and self.step % options.log_every == 0:
                    if master:
                        _announce(options, progress.line(self.step, self.epoch, log_dict["lr"]))
                    progress.reset()

                if checkpoint_every != -1 and self.step % checkpoint_every == 0:
                    self.save(checkpoint_file="checkpoint.pt", training_state=True)
                    saved_step = self.step

                # Evaluate on val set every `eval_every` updates.
                if self.step % eval_every == 0:
                    if self.val_loader is not None:
                        best = self.best_val_metric
                        val_metrics = self.validate(split="val", disable_tqdm=disable_eval_tqdm)
                        self.update_best(primary_metric, val_metrics, disable_eval_tqdm=disable_eval_tqdm)
                        if options.early_stop:
                            metric = val_metrics[primary_metric]["metric"]
                            better = metric < best if "mae" in primary_metric else metric > best
                            bad = 0 if better else bad + 1
                            extra["bad_validations"] = bad
                            stopped = bad >= options.early_stop

                    if self.config["task"].get("eval_relaxations", False):
                        if "relax_dataset" not in self.config["task"]:
                            logging.warning("Cannot evaluate relaxations, relax_dataset not specified")
                        else:
                            self.run_relaxations()

                if stopped:
                    if master:
                        _announce(options, f"[mlip-launch] early stop: {bad} validations in a row without a better "
                                           f"val {primary_metric} (best {float(self.best_val_metric):.6g}); stopping "
                                           f"at step {self.step}, epoch {self.epoch:.3f}")
                    self.save(checkpoint_file="checkpoint.pt", training_state=True)
                    saved_step = self.step
                    break

                if self.scheduler.scheduler_type == "ReduceLROnPlateau":
                    if self.step % eval_every == 0:
                        self.scheduler.step(metrics=val_metrics[primary_metric]["metric"])
                else:
                    self.scheduler.step()

            torch.cuda.empty_cache()
            if stopped:
                break

            if checkpoint_every == -1:
                self.save(checkpoint_file="checkpoint.pt", training_state=True)
                saved_step = self.step

        if self.step != saved_step:   # the steps since the last checkpoint (all of them when none fell due)
            if master:
                print(f"[mlip-launch] step {self.step}: no checkpoint fell due since step {saved_step} (optim."
                      f"checkpoint_every {checkpoint_every}); saving the final training state", flush=True)
            self.save(checkpoint_file="checkpoint.pt", training_state=True)

    OCPTrainer.train = train
    return train


def _remove_empty(folder, levels):
    """``folder`` and up to ``levels - 1`` of its parents, each only if empty."""
    for _ in range(levels):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def _purge_on_first_log(logger, writer):
    """Before the logger's first event, a restart marker at its step (see install_logger)."""
    log = logger.log

    def first_log(update_dict, step, split=""):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        writer._get_file_writer().add_event(Event(step=int(step), session_log=SessionLog(status=SessionLog.START)))
        logger.log = log
        return log(update_dict, step, split)

    logger.log = first_log


def install_logger(options):
    """Where FairChem's logger writes, and the logger 'none' (FairChem's trainers insist on one).

    FairChem puts its logger's files in ``<run dir>/logs/<logger>/<timestamp id>``; with ``--logs-dir DIR``
    tensorboard writes to ``DIR/tensorboard/`` and wandb to ``DIR/wandb/`` (named ``--run-name`` unless
    ``--identifier`` names it), and the empty folder FairChem made is removed. Every invocation of a run (a
    resume after a stop) writes its events to that one folder, so TensorBoard shows one run: the first event of
    an invocation marks a restart at its step (``SessionLog.START``, what SummaryWriter's ``purge_step`` writes),
    and TensorBoard drops the events an earlier invocation logged from that step on (steps redone since its
    last checkpoint). The writer is closed at exit (FairChem never closes it; queued events would be lost). A
    config whose logger is ``none`` runs without a logger.
    """
    import atexit

    import fairchem.core.trainers.base_trainer as fc_base
    from fairchem.core.common import distutils

    BaseTrainer = fc_base.BaseTrainer
    load_logger_orig = BaseTrainer.load_logger

    def load_logger(self):
        logger = self.config.get("logger")
        name = logger if isinstance(logger, str) else (logger or {}).get("name")
        cmd = self.config["cmd"]
        if name == "none" or (options.logs_dir and name in ("tensorboard", "wandb")):
            _remove_empty(cmd["logs_dir"], 3)   # FairChem's logs/<logger>/<timestamp id>, made before this
        if name == "none":
            self.logger = None
            return
        if options.logs_dir and name in ("tensorboard", "wandb"):
            cmd["logs_dir"] = os.path.join(options.logs_dir, "tensorboard") if name == "tensorboard" \
                else options.logs_dir
            if distutils.is_master():
                os.makedirs(cmd["logs_dir"], exist_ok=True)
        if name == "wandb" and options.run_name and not cmd.get("identifier"):
            cmd["identifier"] = options.run_name
        load_logger_orig(self)
        writer = getattr(self.logger, "writer", None)
        if writer is not None:
            atexit.register(writer.close)
            if options.logs_dir:
                _purge_on_first_log(self.logger, writer)

    BaseTrainer.load_logger = load_logger


def run(post_dir, fairchem_args, mirror_dir=None, options=None):
    sys.argv = ["fairchem", *fairchem_args]
    guard = SaveGuard()
    guard.install()  # before the slow imports: a stop signal during them ends the process cleanly
    check_gpu_extensions(fairchem_args)
    from fairchem.core._cli import main

    install_atomic_checkpoints(mirror_dir, guard, trainer=config_trainer(fairchem_args))
    install_training_options(options or TrainOptions())
    install_logger(options or TrainOptions())
    import time

    t0 = time.perf_counter()
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_rank(fairchem_args)
    else:
        main()
    t1 = time.perf_counter()
    if post_dir and rank == 0:
        with guard:
            summarize(post_dir)
        print(f"[mlip-launch] FairChem {t1 - t0:.2f} s; checkpoint summary {time.perf_counter() - t1:.2f} s",
              flush=True)


def run_rank(fairchem_args):
    """One rank of FairChem's distributed mode, started by torchrun (``--num-gpus N`` = the world size).

    FairChem's own CLI would start N processes of its own (``elastic_launch``) in which our patches of its
    trainer are not installed; each rank here runs FairChem's ``Runner`` directly, and FairChem's
    ``distutils.setup`` joins the process group from torchrun's variables.
    """
    from fairchem.core._cli import runner_wrapper
    from fairchem.core.common.flags import flags
    from fairchem.core.common.utils import build_config, setup_logging

    setup_logging()
    args, override_args = flags.get_parser().parse_known_args(fairchem_args)
    if args.num_gpus != int(os.environ["WORLD_SIZE"]):
        _die(f"--num-gpus {args.num_gpus} but torchrun started {os.environ['WORLD_SIZE']} ranks")
    runner_wrapper(build_config(args, override_args))


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
    os.environ.update(msg.get("env") or {})   # per-invocation variables (TMPDIR) the runner decided later
    tempfile.tempdir = None
    # "then waited": the part of the launcher's set-up that the imports did not cover
    print(f"[mlip-launch] FairChem interpreter started early: imports {t1 - t0:.2f} s overlapped the launcher's "
          f"set-up, then waited {t2 - t1:.2f} s for the command", flush=True)
    main(msg["argv"])


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        post_dir, mirror_dir, options, fairchem_args = parse_run_args(rest)
        run(post_dir, fairchem_args, mirror_dir, options)
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
