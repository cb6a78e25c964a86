"""Optimizers and learning-rate schedules of the core trainer.

``adam`` is mace_run_train's (amsgrad); ``plateau`` is its ReduceLROnPlateau (factor 0.8; patience
``train.patience``, 50 when null, as mace_run_train). ``step`` halves the lr four times over the run;
``cosine`` anneals to 0 over the run, in epochs or cycles (``train.scheduler_step_unit``).
"""
from __future__ import annotations

from typing import Any, List

from launcher.core.schema import plateau_patience

PLATEAU_FACTOR = 0.8                                 # mace_run_train's ReduceLROnPlateau
STEP_GAMMA = 0.5                                     # scheduler=step: halve the lr ...
STEP_PARTS = 4                                       # ... four times over the run


def make_optimizer(spec: Any, params: List[Any]) -> Any:
    import torch

    t = spec.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, amsgrad=True)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, amsgrad=True)


def scheduler_length(spec: Any, updates_per_epoch: int) -> int:
    t = spec.train
    if t.scheduler_step_unit == "cycle":
        return max(1, (t.epochs * updates_per_epoch) // t.cycle_steps)
    return max(1, t.epochs)


def make_scheduler(spec: Any, opt: Any, length: int) -> Any:
    import torch

    kind = spec.train.scheduler
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=PLATEAU_FACTOR,
                                                          patience=plateau_patience(spec.train))
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=length)
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, length // STEP_PARTS), gamma=STEP_GAMMA)
    return None


def stretch_schedule(sched: Any, opt: Any, length: int) -> str:
    """Fit a resumed schedule to a new run length (``task=resume`` with more ``train.epochs``): the
    schedule continues as if it had been planned for the new length. Returns a note ("" = unchanged)."""
    import math

    import torch

    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max != length:
        old, sched.T_max = sched.T_max, length
        e = min(sched.last_epoch, length)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * e / length)) / 2
        sched._last_lr = [g["lr"] for g in opt.param_groups]
        return f"cosine schedule stretched from {old} to {length} steps (lr now {opt.param_groups[0]['lr']:.3g})"
    if isinstance(sched, torch.optim.lr_scheduler.StepLR):
        size = max(1, length // STEP_PARTS)
        if sched.step_size != size:
            old, sched.step_size = sched.step_size, size
            return f"step schedule: step_size {old} -> {size} for the new run length"
    return ""
