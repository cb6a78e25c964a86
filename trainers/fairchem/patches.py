"""FairChem v1's trainer, patched in the FairChem process: each patch a named function, guarded on the version.

Runs inside the FairChem environment (stdlib + torch + FairChem; never the launcher). Every ``install_*``
replaces a function or method of FairChem's that it was written against, so each one first checks that this
env has that FairChem (:data:`FAIRCHEM_SERIES`): another version stops the run with one line naming both
versions, rather than training with a patch that no longer fits.

- :func:`install_atomic_checkpoints`: checkpoint writes atomic, signal-safe and mirrored into the run;
- :func:`install_training_options`: ``--accum-steps``, ``--freeze``, ``--early-stop``, ``--log-every``
  (the loop itself is in train_loop.py);
- :func:`install_logger`: where FairChem's logger writes, and the logger ``none``.
"""
from __future__ import annotations

import functools
import math
import os

if __package__:
    from trainers.fairchem import train_loop
    from trainers.fairchem.checkpoint_io import SaveGuard, die, link_or_copy, load, save
else:  # child.py run as a script in the FairChem env: this folder is on sys.path
    import train_loop
    from checkpoint_io import SaveGuard, die, link_or_copy, load, save

#: The fairchem-core release series these patches were written for (their code follows its trainer's).
FAIRCHEM_SERIES = "1.10"


def installed_fairchem():
    """The installed fairchem-core version, or None."""
    from importlib import metadata

    try:
        return metadata.version("fairchem-core")
    except metadata.PackageNotFoundError:
        return None


def written_for(series):
    """Decorate a patch: before it runs, the installed fairchem-core must be of ``series`` (``1.10`` = 1.10.x)."""

    def wrap(patch):
        @functools.wraps(patch)
        def guarded(*args, **kwargs):
            found = installed_fairchem()
            if found is None or not (found == series or found.startswith(series + ".")):
                die(f"{patch.__name__}: this patch of FairChem's trainer is written for fairchem-core {series}.x, "
                    f"but the FairChem env has {found or 'no fairchem-core'}; rebuild it with "
                    "scripts/setup-fairchem-env")
            return patch(*args, **kwargs)

        guarded.fairchem_series = series
        return guarded

    return wrap


# ------------------------------------------------------------------------------ atomic checkpoints

# FairChem 1.10 records the task (s2ef, is2re) where its config named the trainer; its own ASE calculator
# (OCPCalculator) looks that name up in the trainer registry and fails on it.
TASK_NAMES = ("s2ef", "is2re")


@written_for(FAIRCHEM_SERIES)
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
            save(state, filename)
            if mirror_dir and checkpoint_file in ("checkpoint.pt", "best_checkpoint.pt"):
                link_or_copy(filename, os.path.join(mirror_dir, checkpoint_file))
        return filename

    fc_utils.save_checkpoint = save_checkpoint
    fc_base.save_checkpoint = save_checkpoint
    return guard


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

def head_modules(model_name):
    """The top-level modules that make up ``model_name``'s output head; a one-line error for other models."""
    if model_name not in HEAD_MODULES:
        die(f"--freeze head_only: no output head is defined for model '{model_name}' "
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
        die(f"--freeze head_only: model '{model_name}' has none of the head modules {', '.join(heads)}")
    return n_head, n_all, found




# ------------------------------------------------------------------------------ training options
@written_for(FAIRCHEM_SERIES)
def install_training_options(options):
    """Patch FairChem's trainers in this process to honour ``options`` (a :class:`TrainOptions`).

    ``OCPTrainer.train`` (FairChem's forces/energy/ocp trainers and ``equiformerv2_forces``) is replaced with
    train_loop's, FairChem 1.10's loop with micro-batch groups, the early stop and the progress line added: with
    the default options it trains exactly as FairChem's own loop, except that it always ends with the final
    training state on disk (FairChem's saves nothing when no ``checkpoint_every``/``eval_every`` step falls
    within the run). Trainers with a loop of their own are refused when an option needs the loop.
    """
    from fairchem.core.trainers.ocp_trainer import OCPTrainer

    state = {"accum_steps": options.accum_steps}  # written into every training checkpoint under STATE_KEY
    train_loop.ensure_progress_log(options)
    loop = train_loop.make_train(options, state)
    patch_checkpoint_state(state)
    patch_freeze(options)
    patch_optimizer(options, loop)
    patch_scheduler_lengths(options.accum_steps)
    OCPTrainer.train = loop
    return loop


@written_for(FAIRCHEM_SERIES)
def patch_checkpoint_state(state):
    """Training checkpoints carry ``state`` under :data:`STATE_KEY`; a loaded one hands its own to the loop
    (``trainer._mlip_resumed``). Every load goes through the allow-list."""
    import logging

    import torch
    import fairchem.core.trainers.base_trainer as fc_base

    BaseTrainer = fc_base.BaseTrainer
    inner_save = fc_base.save_checkpoint

    def save_checkpoint(state_, checkpoint_dir="checkpoints/", checkpoint_file="checkpoint.pt"):
        if "optimizer" in state_:  # a training checkpoint (best_checkpoint.pt holds the model only)
            state_ = {**state_, STATE_KEY: dict(state)}
        return inner_save(state_, checkpoint_dir=checkpoint_dir, checkpoint_file=checkpoint_file)

    fc_base.save_checkpoint = save_checkpoint
    load_checkpoint_orig = BaseTrainer.load_checkpoint

    def load_checkpoint(self, checkpoint_path, checkpoint=None, inference_only=False):
        if checkpoint is None and os.path.isfile(checkpoint_path):  # loaded as FairChem does, once
            logging.info(f"Loading checkpoint from: {checkpoint_path}")
            checkpoint = load(checkpoint_path, torch.device("cpu") if self.cpu else self.device)
        if checkpoint is not None and not inference_only:
            self._mlip_resumed = dict(checkpoint.get(STATE_KEY) or {})
        return load_checkpoint_orig(self, checkpoint_path, checkpoint=checkpoint, inference_only=inference_only)

    BaseTrainer.load_checkpoint = load_checkpoint


@written_for(FAIRCHEM_SERIES)
def patch_freeze(options):
    """head_only: frozen before the optimizer, so the EMA (and DistributedDataParallel) see the parameters."""
    import fairchem.core.trainers.base_trainer as fc_base
    from fairchem.core.common import distutils
    from torch.nn.parallel import DistributedDataParallel

    BaseTrainer = fc_base.BaseTrainer
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


@written_for(FAIRCHEM_SERIES)
def patch_optimizer(options, loop):
    """A trainer with a loop of its own is refused where an option needs ``loop``; frozen parameters are left
    out of the optimizer."""
    import fairchem.core.trainers.base_trainer as fc_base

    BaseTrainer = fc_base.BaseTrainer
    load_optimizer_orig = BaseTrainer.load_optimizer

    def load_optimizer(self):
        needs_loop = options.accum_steps > 1 or options.early_stop or options.log_every
        if needs_loop and type(self).train is not loop:
            die(f"--accum-steps/--early-stop/--log-every: trainer '{self.config.get('trainer')}' "
                f"({type(self).__name__}) runs a training loop of its own; they work with FairChem's "
                "forces, energy and equiformerv2_forces trainers")
        load_optimizer_orig(self)
        if options.freeze:
            for group in self.optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p.requires_grad]

    BaseTrainer.load_optimizer = load_optimizer


@written_for(FAIRCHEM_SERIES)
def patch_scheduler_lengths(accum):
    """EquiformerV2's trainer turns epoch-based scheduler lengths into steps with len(train_loader): with
    accumulation, an epoch has fewer steps than batches."""
    from fairchem.core.models.equiformer_v2.trainers.forces_trainer import EquiformerV2ForcesTrainer

    load_extras_orig = EquiformerV2ForcesTrainer.load_extras

    def load_extras(self):
        loader = self.train_loader
        if accum > 1 and loader is not None:
            self.train_loader = train_loop.Batches(math.ceil(len(loader) / accum))
        try:
            load_extras_orig(self)
        finally:
            self.train_loader = loader

    EquiformerV2ForcesTrainer.load_extras = load_extras


# ------------------------------------------------------------------------------ logger
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


@written_for(FAIRCHEM_SERIES)
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
