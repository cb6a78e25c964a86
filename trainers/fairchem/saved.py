"""Configs that come with a model (a FairChem checkpoint's, a v1 manifest bundle's) -> a config FairChem runs."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

SPLITS = ("train", "val", "test")

#: Top-level keys of a checkpoint's config that describe the run that made it, not a run to make.
RUN_RECORD_KEYS = ("cmd", "slurm", "gpus", "noddp", "amp", "gp_gpus", "local_rank", "world_size",
                   "distributed_backend", "submit", "summit", "mode", "identifier", "timestamp_id", "seed",
                   "is_debug", "run_dir", "print_every", "checkpoint", "cpu", "model_attributes",
                   "val_dataset", "test_dataset", "relax_dataset")
#: A checkpoint records the task name where the config named the trainer.
TASK_TO_TRAINER = {"s2ef": "forces", "is2re": "energy"}


def runnable_config(cfg: Dict[str, Any], notes: Optional[List[str]] = None) -> Dict[str, Any]:
    """A config FairChem can start from, made from one saved with a model.

    Accepts a FairChem checkpoint's ``config`` and the original implementation's v1 bundles (legacy
    ``model: NAME`` + ``model_attributes``, ``dataset``/``val_dataset``/``test_dataset``): the model becomes
    ``model: {name, ...}``, the datasets ``dataset: {train, val, test}``, and the record of the old run
    (``cmd``, ``slurm``, ...) is dropped.
    """
    cfg = copy.deepcopy(dict(cfg))
    model = cfg.get("model")
    if isinstance(model, str):
        attrs = cfg.get("model_attributes")
        cfg["model"] = {"name": model, **(dict(attrs) if isinstance(attrs, dict) else {})}
    elif isinstance(model, dict) and "name" not in model and isinstance(cfg.get("model_attributes"), dict):
        cfg["model"] = {**cfg["model_attributes"], **model}
    ds = cfg.get("dataset")
    flat = isinstance(ds, dict) and not any(k in ds for k in (*SPLITS, "relax"))
    if flat or any(k in cfg for k in ("val_dataset", "test_dataset", "relax_dataset")):
        new: Dict[str, Any] = {}
        if isinstance(ds, dict) and flat and ds:
            new["train"] = ds
        elif isinstance(ds, dict):
            new.update(ds)
        for split, key in (("val", "val_dataset"), ("test", "test_dataset"), ("relax", "relax_dataset")):
            if isinstance(cfg.get(key), dict) and cfg[key]:
                new[split] = cfg[key]
        cfg["dataset"] = new
    trainer = cfg.get("trainer")
    if trainer in TASK_TO_TRAINER:
        cfg["trainer"] = TASK_TO_TRAINER[trainer]
    for key in RUN_RECORD_KEYS:
        cfg.pop(key, None)
    _scheduler_epochs_back_to_epochs(cfg, notes if notes is not None else [])
    for key in ("loss_fns", "eval_metrics"):   # early FairChem 2 names
        if key in cfg and {"loss_fns": "loss_functions", "eval_metrics": "evaluation_metrics"}[key] not in cfg:
            cfg[{"loss_fns": "loss_functions", "eval_metrics": "evaluation_metrics"}[key]] = cfg.pop(key)
    if cfg.get("loss_functions") == {}:
        cfg.pop("loss_functions")
    return cfg


def _scheduler_epochs_back_to_epochs(cfg: Dict[str, Any], notes: List[str]) -> None:
    """EquiformerV2's trainer rewrites ``optim.scheduler_params.*epochs*`` in place from epochs to steps
    (``epochs`` = max_epochs x steps per epoch) before the config is saved; a run started from that config
    would multiply them again. Saved that way, they are turned back into epochs."""
    optim = cfg.get("optim")
    sp = optim.get("scheduler_params") if isinstance(optim, dict) else None
    if not isinstance(sp, dict):
        return
    total, max_epochs = sp.get("epochs"), optim.get("max_epochs")
    if not (isinstance(total, (int, float)) and isinstance(max_epochs, (int, float)) and 0 < max_epochs < total):
        return
    per_epoch = total / max_epochs
    if abs(per_epoch - round(per_epoch)) > 1e-6:
        return
    for key, value in list(sp.items()):
        if "epochs" in key and isinstance(value, (int, float)):
            sp[key] = value / per_epoch
        elif "epochs" in key and isinstance(value, list):
            sp[key] = [v / per_epoch if isinstance(v, (int, float)) else v for v in value]
    notes.append(f"optim.scheduler_params: *epochs* values saved in steps ({round(per_epoch)} per epoch) turned "
                 "back into epochs (FairChem's EquiformerV2 trainer converts them again)")


def model_section(cfg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``model: {name, ...}`` of a saved config in either form, or None."""
    model = runnable_config({k: cfg[k] for k in ("model", "model_attributes") if k in cfg}).get("model")
    return dict(model) if isinstance(model, dict) and model.get("name") else None
