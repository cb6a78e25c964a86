"""MaceBackend: the core MACE trainer behind the Backend interface.

No torch/mace import at module level: preflight imports this module to check specs cheaply.
Every task sets torch's default dtype (``train.dtype``) for its duration and restores it.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Dict, List

from launcher.core.errors import ConfigError
from trainers.api import BackendBase, JobContext, run_task
from trainers.mace.safe_load import MODEL_GLOBALS

# e3nn's TorchScript compilation warns once per block on torch 2.13: noise, not a problem
warnings.filterwarnings("ignore", message=r"The TorchScript type system")
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")


@contextlib.contextmanager
def _default_dtype(name: str):
    import torch

    old = torch.get_default_dtype()
    from trainers.mace.model_config import torch_dtype

    torch.set_default_dtype(torch_dtype(name))
    try:
        yield
    finally:
        torch.set_default_dtype(old)


#: The eval.objective names a MACE training records in logs/metrics.jsonl (its validation metrics).
OBJECTIVES = ("val_loss", "val_energy_rmse_per_atom", "val_energy_mae_per_atom", "val_force_rmse", "val_force_mae",
              "val_stress_rmse", "val_stress_mae")

#: Keys the core trainer has no use for, and why (the docs table). They are other backends' ``own_keys``:
#: preflight refuses them for backend=mace without this backend naming them in its check.
REFUSED = {
    "train.config_yml": "a FairChem config; the core trainer takes train.input_json",
    "train.identifier": "names FairChem runs; a MACE run is named by run_dir / name",
    "backend_python": "the interpreter of a native backend; MACE trains in the launcher's own process",
    "backend_env": "environment of a native backend's process; MACE trains in the launcher's own process",
    "backend_args": "command-line arguments of a native backend; MACE has none",
}

#: How the core trainer honours each run key (docs/schema.md's backend table).
KEY_DOCS = {
    "train.input_json": "model.json (mace_run_train names, or the original implementation's form); required for "
                        "task=train; on finetune it may add heads",
    "train.epochs": "epochs to train (resume: the total to reach)",
    "train.batch_size": "structures per micro-batch and process",
    "train.num_workers": "DataLoader workers",
    "train.seed": "seed of the model init, shuffling and sampling (else seed)",
    "train.lr": "the optimizer's learning rate",
    "train.weight_decay": "the optimizer's weight decay",
    "train.optimizer": "adam (amsgrad, as mace_run_train), adamw, sgd",
    "train.amp": "CUDA autocast to bfloat16 (float16 with a gradient scaler where the GPU lacks bfloat16), loss and "
                 "optimizer state in float32; needs train.dtype=float32; on CPU (mace-torch's e3nn tensor products fail "
                 "under CPU autocast) a warning and train.log's amp line, no autocast, as on FairChem",
    "train.accum_steps": "micro-batches per optimizer update",
    "train.max_grad_norm": "gradient clipping per update",
    "train.save_every": "checkpoint every N epochs (or cycles)",
    "train.log_every": "a progress line (step, epoch, loss, lr, structures/s) on the console and in train.log",
    "train.progress_bar": "tqdm bars",
    "train.logger": "tensorboard: events in logs/tensorboard/ (train/loss, val/loss, val/<metric>, lr, throughput, "
                    "data_wait, epoch; per optimizer step, rank 0); wandb: the same scalars in a wandb run under "
                    "logs/wandb/ (offline unless WANDB_MODE is set), best metrics in its summary; none: neither",
    "train.wandb_project": "the wandb run's project (train.logger=wandb)",
    "train.progress_mininterval": "refresh interval of every bar of the run",
    "train.freeze": "head_only: only the readout of train.head_key trains; lora: low-rank adapters per irrep path "
                    "on the e3nn o3.Linear layers of train.lora_blocks train, the base weights stay bit for bit; "
                    "best_model.pt, checkpoints' model and exports hold the adapters merged (plain mace models); "
                    "needs e3nn kernels, refused with train.compile",
    "train.lora_rank": "rank of the adapters (train.freeze=lora)",
    "train.lora_alpha": "the adapters' update scale, lora_alpha / lora_rank (train.freeze=lora)",
    "train.lora_blocks": "all, or which of interactions, products, readouts get adapters (train.freeze=lora)",
    "train.energy_weight": "weight of the energy term of the loss",
    "train.force_weight": "weight of the force term of the loss",
    "train.stress_weight": "weight of the stress term of the loss (mace's WeightedEnergyForcesStressLoss; structures "
                           "without stress weigh 0); > 0 with no stress in data.train is refused; val records, "
                           "evaluate and the sweep summary report stress_rmse/stress_mae (eV/Å^3) when the data has "
                           "stress",
    "train.head_key": "head of a multi-head model to train / evaluate / export",
    "train.early_stop_factor": "stop after ceil(factor x patience) evaluations without val improvement",
    "train.patience": "ReduceLROnPlateau's patience (null: 50)",
    "train.scheduler": "plateau, cosine, step or none",
    "train.scheduler_step_unit": "scheduler step per epoch or per cycle",
    "train.cycle_steps": "updates per cycle; evaluation and checkpoint each cycle",
    "train.drop_last": "drop the last incomplete batch",
    "train.dtype": "float64 or float32 model and data",
    "train.ema_decay": "exponential moving average of the weights",
    "train.kernels": "mace-torch's converters turn the e3nn module into its cuEquivariance / OpenEquivariance form "
                     "for train / finetune / resume / evaluate / infer; weights stored in e3nn form; auto: cueq on "
                     "CUDA with cuEquivariance's GPU ops, else e3nn (train.log says which and why); an explicit choice "
                     "whose packages are missing is refused with the install command",
    "train.compile": "torch.compile of the training forward (mace.tools.compile preparation, dynamic shapes)",
    "data.batch_size": "batch size of evaluate / infer",
    "data.cache": "none: train/val graphs streamed per batch by train.num_workers (each rank reads its share); "
                  "memory: the graphs the first epoch builds (streaming) are kept for later epochs; auto: memory "
                  "if the estimate fits data.cache_budget_gb",
    "data.cache_budget_gb": "the memory budget of data.cache=auto (per process; the cache stops growing there)",
    "data.trust_pickles": "LMDB records read without the allow-list of data classes",
    "data.stats_samples": "size of the seeded sample of the training split that E0s, scale/shift and "
                          "avg_num_neighbors of a new model come from (task=train, new heads of a finetune)",
    "eval.energy_only": "energies only in evaluate / infer",
    "eval.amp": "as train.amp, in evaluate / infer",
    "eval.split": "the split evaluate / infer read",
    "eval.group_by": "eval/errors_by_group.csv and metrics.json by_group from this key of each structure's info",
    "eval.heads": "each named head of the model on its own data: eval/heads/<head>/ (the eval files), "
                  "eval/metrics_by_head.csv; a fine-tuned model's base model (its manifest's base_model) on the "
                  "heads it has: eval/compare_base_by_head.csv and the console table",
    "eval.objective": "not used by the run: an Optuna sweep reads it from logs/metrics.jsonl "
                      f"({', '.join(OBJECTIVES)}) or eval/metrics.json (evaluate)",
    "data.replay.paths": "replay of pretraining structures in a finetune (trainers/mace/replay_train.py): their own "
                         "loss pass per micro-batch, errors of held-out records as split replay",
    "data.replay.select": "random, or fps on the base model's invariant node descriptors (mean per structure)",
    "data.replay.head": "the head replay structures train (a multi-head model; default its first)",
    "data.replay.max_samples": "replay structures selected (cached in run_dir/replay/selection.json)",
    "data.replay.pool": "candidates read for the selection (fps: one descriptor vector each in memory)",
    "data.replay.val_samples": "held-out replay records scored at every evaluation (split replay)",
    "data.replay.ratio": "replay structures per micro-batch: max(1, round(ratio x train.batch_size))",
    "data.replay.weight": "micro-batch loss = fine-tune loss + weight x replay loss",
    "device": "cpu, cuda, cuda:N or auto",
    **{k: f"refused: {v}" for k, v in REFUSED.items()},
}


def stress_problems(spec: Any) -> List[str]:
    """``train.stress_weight > 0`` with training data that holds no stress: one line before anything runs.
    Looks at the first, middle and last record of ``data.train`` (:func:`data.datasets.sample_carries`), so a
    dry run imports no torch. Unreadable data is preflight's own report, not this one's."""
    from launcher.core.schema import TRAINING_TASKS

    t = spec.train
    if not (t.stress_weight > 0) or spec.task not in TRAINING_TASKS or not spec.data.train:
        return []
    from data.datasets import sample_carries

    carries, picks = sample_carries(spec.data.train, "stress", spread=True,
                                    trust_pickles=bool(spec.data.trust_pickles))
    if carries is not False:
        return []
    return [f"train.stress_weight: {t.stress_weight:g} needs stress labels, but data.train ({spec.data.train}) has "
            f"none (entries {', '.join(map(str, picks))} checked); convert the data with launch-data convert "
            "--stress-key KEY, or set train.stress_weight=0"]


def resume_source_problems(spec: Any) -> List[str]:
    """``task=resume`` from a manifest alone: the core trainer resumes from a training checkpoint, which a
    manifest does not bring (preflight drops this line when the manifest itself is already reported)."""
    if not (spec.task == "resume" and spec.model.manifest and not spec.model_in and spec.run_dir):
        return []
    from launcher.core.layout import RunLayout

    if RunLayout.of(spec.run_dir).checkpoint.exists():
        return []
    return ["model.manifest: task=resume needs a training checkpoint (model_in=.../checkpoint.pt or a run_dir "
            "holding one); a manifest brings weights only: use task=finetune to start from it"]


def kernel_problems(spec: Any) -> List[str]:
    """``train.kernels`` (unknown value, or packages missing: the install command) and ``train.amp`` /
    ``eval.amp`` (see trainers/mace/amp.py): one line each."""
    from trainers.mace import amp, kernels

    out = amp.problems(spec)
    if spec.task != "export":    # export writes e3nn form whatever the kernels
        out += kernels.preflight_problems(spec.train.kernels)
    return out


def _evaluated(spec: Any) -> str:
    """What an evaluate reads: ``data.<eval.split>`` and / or the heads of ``eval.heads``."""
    parts = [f"data.{spec.eval.split}"] if getattr(spec.data, spec.eval.split) else []
    if spec.eval.heads:
        parts.append(f"heads {', '.join(spec.eval.heads)} (eval.heads)")
    return " and ".join(parts)


class MaceBackend(BackendBase):
    """The core MACE trainer behind the backend contract (``trainers.api.BackendBase``)."""

    name = "mace"
    model_globals = MODEL_GLOBALS   # what a model file may name (preflight: launcher.model_files)
    key_docs = KEY_DOCS
    objectives = OBJECTIVES
    own_keys = {"train.input_json": "a MACE model.json"}
    distributed = True   # every rank of a multi-process job calls run(); ranks > 0 with ctx.extra["follower"]

    # ---------------------------------------------------------------- checks
    def check(self, spec: Any) -> List[str]:
        from launcher.core.layout import read_json_file

        problems: List[str] = []
        t = spec.train
        if spec.task == "train" and not t.input_json:
            problems.append("train.input_json: required for backend=mace task=train (a model.json)")
        problems += resume_source_problems(spec)
        problems += stress_problems(spec)
        from trainers.mace.replay_checks import replay_element_problems

        problems += replay_element_problems(spec)
        problems += kernel_problems(spec)
        from trainers.mace.freeze import preflight_problems

        problems += preflight_problems(spec)
        from trainers.mace.runlog import logger_problems

        problems += logger_problems(spec)
        from trainers.mace.model_files import model_file_problems

        problems += model_file_problems(spec)
        if not t.input_json:
            return problems
        try:
            obj = read_json_file(Path(t.input_json), key="train.input_json")
        except ConfigError as e:
            return problems + [str(e)]
        if not isinstance(obj, dict):
            return problems + [f"train.input_json: {t.input_json} must hold a JSON dict"]
        from launcher.core.numbers import nonfinite_number

        bad = nonfinite_number(obj)
        if bad:  # whatever the task: a NaN r_max would stall the neighbour search
            return problems + [f"train.input_json: {t.input_json}: {bad[0]}: expected a finite number, got {bad[1]}"]
        if spec.task in ("train", "finetune"):
            from trainers.mace.model_config import load_model_json

            try:
                load_model_json(t.input_json)
            except ConfigError as e:
                problems.append(str(e))
        return problems

    def describe(self, ctx: JobContext) -> str:
        s = ctx.spec
        what = {"train": f"train a MACE model from {s.train.input_json}",
                "finetune": f"fine-tune {s.model_in or s.model.manifest}",
                "resume": f"resume {ctx.layout.checkpoint}",
                "evaluate": f"evaluate {s.model_in or s.model.manifest} on {_evaluated(s)}",
                "infer": f"predict with {s.model_in or s.model.manifest} on data.{s.eval.split}",
                "export": f"export {s.model_in or s.model.manifest}"}[s.task]
        return (f"mace core trainer: {what} -> {ctx.layout.root} (device={s.device}, dtype={s.train.dtype}, "
                f"epochs={s.train.epochs}, batch_size={s.train.batch_size})")

    # ---------------------------------------------------------------- training tasks
    def _train(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.mace.export import write_artifacts
        from trainers.mace.heads_eval import base_model_record
        from trainers.mace.loop import Trainer

        with _default_dtype(ctx.spec.train.dtype):
            trainer = Trainer(ctx)
            try:
                trainer.setup()
                result = trainer.train()
                if trainer.dist.enabled:  # DDP keeps the ranks' weights equal: record the proof
                    result["weights_sha256_by_rank"] = trainer.dist.weights_by_rank(trainer.model)
                if trainer.main:
                    write_artifacts(ctx.layout, trainer.cfg, spec=ctx.spec, metrics=result["best_metrics"],
                                    extra={"epochs_done": result["epochs_done"], "best_epoch": result["best_epoch"],
                                           "source_model": trainer.source, "head": trainer.head,
                                           "base_model": base_model_record(ctx.spec, trainer.source),
                                           "statistics": trainer.statistics})
                trainer.dist.barrier()
            finally:
                if hasattr(trainer, "dist"):
                    trainer.close()
        return result

    def run(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.mace.runlog import third_party_warnings

        # torch / e3nn / mace warnings (printed by every run) go to train.log, ours still to the console
        log = None if ctx.extra.get("follower") else ctx.layout.train_log
        if log is not None:
            ctx.layout.logs.mkdir(parents=True, exist_ok=True)
        with third_party_warnings(log):
            from trainers.mace.model_io import exact_jit

            with exact_jit(ctx.spec.device):   # bit-identical resume on CPU (see exact_jit)
                return run_task(ctx, train=self._train, predict=self._predict, export=self._export)

    # ---------------------------------------------------------------- evaluation
    def _predict(self, ctx: JobContext, *, with_metrics: bool) -> Dict[str, Any]:
        """evaluate / infer, streamed: ``train.num_workers`` workers read the selected entries and build their
        graphs per batch, predictions go to the eval files as they come, and the metrics come from
        per-structure scalars (``launcher.core.metrics.EvalStream``): memory does not grow with the split.
        ``eval.heads`` adds each head on its own data (``trainers.mace.heads_eval``)."""
        from trainers.mace.heap import hold_freed_memory
        from trainers.mace.loop import select_device, set_threads
        from trainers.mace.model_io import load_model

        spec = ctx.spec
        set_threads(ctx.extra.get("threads"))
        hold_freed_memory()
        with _default_dtype(spec.train.dtype):
            device = select_device(spec)
            loaded = load_model(spec, prefer="best")
            if spec.eval.amp and device.type != "cuda":
                import warnings

                warnings.warn("eval.amp: autocast is CUDA-only; evaluating on CPU without it", stacklevel=2)
            model = self._kernels(ctx, loaded.model.to(device), device)
            out: Dict[str, Any] = {}
            if getattr(spec.data, spec.eval.split):
                out = self._predict_split(ctx, loaded, model, device, with_metrics=with_metrics)
            if spec.eval.heads:
                from trainers.mace import heads_eval

                note = lambda line: self._eval_note(ctx, line)  # noqa: E731
                out["by_head"] = heads_eval.evaluate_heads(ctx, loaded, model, device, note)
                compared = heads_eval.compare_with_base(ctx, loaded, out["by_head"], device, note,
                                                        lambda m, d: self._kernels(ctx, m, d))
                if compared is not None:
                    out["compare_base"] = compared
        return out

    def _predict_split(self, ctx: JobContext, loaded: Any, model: Any, device: Any, *,
                       with_metrics: bool) -> Dict[str, Any]:
        """``data.<eval.split>`` through ``model`` (``train.head_key``'s head) into ``eval/``."""
        from launcher.core.metrics import EvalStream, metrics_line
        from trainers.mace import graphs, stream
        from trainers.mace.loop import head_of, progress_enabled
        from trainers.mace.model_config import heads_of
        from trainers.mace.predict import EvalGraphs, stream_into

        spec = ctx.spec
        split = spec.eval.split
        idx = stream.split_indices(spec, split, active=True)
        cfg = loaded.config
        head = head_of(cfg, spec.train.head_key)
        path = getattr(spec.data, split)
        source = EvalGraphs(stream.SplitGraphs(path, idx, cfg["atomic_numbers"], cfg["r_max"], heads_of(cfg), head,
                                               what=f"data.{split} ({path})",
                                               trust_pickles=stream.trust_pickles(spec)),
                            group_by=spec.eval.group_by if with_metrics else None)
        out = EvalStream(ctx.layout.eval_dir, with_metrics=with_metrics, with_forces=not spec.eval.energy_only,
                         group_by=spec.eval.group_by)
        try:
            stream_into(out, model, source, spec=spec, device=device, with_metrics=with_metrics, key=f"data.{split}",
                        progress=progress_enabled(spec.train.progress_bar, True))
            extra = {"split": split, "head": head, "model": loaded.source, "dataset": path}
            metrics = out.finish(extra=extra, note=lambda line: self._eval_note(ctx, line))
        except BaseException:
            out.discard()
            raise
        graphs.record_indices(ctx.layout.indices_json(spec.task), {split: idx})
        if metrics is not None:
            self._eval_note(ctx, f"{spec.task} data.{split}: {metrics_line(metrics)}")
        else:
            self._eval_note(ctx, f"{spec.task} data.{split}: {len(idx)} structures predicted, in {ctx.layout.eval_dir}")
        return {"split": split, "n_structures": int(len(idx)), **({"metrics": metrics} if metrics else {})}

    def _kernels(self, ctx: JobContext, model: Any, device: Any) -> Any:
        """``model`` on the kernels ``train.kernels`` picks for ``device``, the choice noted in train.log."""
        from trainers.mace import kernels

        name, why = kernels.choose(ctx.spec.train.kernels, device)
        if ctx.spec.train.kernels != "auto" or device.type == "cuda":   # CPU with auto: e3nn, nothing to say
            self._eval_note(ctx, f"kernels: {name} ({why})")
        return kernels.convert(model, name, device)

    @staticmethod
    def _eval_note(ctx: JobContext, line: str) -> None:
        """A line of evaluate (a warning, the metrics) on the console and in logs/train.log."""
        from trainers.mace.runlog import RunLog

        ctx.layout.logs.mkdir(parents=True, exist_ok=True)
        RunLog(ctx.layout, enabled=True).info(line)

    # ---------------------------------------------------------------- export
    def _export(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.mace.export import head_model_path, mace_model_path, write_artifacts
        from trainers.mace.model_io import load_model

        spec = ctx.spec
        with _default_dtype(spec.train.dtype):
            loaded = load_model(spec, prefer="best")
            metrics = {}
            if loaded.checkpoint is not None:
                metrics = loaded.checkpoint.get("loop", {}).get("best_metrics", {})
            elif spec.model.manifest or (spec.model_in and str(spec.model_in).endswith(".json")):
                from launcher.core.layout import read_manifest

                metrics = read_manifest(Path(spec.model.manifest or spec.model_in)).get("metrics", {})
            from trainers.mace.loop import head_of
            from trainers.mace.model_config import heads_of

            head = head_of(loaded.config, spec.train.head_key) if len(heads_of(loaded.config)) > 1 else None
            write_artifacts(ctx.layout, loaded.config, spec=spec, metrics=metrics, state=loaded.model.state_dict(),
                            extra={"source_model": loaded.source}, head=head)
        out = {"exported_from": loaded.source, "artifacts": str(ctx.layout.artifacts),
               "mace_model": str(mace_model_path(ctx.layout))}
        if head is not None:
            out.update({"head": head, "head_model": str(head_model_path(ctx.layout, head))})
        return out
