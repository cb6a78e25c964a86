"""The FairChem config a run actually uses: the user's config, flattened, with our data and policies.

Everything the launcher changes is recorded in ``notes`` (written as the derived file's header
and logged), so the file in the run directory explains itself:

- ``dataset.{train,val,test}.src`` come from ``data.*`` (splits we do not have are dropped);
- the logger becomes tensorboard unless the config asks for another logger that can work
  (wandb without ``WANDB_API_KEY`` fails at start-up);
- predictions are written in float32 (FairChem's default is float16);
- ``backend_args`` of the form ``--a.b=value`` are applied after all of the above;
- then, only where the run would otherwise leave nothing behind: validation/checkpointing at least
  once per epoch (FairChem saves ``checkpoint.pt`` only every ``eval_every`` steps, which a short run
  may never reach), and on resume ``optim.max_epochs`` raised above the epochs already done.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from launcher.core.errors import ConfigError
from trainers.fairchem.config import get_dotted, load_config, looks_like_path, set_dotted, split_backend_args

SPLITS = ("train", "val", "test")
# Config values that name files FairChem must open: (dotted key with '*' for a split, description).
FILE_KEYS = ("model.scale_file", "dataset.*.lin_ref", "dataset.*.oc20_ref")


@dataclass
class Derived:
    config: Dict[str, Any]
    passthrough: List[str] = field(default_factory=list)   # backend_args that are FairChem CLI flags
    notes: List[str] = field(default_factory=list)
    overridden: List[str] = field(default_factory=list)   # dotted keys set by backend_args


def _datasets(config: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """FairChem accepts ``dataset`` as {train,val,test}, as one train mapping, or as a list."""
    ds = config.get("dataset")
    if ds is None:
        return {}
    if isinstance(ds, list):
        return {split: dict(d or {}) for split, d in zip(SPLITS, ds)}
    if isinstance(ds, dict):
        if any(k in ds for k in (*SPLITS, "relax")):
            return {k: dict(v or {}) for k, v in ds.items()}
        return {"train": dict(ds)}
    raise ConfigError(f"train.config_yml: 'dataset' must be a mapping or a list, got {type(ds).__name__}")


def wandb_configured(env: Dict[str, str]) -> bool:
    return bool(env.get("WANDB_API_KEY")) or env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Batches per epoch of FairChem's single-process sampler (no drop_last)."""
    return max(1, math.ceil(n_train / max(1, batch_size)))


def derive_config(
    config_yml: str,
    *,
    mode: str,
    data: Dict[str, Optional[str]],
    backend_args: List[str],
    env: Dict[str, str],
    n_train: Optional[int] = None,
    epochs_done: Optional[int] = None,
    resume_target: Optional[int] = None,
) -> Derived:
    """Build the config for ``mode`` (``train`` or ``predict``).

    ``data`` maps split -> LMDB path (for predict, only ``test`` is read). ``n_train`` lets the
    per-epoch checkpoint policy work; ``epochs_done``/``resume_target`` drive the resume rule.
    """
    if mode not in ("train", "predict"):
        raise ValueError(f"mode must be train or predict, got {mode!r}")
    config = load_config(config_yml)
    notes: List[str] = []
    if "model" not in config or not isinstance(config["model"], dict) or "name" not in config["model"]:
        raise ConfigError(f"train.config_yml: {config_yml}: no 'model' section with a 'name'")
    config.setdefault("optim", {})

    # ---- data ----
    datasets = _datasets(config)
    train_settings = datasets.get("train", {})
    if mode == "train":
        wanted = {s: data.get(s) for s in SPLITS}
        seen: Dict[str, str] = {}
        for split in SPLITS:
            path = wanted[split]
            if path and os.path.realpath(path) in seen:
                other = seen[os.path.realpath(path)]
                if split == "test":
                    notes.append(f"dataset.test dropped: data.test is the same file as data.{other} "
                                 "(one process cannot open an LMDB twice)")
                    wanted[split] = None
                    continue
                raise ConfigError(f"data.{split}: same file as data.{other} ({path}); FairChem opens each "
                                  "LMDB once per process, so the splits must be different files")
            if path:
                seen[os.path.realpath(path)] = split
        new: Dict[str, Dict[str, Any]] = {}
        for split in SPLITS:
            if wanted[split]:
                entry = dict(datasets.get(split, {}))
                entry["src"] = str(wanted[split])
                new[split] = entry
            elif split in datasets:
                notes.append(f"dataset.{split} dropped (data.{split} not set)")
        for extra in datasets:
            if extra not in SPLITS:
                new[extra] = datasets[extra]
        if not new.get("train"):
            raise ConfigError("data.train: required for FairChem training")
        config["dataset"] = new
    else:
        test = data.get("test")
        if not test:
            raise ConfigError("data.test: no dataset to predict on")
        train_only_settings = {k: v for k, v in train_settings.items() if k != "src"}
        entry = dict(datasets.get("test", {}))
        entry["src"] = str(test)
        config["dataset"] = {"train": train_only_settings, "test": entry}
        if not train_only_settings:
            config["dataset"].pop("train")
        task = config.setdefault("task", {})
        if not isinstance(task, dict):
            raise ConfigError("train.config_yml: 'task' must be a mapping")
        if task.get("prediction_dtype") is None:
            task["prediction_dtype"] = "float32"
            notes.append("task.prediction_dtype: float32 (FairChem's default float16 loses energy precision)")

    # ---- logger ----
    logger = config.get("logger", "wandb")
    logger_name = logger if isinstance(logger, str) else (logger or {}).get("name")
    if logger_name in (None, "wandb") and not wandb_configured(env):
        config["logger"] = {"name": "tensorboard"}
        notes.append(f"logger: tensorboard (config asked for {logger_name or 'the default wandb'}; "
                     "no WANDB_API_KEY/WANDB_MODE set)")

    # ---- backend_args (last word on the config) ----
    overrides, passthrough = split_backend_args(backend_args)
    for key, value in overrides:
        set_dotted(config, key, value)
    overridden = [k for k, _ in overrides]
    if overrides:
        notes.append("backend_args applied: " + " ".join(f"--{k}={v!r}" for k, v in overrides))

    # ---- schedule policies that keep a run from leaving nothing behind ----
    optim = config["optim"]
    if mode == "train" and n_train is not None:
        spe = steps_per_epoch(n_train, int(optim.get("batch_size", 1)))
        for key in ("eval_every", "checkpoint_every"):
            value = optim.get(key)
            if f"optim.{key}" in overridden or value is None or value == -1:
                continue
            if isinstance(value, (int, float)) and value > spe:
                optim[key] = spe
                notes.append(f"optim.{key}: {value} -> {spe} (one epoch is {spe} steps; otherwise no "
                             "validation/checkpoint would happen within an epoch)")
        if optim.get("eval_every") is None and optim.get("checkpoint_every") is None:
            pass  # FairChem's default: every len(train_loader) steps, i.e. once per epoch
    if mode == "train" and epochs_done is not None:
        max_epochs = int(optim.get("max_epochs", 1))
        if epochs_done >= max_epochs:
            target = resume_target if resume_target is not None and resume_target > epochs_done else epochs_done + max_epochs
            optim["max_epochs"] = target
            notes.append(f"optim.max_epochs: {max_epochs} -> {target} ({epochs_done} epochs already done)")
    return Derived(config=config, passthrough=passthrough, notes=notes, overridden=overridden)


def missing_files(config: Dict[str, Any]) -> List[str]:
    """Problems with files the config names (scale file, linear references), one line each."""
    problems: List[str] = []
    datasets = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    for key in FILE_KEYS:
        keys: List[Tuple[str, Any]]
        if "*" in key:
            _, rest = key.split("*.", 1)
            keys = [(f"dataset.{s}.{rest}", (v or {}).get(rest) if isinstance(v, dict) else None)
                    for s, v in datasets.items()]
        else:
            keys = [(key, get_dotted(config, key))]
        for dotted, value in keys:
            if isinstance(value, str) and value and looks_like_path(value) and not os.path.exists(value):
                problems.append(f"train.config_yml: {dotted}: file not found: {value} (relative paths are "
                                "searched beside the config and in its parent folders)")
    return problems
