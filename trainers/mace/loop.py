"""The training loop: train / finetune / resume, with exact resume from ``checkpoints/checkpoint.pt``.

Why resume is exact: the data order of epoch ``e`` is a pure function of ``(seed, e)``, so the
checkpoint only needs the position in it (epoch, updates done) next to model, optimizer,
scheduler, scaler, EMA, early-stop state and RNG states. Checkpoints are written at evaluation
points (every epoch, or every ``cycle_steps`` updates) and on preemption; a killed run redoes
the work since its last checkpoint and ends bit-identical on CPU.

Units: a micro-step is one backward on a micro-batch; an update is one ``optimizer.step()``
after ``accum_steps`` micro-steps; ``log_every``, ``cycle_steps`` and progress bars count updates.

Early stop and the plateau scheduler share one notion of progress: an evaluation "improves" when its
val loss is below the best so far. ``train.patience`` (null = 50) is ReduceLROnPlateau's patience;
``train.early_stop_factor`` stops training after ``ceil(early_stop_factor x patience)`` consecutive
evaluations without improvement (``launcher.core.schema.early_stop_evals``).
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from launcher.core.atomic import atomic_torch_save
from launcher.core.errors import ConfigError, TrainingDiverged
from launcher.core.metrics import sig
from launcher.core.schema import cuda_index, early_stop_evals, log_every_updates, plateau_patience
from trainers.mace.distributed import share_record
from trainers.mace.freeze import make_freeze
from trainers.mace.loop_checkpoint import Checkpointing, LoopState
from trainers.mace.loop_eval import Evaluation
from trainers.mace.optim import make_optimizer, make_scheduler, scheduler_length
from trainers.mace.order import epoch_order, rank_batches, seed_everything
from trainers.mace.replay_train import Micro, setup_replay
from trainers.mace.runlog import RunLog

__all__ = ["LoopState", "Trainer", "head_of", "progress_enabled", "select_device", "set_threads", "sig"]


def progress_enabled(setting: str, is_main: bool) -> bool:
    s = str(setting).lower()
    if not is_main or s == "false":
        return False
    return s == "true" or sys.stderr.isatty()


def select_device(spec: Any) -> Any:
    """``device``: cpu, cuda, cuda:N (the GPU with index N) or auto (cuda when available, else cpu)."""
    import torch

    if spec.device == "cpu":
        return torch.device("cpu")
    index = cuda_index(spec.device)
    if (spec.device == "cuda" or index is not None) and not torch.cuda.is_available():
        raise ConfigError(f"device: '{spec.device}' requested but no GPU is visible; set device=cpu (or auto)")
    if index is not None:
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device: '{spec.device}' requested but only {count} GPU(s) are visible "
                              f"(cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(n: Optional[int]) -> None:
    """torch's intra-op threads: the job's thread count, handed to the backend as a value
    (``ctx.extra["threads"]``, :func:`launcher.job.job_threads`); None leaves torch's own choice."""
    if n and int(n) > 0:
        import torch

        torch.set_num_threads(int(n))


def head_of(cfg: Dict[str, Any], head_key: str) -> str:
    from trainers.mace.model_config import heads_of

    heads = heads_of(cfg)
    if len(heads) == 1:
        return heads[0]
    if head_key not in heads:
        raise ConfigError(f"train.head_key: '{head_key}' is not a head of this model; its heads: {', '.join(heads)}")
    return head_key


class Trainer(Checkpointing, Evaluation):
    """One training run in one process (one rank of a DDP run)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.spec, self.layout = ctx, ctx.spec, ctx.layout

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything before the first update; each step a method of its own (the order matters)."""
        from trainers.mace import graphs, stream
        from trainers.mace.model_config import heads_of

        spec, t = self.spec, self.spec.train
        self._start_process()
        self.ckpt = self._checkpoint_to_resume()
        train_idx = stream.split_indices(spec, "train", active=True)
        val_idx = stream.split_indices(spec, "val", active=False) if spec.data.val else np.zeros(0, dtype=np.int64)
        if self.main:
            graphs.record_indices(self.layout.indices_json(), {"train": train_idx, "val": val_idx})
        if len(train_idx) < self.dist.world:
            raise ConfigError(f"data.train: {len(train_idx)} structures for {self.dist.world} processes")
        seed_everything(self.seed)
        cfg, model, sample = self._starting_model(train_idx)
        self.cfg = cfg
        if sample is not None:   # an early, clear error for the common case; streaming checks every entry
            graphs.check_elements(sample, cfg["atomic_numbers"], what=f"data.train ({spec.data.train})")
        self.heads = heads_of(cfg)
        self.head = head_of(cfg, t.head_key)
        self.replay = setup_replay(self, model.to(self.device))   # before any update: fps reads the base model
        self.model = self._accelerated(model.to(self.device))
        self.train_graphs, self.val_graphs = self._graph_sources(train_idx, val_idx, sample)
        self.n_train_structures = len(train_idx)
        self.train_idx = train_idx
        self.freeze = self._make_freeze()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._optimization(params)
        self.state = LoopState()
        self._restore(self.ckpt)
        self.log.open_sinks(spec, self.state.update_step, resumed=self.ckpt is not None)
        if self.main:
            from trainers.mace.model_config import save_model_json

            save_model_json(cfg, self.layout.model_json)
        self._describe(params)

    def _start_process(self) -> None:
        """Threads, device, process group, run log, dtype, amp, seed and bars of this process."""
        import torch

        from trainers.mace import distributed
        from trainers.mace.heap import hold_freed_memory

        spec, t = self.spec, self.spec.train
        set_threads(self.ctx.extra.get("threads"))
        self.device = select_device(spec)
        self.dist = distributed.setup(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.ctx.extra.get("follower"):
            self.ctx.resume = False
        self.ctx.resume = bool(self.dist.broadcast_object(self.ctx.resume))
        self.main = self.dist.is_main
        self.log = RunLog(self.layout, self.main)
        held = hold_freed_memory()
        if held:
            self.log.info(held)
        self.dtype = torch.float64 if t.dtype == "float64" else torch.float32
        torch.set_default_dtype(self.dtype)
        if t.amp and self.device.type != "cuda":
            warnings.warn("train.amp: autocast is CUDA-only; training on CPU without it", stacklevel=2)
            self.log.info("train.amp: ignored on CPU (CUDA-only)")
        self.amp = bool(t.amp and self.device.type == "cuda")
        if self.amp:
            from trainers.mace.amp import describe

            self.log.info(describe(self.device, self.amp))
        self.seed = spec.effective_seed
        self.progress = progress_enabled(t.progress_bar, self.main)
        self.log.bars = self.progress

    def _checkpoint_to_resume(self) -> Optional[Dict[str, Any]]:
        """The training checkpoint this run continues from (its own, or model_in's for task=resume), or None."""
        from trainers.mace.model_io import load_checkpoint, load_model

        spec = self.spec
        if self.ctx.resume and self.layout.checkpoint.exists():
            return load_checkpoint(self.layout.checkpoint)
        if spec.task == "resume" and not self.layout.checkpoint.exists():
            if spec.model_in or spec.model.manifest:
                loaded = load_model(spec, prefer="checkpoint")
                if loaded.checkpoint is None:
                    raise ConfigError(f"model_in: task=resume needs a training checkpoint (checkpoint.pt), got {loaded.source}")
                return loaded.checkpoint
            raise ConfigError(f"run_dir: {self.layout.root} holds no checkpoint to resume")
        return None

    def _starting_model(self, train_idx: np.ndarray) -> tuple:
        """(model config, model, statistics sample or None): from the checkpoint, a new model (train) or the
        base model (finetune); sets ``source`` and ``statistics``."""
        from trainers.mace import stream
        from trainers.mace.model_config import build_model, load_model_json, resolve
        from trainers.mace.model_io import load_model

        spec, t, ckpt = self.spec, self.spec.train, self.ckpt
        if ckpt is not None:
            cfg = ckpt["model_config"]
            model = build_model(cfg, self.dtype)
            model.load_state_dict(ckpt["model"])
            self.source = ckpt.get("source", "checkpoint")
            self.statistics = ckpt.get("statistics") or {"from": "checkpoint"}
            return cfg, model, None
        if spec.task == "train":
            t0 = time.time()
            raw = load_model_json(t.input_json)
            want_nbrs = raw.get("avg_num_neighbors") is None
            sample, pos, n, avg = stream.stats_sample(spec, train_idx, r_max=raw["r_max"] if want_nbrs else None,
                                                      num_workers=t.num_workers, progress=self.progress)
            if want_nbrs:   # counted by the workers, as model_config.avg_num_neighbors counts it
                raw = {**raw, "avg_num_neighbors": avg}
            cfg = resolve(raw, sample, source=t.input_json)
            self.statistics = {"from": "training data", "sample": int(len(pos)), "of": int(n),
                               "seed": int(spec.effective_seed), "limit": int(spec.data.stats_samples)}
            self.log.info(f"statistics (E0s, avg_num_neighbors, scale/shift) from {len(pos)} of {n} training "
                          f"structures{' (all)' if len(pos) == n else f' (seeded sample; data.stats_samples={spec.data.stats_samples})'} "
                          f"in {time.time() - t0:.1f}s")
            self.source = "init"
            return cfg, build_model(cfg, self.dtype), sample
        loaded = load_model(spec)   # finetune
        self.source = loaded.source
        self.statistics = {"from": f"base model {loaded.source}"}
        for note in loaded.notes:   # what loading decided (weights checked, heads added ...)
            self.log.info(note)
        return loaded.config, loaded.model, None

    def _make_freeze(self) -> Any:
        """``train.freeze``: the object that keeps frozen weights as they were after each update (None: off)."""
        from trainers.mace import graphs

        t = self.spec.train
        return make_freeze(t, self.model, lambda: graphs.collate(
            [self.train_graphs[i] for i in range(min(len(self.train_graphs), t.batch_size))]).to(self.device),
            len(self.heads), self.log.info)

    def _optimization(self, params: List[Any]) -> None:
        """Optimizer, scheduler, gradient scaler, EMA, loss, DDP / compile wrappers, log and stop cadence."""
        import torch

        from trainers.mace.amp import needs_scaler

        spec, t = self.spec, self.spec.train
        self.opt = make_optimizer(spec, params)
        n_batches = len(rank_batches(np.arange(len(self.train_graphs)), t.batch_size, t.drop_last, self.dist.rank, self.dist.world))
        if n_batches == 0:
            raise ConfigError(f"train.batch_size: {t.batch_size} leaves no full batch of {len(self.train_graphs)} structures with drop_last")
        self.updates_per_epoch = math.ceil(n_batches / t.accum_steps)
        self.sched = make_scheduler(spec, self.opt, scheduler_length(spec, self.updates_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler(self.device, self.amp) else None
        self.ema = None
        if t.ema_decay:
            from torch_ema import ExponentialMovingAverage

            self.ema = ExponentialMovingAverage(params, decay=t.ema_decay)
        self.loss_fn = make_loss(t).to(self.device)
        self.compute_force = t.force_weight > 0
        # the stress term needs the cell's gradient too (more time per step): only when it is weighted
        self.compute_stress = t.stress_weight > 0
        self.ddp_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if t.compile:
            from trainers.mace.compile import compile_module

            self.ddp_model = compile_module(self.ddp_model)
        self.log_every = log_every_updates(t, self.updates_per_epoch)
        self.stop_after = early_stop_evals(t)  # None: no early stop

    def _restore(self, ckpt: Optional[Dict[str, Any]]) -> None:
        """The training state of ``ckpt`` (and the logs cut back to it), or fresh logs."""
        if ckpt is None:
            self.log.truncate_after(0)
            self.log.truncate_shares(0)
            return
        self._load_training_state(ckpt)
        if self.sched is not None:
            from trainers.mace.optim import stretch_schedule

            note = stretch_schedule(self.sched, self.opt, scheduler_length(self.spec, self.updates_per_epoch))
            if note:
                self.log.info(note)
        self.log.truncate_after(self.state.update_step)
        self.log.truncate_shares(self.state.epoch)
        self.log.info(f"resumed from {self.layout.checkpoint if self.ctx.resume else self.spec.model_in}: "
                      f"epoch {self.state.epoch}, update {self.state.update_step}")

    def _describe(self, params: List[Any]) -> None:
        import torch

        spec, t = self.spec, self.spec.train
        nparams = sum(p.numel() for p in self.model.parameters())
        ntrain = sum(p.numel() for p in params)
        self.log.info(f"task={spec.task} model={self.source} params={nparams} trainable={ntrain} head={self.head} "
                      f"train={len(self.train_graphs)} val={len(self.val_graphs)} dtype={t.dtype} device={self.device} "
                      f"world={self.dist.world} threads={torch.get_num_threads()} updates/epoch={self.updates_per_epoch} "
                      f"optimizer={t.optimizer} lr={t.lr:g} weight_decay={t.weight_decay:g} batch_size={t.batch_size} "
                      f"accum_steps={t.accum_steps} amp={t.amp}")
        if self.stop_after is not None:
            self.log.info(f"early stop after {self.stop_after} evaluations without val improvement "
                          f"(early_stop_factor {t.early_stop_factor} x patience {plateau_patience(t)})")

    def _accelerated(self, model: Any) -> Any:
        """``model`` (e3nn form) prepared for torch.compile (``train.compile``) and converted to the kernels
        ``train.kernels`` picks; ``self.e3nn`` gives its weights back in e3nn form for every save."""
        from trainers.mace import kernels

        t = self.spec.train
        self.kernels, why = kernels.choose(t.kernels, self.device, lora=t.freeze == "lora")
        self.log.info(f"kernels: {self.kernels} ({why})")
        prepared = bool(t.compile and self.kernels == "e3nn")   # cueq/oeq modules need no e3nn preparation
        if prepared:
            from trainers.mace.compile import prepare_model

            model = prepare_model(self.cfg, model).to(self.device)
        model = kernels.convert(model, self.kernels, self.device)
        self.e3nn = kernels.E3nnForm(model, self.kernels, prepared_from=self.cfg if prepared else None)
        return model

    def _graph_sources(self, train_idx: np.ndarray, val_idx: np.ndarray, sample: Optional[List[Any]]) -> tuple:
        """Train and val graphs as streamed datasets, or graph caches that keep what the first epoch (and the
        first evaluation) builds (``data.cache``): no pass over the data before the first update."""
        from trainers.mace import stream
        from trainers.mace.graph_cache import ESTIMATE_SAMPLE, GraphCache, estimate_bytes

        spec, t = self.spec, self.spec.train
        tp = stream.trust_pickles(spec)
        train = stream.SplitGraphs(spec.data.train, train_idx, self.cfg["atomic_numbers"], self.cfg["r_max"],
                                   self.heads, self.head, what=f"data.train ({spec.data.train})", trust_pickles=tp)
        val = stream.SplitGraphs(spec.data.val, val_idx, self.cfg["atomic_numbers"], self.cfg["r_max"], self.heads,
                                 self.head, what=f"data.val ({spec.data.val})", trust_pickles=tp) \
            if spec.data.val else []
        n = len(train) + -(-len(val) // self.dist.world)   # each rank keeps its share of val, all of train
        # the estimate builds a few graphs here: only when it decides something
        probe = [] if spec.data.cache == "none" else \
            [train[int(j)] for j in stream.stats_positions(len(train), ESTIMATE_SAMPLE, self.seed)]
        per_graph = estimate_bytes(probe, t.batch_size)
        decision = stream.decide_cache(spec.data.cache, spec.data.cache_budget_gb, per_graph, n)
        self.cache = decision.cache
        how = "cached in memory as the first epoch streams" if decision.cache else "streamed"
        size = f"~{per_graph / 1024:.1f} kB each, " if probe else ""
        self.log.info(f"graphs: {how} ({decision.reason}; {len(train)} train + {len(val)} val, {size}"
                      f"num_workers={t.num_workers})")
        if not decision.cache:
            return train, val
        budget = spec.data.cache_budget_gb * 1e9 if spec.data.cache == "auto" else None   # shared pro rata
        keep = [GraphCache(s, limit_bytes=None if budget is None else budget * min(len(s) / max(n, 1), 1.0),
                           note=self.log.info) for s in (train, val) if len(s)]
        return keep[0], (keep[1] if len(keep) > 1 else [])

    # ------------------------------------------------------------------ training
    def _update(self, micro: List[Any]) -> float:
        """One optimizer update over the (collated) micro-batches of ``micro``, and their replay micro-batches
        (``micro.replay``, each its own pass weighted by ``data.replay.weight``). Returns the update's loss."""
        import torch

        t = self.spec.train
        self.opt.zero_grad(set_to_none=True)
        replay = getattr(micro, "replay", None)
        passes = [(b, 1.0) for b in micro] if not replay else \
            [p for b, r in zip(micro, replay) for p in ((b, 1.0), (r, self.replay.weight))]
        total = 0.0
        for j, (batch, weight) in enumerate(passes):
            # gradients are averaged across ranks once per update: on its last backward
            sync = self.dist.enabled and j < len(passes) - 1
            with (self.ddp_model.no_sync() if sync else _null()):
                total += self._backward(batch, weight, len(micro))
        if self.dist.any(not math.isfinite(total)):   # every rank joins the vote, or the others hang in it
            raise TrainingDiverged(f"train: loss is not finite at epoch {self.state.epoch + 1} update "
                                   f"{self.state.update_step + 1}; stopped, {self._kept()}")
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if t.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=t.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.freeze is not None:
            self.freeze.restore()
        if self.ema is not None:
            self.ema.update()
        return total

    def _backward(self, batch: Any, weight: float, n_micro: int) -> float:
        """Forward and backward of one micro-batch, its loss x ``weight`` / ``n_micro``; that loss."""
        from trainers.mace.amp import as_float32, autocast

        batch = batch.to(self.device)
        data = batch.to_dict()
        if self.spec.train.compile:   # the model sets it too, but inside a compiled graph that is too late
            data["positions"].requires_grad_(True)
        with autocast(self.device, self.amp):
            out = self.ddp_model(data, training=True, compute_force=self.compute_force,
                                 **({"compute_stress": True} if self.compute_stress else {}))
        loss = self.loss_fn(pred=as_float32(out) if self.amp else out, ref=batch)
        loss = (loss if weight == 1.0 else loss * weight) / n_micro
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return float(loss.detach())

    def _groups(self, groups: List[List[List[int]]], start: int):
        """Collated micro-batches of updates ``start..``; streaming, ``train.num_workers`` read and build them
        ahead in worker processes (with the cache, workers build only what it does not hold yet)."""
        from trainers.mace.stream import loader

        flat = [idx for g in groups[start:] for idx in g]
        # cached graphs are collated here (workers only build the missing ones): a forked worker touching the
        # cache would copy its pages
        it = loader(self.train_graphs, flat, num_workers=self.spec.train.num_workers)
        rit = None
        if self.replay is not None:   # replay micro-batch c0 + m joins micro-batch m of this feed
            c0 = self.state.replay_batches
            rit = loader(self.replay.train, [self.replay.feed.batch(c0 + m) for m in range(len(flat))],
                         num_workers=self.spec.train.num_workers)
        try:
            for g in groups[start:]:
                micro = Micro(next(it) for _ in g)
                if rit is not None:
                    micro.replay = [next(rit) for _ in g]
                yield micro
        finally:   # workers stop when the epoch's feed is closed, not whenever it is collected
            it.close()
            if rit is not None:
                rit.close()

    def _log_progress(self, loss: float, structures: int) -> None:
        """The ``train.log_every`` line: step, epoch, loss, lr and throughput since the last such line."""
        now = time.time()
        self._window[1] += structures
        if self.state.update_step % self.log_every:
            return
        t0, n, waited = self._window
        span = max(now - t0, 1e-9)
        rate = n * self.dist.world / span  # every rank trains on equally many structures
        lr = self.opt.param_groups[0]["lr"]
        st = self.state
        self.log.metrics({"epoch": st.epoch + 1, "step": st.update_step, "split": "train", "loss": loss, "lr": lr,
                          "throughput": rate, "data_wait": waited / span})
        self.log.info(f"train step={st.update_step} epoch={st.epoch + 1}/{self.spec.train.epochs} loss={sig(loss)} "
                      f"lr={lr:.4g} throughput={sig(rate)} structures/s data_wait={100 * waited / span:.1f}%")
        self._window = [time.time(), 0, 0.0]

    def train(self) -> Dict[str, Any]:
        t, st = self.spec.train, self.state
        cycles = t.cycle_steps > 0
        t_start = time.time()
        while st.epoch < t.epochs and not st.stopped:
            te, wait = self._run_epoch(cycles)
            if st.stopped:
                break
            st.epoch += 1
            st.updates_in_epoch = 0
            took = time.time() - te
            self.log.info(f"epoch {st.epoch}/{t.epochs} done in {took:.2f} s (data wait {wait:.2f} s = "
                          f"{100 * wait / max(took, 1e-9):.1f}% of it, after the first batch)")
            if self.cache:
                self.log.info(self.train_graphs.status())
            if not cycles:
                self.evaluate_point("epoch")
                if st.eval_count % t.save_every == 0 or st.stopped or st.epoch == t.epochs:
                    self.save_checkpoint()
            elif self.sched is not None and t.scheduler_step_unit == "epoch":
                self._step_scheduler()
        if getattr(self, "_saved_at", None) != st.update_step:
            self.save_checkpoint()
        if self.main and not self.layout.best_model.exists():
            with self._ema_weights():
                atomic_torch_save(self.e3nn.state_dict(self.model), self.layout.best_model)
        self.log.info(f"training done: {st.epoch} epochs, {st.update_step} updates, best loss {sig(st.best_loss)} "
                      f"(epoch {st.best_epoch}) in {time.time() - t_start:.1f}s")
        if math.isfinite(st.best_loss):
            self.log.summary({"best/loss": st.best_loss, "best/epoch": st.best_epoch, "best/step": st.best_step,
                              **{f"best/{k}": v for k, v in st.best_metrics.items() if k != "loss"}})
        self.log.curves(self._curves_title())
        self._finished = True
        return {"epochs_done": st.epoch, "update_steps": st.update_step, "best_loss": st.best_loss,
                "best_epoch": st.best_epoch, "best_metrics": st.best_metrics, "stopped_early": st.stopped or None}

    def _run_epoch(self, cycles: bool) -> tuple:
        """The updates of the current epoch from where it stands (evaluating each cycle when ``cycles``);
        (start time, seconds waited for data after the first batch)."""
        from launcher.core import preemption

        t, st = self.spec.train, self.state
        order = epoch_order(self.seed, st.epoch, len(self.train_graphs))
        batches = rank_batches(order, t.batch_size, t.drop_last, self.dist.rank, self.dist.world)
        # every rank's share of the epoch, gathered into logs/shares.jsonl (one collective per epoch)
        mine = self.train_idx[np.asarray([i for b in batches for i in b], dtype=np.int64)]
        self.log.shares(self.dist.gather_object(share_record(st.epoch + 1, self.dist.rank, self.dist.world, mine)))
        groups = [batches[i:i + t.accum_steps] for i in range(0, len(batches), t.accum_steps)]
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(groups), initial=st.updates_in_epoch, desc=f"epoch {st.epoch + 1}/{t.epochs}",
                       unit="step", mininterval=t.progress_mininterval, leave=False)
        te = time.time()
        self._window = [te, 0, 0.0]   # (start, structures, data wait) since the last log_every line
        wait = 0.0               # seconds this rank waited for its next batch (data loading not hidden)
        feed = self._groups(groups, st.updates_in_epoch)
        u = first = st.updates_in_epoch
        while True:
            tw = time.perf_counter()
            micro = next(feed, None)
            if micro is None:
                break
            if u > first:   # the first batch of an epoch always waits (worker start-up)
                dt = time.perf_counter() - tw
                wait += dt
                self._window[2] += dt
            u += 1
            self.model.train()
            loss = self._update(micro)
            st.update_step += 1
            st.updates_in_epoch = u
            st.replay_batches += len(micro) if self.replay is not None else 0
            st.train_sums[0] += loss
            st.train_sums[1] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self._log_progress(loss, sum(int(b.ptr.numel()) - 1 for b in micro))
            if cycles and st.update_step % t.cycle_steps == 0:
                self.evaluate_point("cycle")
                if st.eval_count % t.save_every == 0 or st.stopped:
                    self.save_checkpoint()
                if st.stopped:
                    break
                self._window = [time.time(), 0, 0.0]  # evaluation time is not training throughput
            if self.dist.any(preemption.preemption_requested()):
                self.save_checkpoint()
                self.log.info(f"preempted at epoch {st.epoch + 1} update {st.update_step}: checkpoint written")
                raise preemption.Preempted()
        feed.close()
        if bar is not None:
            bar.close()
        return te, wait

    def close(self) -> None:
        if hasattr(self, "log"):
            self.log.close(ok=getattr(self, "_finished", False))
        if getattr(self, "ddp_model", None) is not getattr(self, "model", None):
            # DDP's reducer holds the process group: freed after destroy_process_group, gloo's destructor can
            # wait forever on its worker threads (a rank that never exits). Free it while the group is alive.
            import gc

            self.ddp_model = self.model
            gc.collect()
        self.dist.close()


def make_loss(t: Any) -> Any:
    """mace's own weighted loss: energy (per atom) + forces, and the stress term when ``train.stress_weight`` > 0
    (``WeightedEnergyForcesStressLoss``: per-structure ``stress_weight`` 0 leaves unlabelled structures out)."""
    from mace.modules.loss import WeightedEnergyForcesLoss, WeightedEnergyForcesStressLoss

    if t.stress_weight > 0:
        return WeightedEnergyForcesStressLoss(energy_weight=t.energy_weight, forces_weight=t.force_weight,
                                              stress_weight=t.stress_weight)
    return WeightedEnergyForcesLoss(energy_weight=t.energy_weight, forces_weight=t.force_weight)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
