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
