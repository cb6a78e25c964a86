"""The training state of a :class:`trainers.mace.loop.Trainer`: what ``checkpoints/checkpoint.pt`` holds, its
atomic write, and its restore (exact resume: the data order is a function of the seed and the position kept
here, see :mod:`trainers.mace.loop`)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from launcher.core.atomic import atomic_torch_save
from trainers.mace.kernels import trainable_names
from trainers.mace.model_io import CHECKPOINT_FORMAT
from trainers.mace.order import rng_state, set_rng_state


@dataclass
class LoopState:
    epoch: int = 0               # completed epochs
    updates_in_epoch: int = 0    # updates done in the current epoch
    update_step: int = 0         # updates done in total
    eval_count: int = 0
    best_loss: float = math.inf
    best_metrics: Dict[str, Any] = field(default_factory=dict)
    best_epoch: int = 0
    best_step: int = 0
    bad_evals: int = 0
    stopped: str = ""            # why training stopped early ("" = not stopped)
    last_val_loss: Optional[float] = None
    train_sums: List[float] = field(default_factory=lambda: [0.0, 0.0])   # loss sum, updates since last eval
    replay_batches: int = 0      # micro-batches that have drawn replay structures (data.replay's stream position)


class Checkpointing:
    """Mixin of the Trainer: checkpoint content, write and restore."""

    def _checkpoint(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "source": self.source,
            "task": self.spec.task,
            "model_config": {k: v for k, v in self.cfg.items()},
            "model": self.e3nn.state_dict(self.model),   # e3nn form whatever the kernels: loads anywhere
            "kernels": self.kernels,
            "param_names": trainable_names(self.model),  # the optimizer's order, to resume with other kernels
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "freeze": self.freeze.state_dict() if self.freeze is not None else None,
            "loop": asdict(self.state),
            "rng": rng_state(),
            "seed": self.seed,
            "dtype": self.spec.train.dtype,
            "head": self.head,
            "statistics": self.statistics,
        }

    def save_checkpoint(self) -> None:
        self._saved_at = self.state.update_step
        if self.main:
            t0 = time.perf_counter()
            atomic_torch_save(self._checkpoint(), self.layout.checkpoint)
            self.log.info(f"checkpoint written at update {self.state.update_step} ({time.perf_counter() - t0:.2f}s)")
        self.dist.barrier()

    def _load_training_state(self, ck: Dict[str, Any]) -> None:
        from trainers.mace.kernels import adapt_training_state

        old_names = ck.get("param_names") or trainable_names(self.e3nn.twin or self.model)
        ck, note = adapt_training_state(ck, self.model, self.kernels, old_names)
        if note:
            self.log.info(note)
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched is not None and ck.get("scheduler") is not None:
            self.sched.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler") is not None:
            self.scaler.load_state_dict(ck["scaler"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.load_state_dict(ck["ema"])
        if self.freeze is not None and ck.get("freeze") is not None:
            self.freeze.load_state_dict(ck["freeze"])
        loop = dict(ck["loop"])
        self.state = LoopState(**loop)
        set_rng_state(ck["rng"])
