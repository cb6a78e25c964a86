"""One FairChem invocation, decided before it runs: a :class:`PlanRequest` in, a :class:`Plan` out.

Planning writes nothing: the derived config stays a structure (written by the runner as YAML with its notes
as the header), the command and environment are lists and mappings, and what later steps need of the config
(its epochs, the datasets it reads) travel as fields instead of being parsed back from the text.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.env import gpu_visible
from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec, log_every_updates
from trainers.fairchem.sources import NATIVE, ModelSources

CHILD = Path(__file__).resolve().with_name("child.py")


@dataclass
class PlanRequest:
    """What one FairChem invocation is asked to do.

    ``source`` is the model the run starts from as the user named it (its saved config rebuilds the model;
    default: ``checkpoint``); ``samples`` the (path, selection) the data sample is drawn from (default: every
    split of ``data`` in full). ``ranks > 1`` runs FairChem's distributed mode: that many processes started by
    torchrun in the FairChem env (see ranks.py). ``sources``: the task's model sources (read once), made
    from ``spec`` when not given.
    """

    spec: RunSpec
    layout: RunLayout
    mode: str                                   # train | predict
    data: Dict[str, Optional[str]]              # split -> LMDB path
    checkpoint: Optional[str] = None            # FairChem's --checkpoint
    n_train: Optional[int] = None               # training structures (steps per epoch)
    epochs_done: Optional[int] = None           # resume: epochs the checkpoint already trained
    resume_target: Optional[int] = None         # resume: the epochs the user asked for (train.epochs)
    timestamp_id: Optional[str] = None
    source: Optional[str] = None
    samples: Optional[Sequence[Tuple[Optional[str], Any]]] = None
    ranks: int = 1
    sources: Optional[ModelSources] = None


@dataclass
class Plan:
    """One FairChem invocation, fully decided before it runs (a dry run prints ``command``)."""

    mode: str
    timestamp_id: str
    native_dir: Path
    config_path: Path
    config: Dict[str, Any]                  # the derived config
    config_text: str                        # as written to config_path: the notes as header, then the config
    command: List[str]
    env: Dict[str, str]
    log_path: Path
    notes: List[str] = field(default_factory=list)
    ranks: int = 1          # FairChem processes (torchrun ranks) this invocation runs
    steps_per_epoch: Optional[int] = None   # optimizer steps per epoch of a training (val records' step)
    title: str = ""         # of logs/curves.png

    @property
    def checkpoint_dir(self) -> Path:
        return self.native_dir / "checkpoints" / self.timestamp_id

    @property
    def results_dir(self) -> Path:
        return self.native_dir / "results" / self.timestamp_id

    @property
    def max_epochs(self) -> Optional[int]:
        """``optim.max_epochs`` of the derived config, or None."""
        value = (self.config.get("optim") or {}).get("max_epochs")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def dataset_sources(self) -> List[str]:
        """The data files the derived config reads."""
        ds = self.config.get("dataset") if isinstance(self.config.get("dataset"), dict) else {}
        return [str(v["src"]) for v in ds.values() if isinstance(v, dict) and isinstance(v.get("src"), str)]


def use_cpu(spec: RunSpec) -> bool:
    return spec.device == "cpu" or (spec.device == "auto" and not gpu_visible())


def user_set(spec: RunSpec, key: str) -> bool:
    from trainers.fairchem.derive import user_set_keys

    return key in user_set_keys(spec)


def new_timestamp_id(task: str, native_dir: Path) -> str:
    """Unique per invocation (FairChem's own has ~2-minute resolution and reuses folders)."""
    base = f"{task}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ts, n = base, 1
    while any((native_dir / sub / ts).exists() for sub in ("checkpoints", "results", "configs")):
        n += 1
        ts = f"{base}-{n}"
    return ts


def make_plan(req: PlanRequest) -> Plan:
    """Derive the config and the command for one FairChem run (nothing is written)."""
    from trainers.fairchem.config import dump_config
    from trainers.fairchem.derive import derive_config, steps_per_epoch
    from trainers.fairchem.subset import sample_data

    spec, layout = req.spec, req.layout
    native = layout.native(NATIVE)
    ts = req.timestamp_id or new_timestamp_id(spec.task, native)
    user_env = {**os.environ, **{str(k): str(v) for k, v in spec.backend_env.items()}}
    sources = req.sources or ModelSources(spec, layout)
    base, origin, notes = sources.base_config(req.source if req.source is not None else req.checkpoint)
    samples = req.samples if req.samples is not None else [(path, None) for path in req.data.values() if path]
    n_train = req.n_train
    if n_train and req.ranks > 1:  # each rank trains its share: steps per epoch are counted on it
        n_train = -(-n_train // req.ranks)
    derived = derive_config(
        base, mode=req.mode, data=req.data, backend_args=list(spec.backend_args), env=user_env,
        n_train=n_train, epochs_done=req.epochs_done, resume_target=req.resume_target, spec=spec,
        sample=sample_data(samples), origin=origin,
    )
    notes = notes + derived.notes
    config_path = native / "configs" / f"{ts}.yml"
    command = _command(req, ts, config_path, derived, n_train, notes)
    env = _child_env(spec, req.mode, user_env, notes)
    what = spec.train.config_yml if origin == "train.config_yml" else f"the config saved with the model ({origin})"
    header = [f"Derived by mlip-launch from {what} for task={spec.task} (FairChem --mode {req.mode}).", *notes]
    spe = None
    if req.mode == "train" and n_train:
        batch = int((derived.config.get("optim") or {}).get("batch_size") or 1)
        spe = steps_per_epoch(n_train, batch, int(spec.train.accum_steps))
    return Plan(mode=req.mode, timestamp_id=ts, native_dir=native, config_path=config_path, config=derived.config,
                config_text=dump_config(derived.config, "\n".join(header)), command=command, env=env,
                log_path=layout.native_log(NATIVE, ts), notes=notes, ranks=req.ranks, steps_per_epoch=spe,
                title=f"{spec.run_name}: {spec.backend} {spec.task} (FairChem)")


def _command(req: PlanRequest, ts: str, config_path: Path, derived: Any, n_train: Optional[int],
             notes: List[str]) -> List[str]:
    """child.py's command line: its own options, then FairChem's CLI arguments."""
    from trainers.fairchem.env import resolve_python
    from trainers.fairchem.ranks import torchrun_command

    spec, layout, ranks, mode = req.spec, req.layout, req.ranks, req.mode
    native = layout.native(NATIVE)
    python = resolve_python(spec.backend_python)
    cmd = [*(torchrun_command(python, ranks) if ranks > 1 else [python]), str(CHILD), "run"]
    if ranks > 1:
        notes.append(f"{ranks} FairChem ranks (torchrun, one DDP group; {'gloo' if use_cpu(spec) else 'NCCL'}): "
                     f"the batch size is per rank, {ranks}x the structures per optimizer step")
    if mode == "train":
        cmd += ["--post", str(native / "checkpoints" / ts), "--mirror", str(layout.checkpoints)]
        opts, opt_notes = child_options(spec, derived.config, str(layout.train_log), n_train=n_train,
                                        logs_dir=str(layout.logs))
        cmd += opts
        notes += opt_notes
    cmd += ["--", "--mode", mode, "--config-yml", str(config_path), "--run-dir", str(native),
            "--timestamp-id", ts, "--seed", str(spec.effective_seed)]
    if spec.train.identifier:
        cmd += ["--identifier", spec.train.identifier]
    amp_key = "train.amp" if mode == "train" else "eval.amp"
    amp = spec.train.amp if mode == "train" else spec.eval.amp
    if use_cpu(spec):
        cmd += ["--cpu"]
        if amp:
            notes.append(f"{amp_key}: autocast is CUDA-only; running on CPU without it")
    elif amp:
        cmd += ["--amp"]
    if req.checkpoint:
        cmd += ["--checkpoint", str(req.checkpoint)]
    if ranks > 1:
        cmd += ["--num-gpus", str(ranks)]   # FairChem's world size (ranks, CPU or GPU)
    return cmd + derived.passthrough


def _child_env(spec: RunSpec, mode: str, user_env: Dict[str, str], notes: List[str]) -> Dict[str, str]:
    """The environment of FairChem's process: backend_env, wandb's mode, the GPU a ``cuda:N`` names."""
    from trainers.fairchem.env import child_env, device_env

    env = child_env(spec.backend_env)
    if mode == "train" and spec.train.logger == "wandb" and not user_env.get("WANDB_MODE"):
        env["WANDB_MODE"] = "offline"   # child_env disables wandb without an API key; train.logger asks for it
        notes.append("train.logger=wandb: WANDB_MODE=offline (set WANDB_MODE, e.g. in backend_env, to change it)")
    gpu = device_env(spec.device, spec.backend_env)
    if gpu:
        env.update(gpu)
        notes.append(f"device={spec.device}: CUDA_VISIBLE_DEVICES={gpu['CUDA_VISIBLE_DEVICES']} for FairChem")
    return env


def child_options(spec: RunSpec, config: Dict[str, Any], progress_log: str,
                  n_train: Optional[int] = None, logs_dir: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """child.py run options (before ``--``) for the run keys FairChem's trainer has no setting for, and notes.

    Progress lines go to the console and ``progress_log`` (the run's train.log) in every training run:
    every ``train.log_every`` updates, or about 20 per epoch when it is null (as the core trainer does).
    """
    from trainers.fairchem.derive import early_stop_evals, steps_per_epoch, user_set_keys

    t = spec.train
    wanted = user_set_keys(spec)
    opts: List[str] = []
    notes: List[str] = []
    if "train.accum_steps" in wanted:
        opts += ["--accum-steps", str(int(t.accum_steps))]
        notes.append(f"train.accum_steps={t.accum_steps}: gradients of {t.accum_steps} batches per optimizer step")
    if t.freeze == "head_only":
        opts += ["--freeze", "head_only"]
        notes.append("train.freeze=head_only: only the output head is trained")
    n = early_stop_evals(spec, config)
    if n is not None:
        opts += ["--early-stop", str(n)]
        notes.append(f"train.early_stop_factor={t.early_stop_factor}: training stops after {n} validations "
                     "without improvement")
    accum = int(t.accum_steps) if "train.accum_steps" in wanted else 1
    batch = int((config.get("optim") or {}).get("batch_size") or 1)
    per_epoch = steps_per_epoch(n_train, batch, accum) if n_train else 20
    opts += ["--log-every", str(log_every_updates(t, per_epoch)), "--progress-log", str(progress_log)]
    if logs_dir:   # FairChem's logger writes there (tensorboard/, wandb/), not in its own tree
        opts += ["--logs-dir", str(logs_dir), "--run-name", spec.run_name]
    return opts, notes
