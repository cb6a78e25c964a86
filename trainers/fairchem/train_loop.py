"""FairChem 1.10's training loop (``OCPTrainer.train``), one iteration per optimizer update.

Runs inside the FairChem environment (stdlib + torch + FairChem; never the launcher). Installed by
:func:`patches.install_training_options`, which guards it on the FairChem version it was copied from: it adds
micro-batch groups (``--accum-steps``), the early stop and the progress line to FairChem's own loop and otherwise
trains exactly as that loop does, except that it always ends with the final training state on disk.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time


class Batches:
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


def announce(options, line):
    """One line on stdout (the launcher's console and FairChem log) and in the progress log."""
    print(line, flush=True)
    if options.progress_log:
        with open(options.progress_log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


class _Run:
    """One call of the loop: its schedule (in optimizer updates) and what it tracks beside the trainer's own state."""

    def __init__(self, trainer, options, state):
        from fairchem.core.common import distutils
        from torch.nn.parallel import DistributedDataParallel

        self.options, self.state = options, state
        self.accum = options.accum_steps
        self.n_batches = len(trainer.train_loader)
        self.per_epoch = math.ceil(self.n_batches / self.accum)  # optimizer updates (FairChem steps) per epoch
        self.eval_every = trainer.config["optim"].get("eval_every", self.per_epoch)
        self.checkpoint_every = trainer.config["optim"].get("checkpoint_every", self.eval_every)
        self.master = distutils.is_master()
        self.world = distutils.get_world_size()
        self.ddp = isinstance(trainer.model, DistributedDataParallel)
        self.primary_metric = None
        self.progress = None
        self.bad = 0
        self.stopped = False
        self.saved_step = None
        self.val_metrics = None


def _primary_metric(trainer):
    """FairChem's primary metric; a new one (or a first training) restarts the best value."""
    primary_metric = trainer.evaluation_metrics.get("primary_metric",
                                                    trainer.evaluator.task_primary_metric[trainer.name])
    if not hasattr(trainer, "primary_metric") or trainer.primary_metric != primary_metric:
        trainer.best_val_metric = 1e9 if "mae" in primary_metric else -1.0
        return primary_metric
    return trainer.primary_metric


def _restore_position(trainer, run):
    """A checkpoint saved with another ``--accum-steps`` counts other steps: its position is recomputed from its
    epoch; the early stop's count of bad validations carries on."""
    resumed = getattr(trainer, "_mlip_resumed", None) or {}
    saved_accum = int(resumed.get("accum_steps", 1))
    if trainer.step and saved_accum != run.accum:
        done = int(round(float(trainer.epoch) * run.n_batches))  # micro-batches trained, from the saved epoch
        epoch_int, in_epoch = divmod(done, run.n_batches)
        step = epoch_int * run.per_epoch + in_epoch // run.accum
        if run.master:
            print(f"[mlip-launch] the checkpoint counts {saved_accum} micro-batch(es) per step, this run "
                  f"{run.accum}: step {trainer.step} -> {step} (epoch {float(trainer.epoch):.3f}); the lr scheduler "
                  "continues from its saved state", flush=True)
        trainer.step = step
    run.bad = int(resumed.get("bad_validations", 0))
    run.state["bad_validations"] = run.bad


def _update(trainer, run, batches, epoch_int, update):
    """One optimizer update: the micro-batches of its group, the gradient of their mean loss, one step."""
    import torch

    first, end = update * run.accum, min((update + 1) * run.accum, run.n_batches)
    trainer.step = epoch_int * run.per_epoch + update + 1
    progress = run.progress
    t0 = time.perf_counter()
    trainer.model.train()
    trainer.optimizer.zero_grad()
    for i in range(first, end):
        trainer.epoch = epoch_int + (i + 1) / run.n_batches
        last = i == end - 1
        batch = next(batches)
        # DDP: gradients are reduced once per update, on the last micro-batch
        with contextlib.nullcontext() if last or not run.ddp else trainer.model.no_sync():
            with torch.autocast("cuda", enabled=trainer.scaler is not None):
                out = trainer._forward(batch)
                loss = trainer._compute_loss(out, batch)
            trainer.metrics = trainer._compute_metrics(out, batch, trainer.evaluator, trainer.metrics)
            value = loss.item()
            trainer.metrics = trainer.evaluator.update("loss", value, trainer.metrics)
            progress.loss += value
            progress.batches += 1
            progress.structures += batch.natoms.numel()
            if end - first > 1:
                loss = loss / (end - first)
            loss = trainer.scaler.scale(loss) if trainer.scaler else loss
            if last:  # FairChem's backward + update (shared-parameter scaling, AMP, clipping, EMA)
                with _KeepGrads(trainer.optimizer):
                    trainer._backward(loss)
            else:
                loss.backward()
    progress.seconds += time.perf_counter() - t0


def _log_update(trainer, run):
    """FairChem's log line and logger record of an update, and our progress line."""
    log_dict = {k: trainer.metrics[k]["metric"] for k in trainer.metrics}
    log_dict.update({"lr": trainer.scheduler.get_lr(), "epoch": trainer.epoch, "step": trainer.step})
    if trainer.step % trainer.config["cmd"]["print_every"] == 0 and run.master:
        log_str = [f"{k}: {v:.2e}" for k, v in log_dict.items()]
        logging.info(", ".join(log_str))
        trainer.metrics = {}
    if trainer.logger is not None:
        trainer.logger.log(log_dict, step=trainer.step, split="train")
    if run.options.log_every and trainer.step % run.options.log_every == 0:
        if run.master:
            announce(run.options, run.progress.line(trainer.step, trainer.epoch, log_dict["lr"]))
        run.progress.reset()


def _validate(trainer, run, disable_eval_tqdm):
    """FairChem's validation (best checkpoint, relaxations) when due; the early stop's count of bad ones."""
    if trainer.val_loader is not None:
        best = trainer.best_val_metric
        run.val_metrics = trainer.validate(split="val", disable_tqdm=disable_eval_tqdm)
        trainer.update_best(run.primary_metric, run.val_metrics, disable_eval_tqdm=disable_eval_tqdm)
        if run.options.early_stop:
            metric = run.val_metrics[run.primary_metric]["metric"]
            better = metric < best if "mae" in run.primary_metric else metric > best
            run.bad = 0 if better else run.bad + 1
            run.state["bad_validations"] = run.bad
            run.stopped = run.bad >= run.options.early_stop
    if trainer.config["task"].get("eval_relaxations", False):
        if "relax_dataset" not in trainer.config["task"]:
            logging.warning("Cannot evaluate relaxations, relax_dataset not specified")
        else:
            trainer.run_relaxations()


def _after_update(trainer, run, disable_eval_tqdm):
    """Logging, checkpoint, validation and the lr scheduler after an update; True when the early stop ends the
    training (its checkpoint written)."""
    _log_update(trainer, run)
    if run.checkpoint_every != -1 and trainer.step % run.checkpoint_every == 0:
        trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
        run.saved_step = trainer.step
    if trainer.step % run.eval_every == 0:
        _validate(trainer, run, disable_eval_tqdm)
    if run.stopped:
        if run.master:
            announce(run.options, f"[mlip-launch] early stop: {run.bad} validations in a row without a better val "
                                  f"{run.primary_metric} (best {float(trainer.best_val_metric):.6g}); stopping at "
                                  f"step {trainer.step}, epoch {trainer.epoch:.3f}")
        trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
        run.saved_step = trainer.step
        return True
    if trainer.scheduler.scheduler_type == "ReduceLROnPlateau":
        if trainer.step % run.eval_every == 0:
            trainer.scheduler.step(metrics=run.val_metrics[run.primary_metric]["metric"])
    else:
        trainer.scheduler.step()
    return False


def make_train(options, state):
    """The loop as ``OCPTrainer.train``; ``state`` is what every training checkpoint carries for us
    (``accum_steps``, ``bad_validations``), updated as the loop goes."""

    def train(self, disable_eval_tqdm: bool = False) -> None:
        import torch
        from fairchem.core.modules.scaling.util import ensure_fitted

        ensure_fitted(self._unwrapped_model, warn=True)
        run = _Run(self, options, state)
        run.primary_metric = _primary_metric(self)
        self.metrics = {}
        _restore_position(self, run)
        if options.early_stop and self.val_loader is None and run.master:
            print(f"[mlip-launch] --early-stop {options.early_stop}: no validation set, so no early stop", flush=True)
        run.progress = _Progress(options, run.world)
        run.saved_step = self.step   # the newest step whose training state is on disk (a resumed one's is)
        for epoch_int in range(self.step // run.per_epoch, self.config["optim"]["max_epochs"]):
            skip_updates = self.step % run.per_epoch
            self.train_sampler.set_epoch_and_start_iteration(epoch_int, skip_updates * run.accum)
            batches = iter(self.train_loader)
            for update in range(skip_updates, run.per_epoch):
                _update(self, run, batches, epoch_int, update)
                if _after_update(self, run, disable_eval_tqdm):
                    break
            torch.cuda.empty_cache()
            if run.stopped:
                break
            if run.checkpoint_every == -1:
                self.save(checkpoint_file="checkpoint.pt", training_state=True)
                run.saved_step = self.step
        if self.step != run.saved_step:   # the steps since the last checkpoint (all of them when none fell due)
            if run.master:
                print(f"[mlip-launch] step {self.step}: no checkpoint fell due since step {run.saved_step} (optim."
                      f"checkpoint_every {run.checkpoint_every}); saving the final training state", flush=True)
            self.save(checkpoint_file="checkpoint.pt", training_state=True)

    return train


def ensure_progress_log(options):
    """The progress log's folder, made before the first line."""
    if options.progress_log:
        os.makedirs(os.path.dirname(os.path.abspath(options.progress_log)), exist_ok=True)
