"""Evaluation points of a :class:`trainers.mace.loop.Trainer`: validation, the replay errors, best model,
early stop, the plateau scheduler's step.

Replay errors (``data.replay.val_samples`` > 0) are the held-out replay records scored at every evaluation as
their own record, ``split: replay`` in ``metrics.jsonl`` (TensorBoard ``replay/<metric>``, curves.png's error
panels, an ``eval replay`` line on the console and in train.log). They do not choose the best model: the val
loss does, as without replay.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Dict

from launcher.core.atomic import atomic_torch_save
from launcher.core.errors import TrainingDiverged
from launcher.core.metrics import metrics_line, sig
from launcher.core.schema import plateau_patience

SHOWN = ("energy_rmse_per_atom", "force_rmse", "stress_rmse")


class Evaluation:
    """Mixin of the Trainer: one evaluation point and what follows from it."""

    def _ema_weights(self):
        return self.ema.average_parameters() if self.ema is not None else contextlib.nullcontext()

    def _scores(self, graphs: Any) -> Dict[str, Any]:
        """Loss and errors of ``graphs`` (each rank its share, summed over ranks)."""
        from trainers.mace.predict import error_sums, metrics_from_sums

        t = self.spec.train
        shard = list(range(self.dist.rank, len(graphs), self.dist.world))
        with self._ema_weights():
            sums = error_sums(self.model, graphs, batch_size=t.batch_size, device=self.device, compute_force=True,
                              amp=self.amp, positions=shard, num_workers=t.num_workers)
        return metrics_from_sums(self.dist.all_sum(sums), energy_weight=t.energy_weight,
                                 force_weight=t.force_weight, stress_weight=t.stress_weight)

    def _eval_replay(self, epoch: int) -> None:
        """The held-out replay records' errors: their own metrics record and line."""
        if self.replay is None or not len(self.replay.val):
            return
        t0 = time.perf_counter()
        m = self._scores(self.replay.val)
        self.log.metrics({"epoch": epoch, "step": self.state.update_step, "split": "replay", **m})
        shown = [k for k in SHOWN if m.get(k) is not None]
        self.log.info(f"eval replay epoch={epoch} step={self.state.update_step} loss={sig(m['loss'])} "
                      f"{metrics_line(m, keys=shown, sep=' ')} (head {self.replay.head}, {len(self.replay.val)} "
                      f"held-out structures; {time.perf_counter() - t0:.2f} s)")

    def evaluate_point(self, kind: str) -> None:
        """Validation, replay errors, best model, early stop, scheduler (plateau) and checkpoint at one point."""
        t, st = self.spec.train, self.state
        st.eval_count += 1
        t_eval = time.perf_counter()
        train_loss = st.train_sums[0] / st.train_sums[1] if st.train_sums[1] else None
        st.train_sums = [0.0, 0.0]
        if self.val_graphs:
            m = self._scores(self.val_graphs)
            split = "val"
        else:
            m = {"loss": train_loss}
            split = "train"
        loss = m["loss"]
        lr = self.opt.param_groups[0]["lr"]
        rec = {"epoch": st.epoch if kind == "epoch" else st.epoch + 1, "step": st.update_step, "split": split,
               "lr": lr, "train_loss": train_loss, **m}
        if kind == "cycle":
            rec["cycle"] = st.eval_count
        self.log.metrics(rec)
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"train: {split} loss is {loss} at update {st.update_step}; {self._kept()}")
        improved = loss is not None and loss < st.best_loss
        if improved:
            st.best_loss, st.best_epoch, st.best_step, st.bad_evals = loss, rec["epoch"], st.update_step, 0
            st.best_metrics = {k: v for k, v in m.items() if v is not None}
            if self.main:
                with self._ema_weights():
                    atomic_torch_save(self.e3nn.state_dict(self.model), self.layout.best_model)
        else:
            st.bad_evals += 1
        st.last_val_loss = loss
        shown = [k for k in SHOWN if m.get(k) is not None]
        errors = f" {metrics_line(m, keys=shown, sep=' ')}" if shown else ""
        self.log.info(f"eval {split} epoch={rec['epoch']} step={st.update_step} loss={sig(loss)}{errors} lr={lr:.4g}"
                      + (" *best*" if improved else "") + f" ({time.perf_counter() - t_eval:.2f} s)")
        self._eval_replay(rec["epoch"])
        self.log.flush()
        self.log.curves(self._curves_title())
        if self.stop_after is not None and st.bad_evals >= self.stop_after:
            st.stopped = (f"early_stop_factor: {st.bad_evals} evaluations without {split} improvement "
                          f"(early_stop_factor {t.early_stop_factor} x patience {plateau_patience(t)}); "
                          f"best loss {sig(st.best_loss)} at epoch {st.best_epoch}")
        if st.stopped:
            self.log.info(f"stopping early ({st.stopped})")
        unit = "cycle" if kind == "cycle" else "epoch"
        if self.sched is not None and t.scheduler_step_unit == unit:
            self._step_scheduler()

    def _curves_title(self) -> str:
        return f"{self.spec.run_name}: {self.spec.backend} {self.spec.task}, {self.dist.world} process(es)"

    def _kept(self) -> str:
        """What a diverged run leaves: the last checkpoint, only when one was written."""
        if self.layout.checkpoint.exists():
            return f"the last good checkpoint ({self.layout.checkpoint}) is kept"
        return "no checkpoint was written before it (check the data for NaN/inf labels or lower train.lr)"

    def _step_scheduler(self) -> None:
        import torch

        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if self.state.last_val_loss is not None:
                self.sched.step(self.state.last_val_loss)
        else:
            self.sched.step()
