"""EquiformerV2 / GemNet-OC: FairChem v1's native trainer as a subprocess in its own environment.

Inside ``run_dir`` FairChem's own tree lives under ``fairchem/`` (``configs/<ts>.yml`` derived
configs, ``checkpoints/<ts>/``, ``logs/``, ``results/<ts>/``); every invocation gets a fresh
timestamp id ``<ts>``, so a second run never silently "resumes" a finished one. After each run
the standard layout is filled: ``checkpoints/checkpoint.pt`` (newest full state),
``artifacts/best_model.pt`` (bare state dict) + ``fairchem_checkpoint.pt`` + ``manifest.json``,
``eval/`` for evaluate/infer, and FairChem's output in ``logs/fairchem-<ts>.log``.

This module is the backend's face (the tasks, in order); the parts live beside it: ``checks`` (preflight),
``sources`` (where the model and its config come from), ``plan`` (one invocation decided), ``runner`` (running
it), ``artifacts`` (the standard layout), ``child``/``patches``/``train_loop`` (inside FairChem's process).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.errors import ConfigError, FairchemError
from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from trainers.api import BackendBase, JobContext, run_task
from trainers.fairchem import checkpoints as ck
from trainers.fairchem.checkpoint_io import CHECKPOINT_GLOBALS
from trainers.fairchem.plan import CHILD, Plan, PlanRequest, make_plan, new_timestamp_id, user_set
from trainers.fairchem.process import format_command
from trainers.fairchem.sources import NATIVE, ModelSources


@dataclass
class _Start:
    """Where a training starts: FairChem's ``--checkpoint``, the model as the user named it (its config
    rebuilds the model), and whether it continues a training (its epochs count)."""

    checkpoint: Optional[str] = None
    source: Optional[str] = None
    continuing: bool = False


#: The eval.objective names a FairChem training records (what its configs' evaluation metrics log).
OBJECTIVES = ("val_loss", "val_energy_mae", "val_energy_mse", "val_energy_rmse", "val_energy_per_atom_mae",
              "val_energy_per_atom_mse", "val_forces_mae", "val_forces_mse", "val_forces_rmse",
              "val_forces_magnitude_error")


class FairchemBackend(BackendBase):
    """The FairChem runner behind the backend contract (``trainers.api.BackendBase``)."""

    name = "fairchem"
    model_globals = CHECKPOINT_GLOBALS   # what a checkpoint may name (preflight: launcher.model_files)
    objectives = OBJECTIVES
    own_keys = {"train.config_yml": "a FairChem config", "train.identifier": "names FairChem runs",
                "backend_python": "the interpreter of FairChem's environment",
                "backend_env": "environment of FairChem's process", "backend_args": "arguments of FairChem's process"}
    model_sources = ("artifacts/" + ck.NATIVE_CHECKPOINT,)   # a run dir as model_in: its exported checkpoint

    def __init__(self, echo=None) -> None:
        self.echo = echo or (lambda line: print(line, flush=True))
        self.ranks = 1  # FairChem processes of a training: the job's tasks on this node (see ranks.py)

    @property
    def key_docs(self) -> Dict[str, str]:
        """How each run key reaches FairChem (docs/schema.md's backend table)."""
        from trainers.fairchem.derive import KEY_MAP, REFUSED

        return {**KEY_MAP, **{k: f"refused: {v}" for k, v in REFUSED.items()},
                "device": "cpu: --cpu; cuda / auto: FairChem's GPU; cuda:N: CUDA_VISIBLE_DEVICES=N for its process",
                "backend_python": "the interpreter FairChem runs in (default: the env scripts/setup-fairchem-env made)",
                "backend_env": "extra environment of FairChem's process",
                "backend_args": "FairChem config overrides (--a.b=value) and CLI flags, applied last"}

    # ------------------------------------------------------------------ start-up / checks / dry run
    def prestart(self, argv: Sequence[str], spec: Optional[RunSpec] = None):
        """The handle of FairChem's early interpreter, started by :meth:`run` so that its imports overlap the
        run's set-up (see prewarm)."""
        from trainers.fairchem import prewarm

        return prewarm.start_for_spec(spec) if spec is not None else prewarm.start(argv)

    def check(self, spec: RunSpec) -> List[str]:
        """Preflight: every run key honoured or refused (one line each), the config and its files, the env."""
        from trainers.fairchem.checks import problems

        return problems(spec)

    def describe(self, ctx: JobContext) -> str:
        """The FairChem command this spec runs, its derived config path and the launcher's adjustments."""
        spec, layout = ctx.spec, ctx.layout
        sources = ModelSources(spec, layout)
        try:
            if spec.task == "export":
                return f"{CHILD} export {sources.model_source(describe=True)} -> {layout.artifacts}"
            plan, notes = self._describe_plan(spec, layout, sources)
        except ConfigError as e:
            return f"(not runnable: {e})"
        lines = [format_command(plan.command), f"# derived config: {plan.config_path}"]
        lines += [f"# {n}" for n in notes + plan.notes]
        return "\n".join(lines)

    def _describe_plan(self, spec: RunSpec, layout: RunLayout, sources: ModelSources) -> Tuple[Plan, List[str]]:
        """The plan a dry run shows (nothing is copied or written), and the notes of what the run does first."""
        from trainers.fairchem.subset import split_selection

        native = layout.native(NATIVE)
        ts = new_timestamp_id(spec.task, native)
        mode = "predict" if spec.task in ("evaluate", "infer") else "train"
        data = self._data_paths(spec, mode, layout, ts, materialize=False)
        source = None if spec.task == "train" else sources.model_source(describe=True)
        checkpoint, notes = source, []
        if spec.task == "finetune":
            notes.append(f"fine-tune start: weights-only copy of {checkpoint}")
            checkpoint = str(native / "init" / f"{ts}-weights.pt")

        def selection(split: str, active: bool) -> Any:
            try:
                return split_selection(spec, split, active=active)
            except (ConfigError, OSError):  # unreadable data: preflight reports it under data.*
                return None

        if mode == "predict":
            samples = [(data["test"], selection(spec.eval.split, True))]
        else:
            samples = [(data[s], selection(s, s == "train")) for s in ("train", "val", "test") if data.get(s)]
        n_train = None
        if mode == "train" and data.get("train"):
            sel = samples[0][1]   # the train split's selection, drawn once
            n_train = len(sel) if sel is not None else self._count(data.get("train"))
        plan = self.plan(PlanRequest(spec, layout, mode=mode, data=data, checkpoint=checkpoint, n_train=n_train,
                                     timestamp_id=ts, source=source, samples=samples, sources=sources,
                                     resume_target=spec.train.epochs if user_set(spec, "train.epochs") else None))
        return plan, notes

    # ------------------------------------------------------------------ planning
    def plan(self, request: PlanRequest) -> Plan:
        """Derive the config and the command for one FairChem run (nothing is written)."""
        return make_plan(request)

    def _data_paths(self, spec: RunSpec, mode: str, layout: RunLayout, ts: Optional[str], *,
                    materialize: bool) -> Dict[str, Optional[str]]:
        """Split -> LMDB path; selected subsets are copied into the run dir first."""
        from trainers.fairchem.replay import with_replay
        from trainers.fairchem.subset import split_selection, write_subset

        if mode == "predict":
            split = spec.eval.split
            return {"test": getattr(spec.data, split)}
        out: Dict[str, Optional[str]] = {}
        for split in ("train", "val", "test"):
            path = getattr(spec.data, split)
            if path and materialize:
                idx = split_selection(spec, split, active=(split == "train"))
                if idx is not None:
                    target = layout.native(NATIVE) / "data" / f"{split}-{ts}.lmdb"
                    path = str(write_subset(path, idx, target))
                    self.echo(f"[fairchem] data.{split}: {len(idx)} selected records copied to {path}")
                if split == "train":   # data.replay: the replay records mixed into the training set
                    path = with_replay(spec, path, layout.native(NATIVE) / "data" / f"train-{ts}-replay", self.echo)
            out[split] = path
        return out

    def _count(self, path: Optional[str]) -> Optional[int]:
        from data.datasets import count

        if not path:
            return None
        try:
            return count(path)
        except (ConfigError, OSError):
            return None

    # ------------------------------------------------------------------ tasks
    def check_launch(self, spec: RunSpec, params: Any) -> List[str]:
        """Launcher settings (``hydra.launcher.*``) this backend cannot honour, one line each, before queueing."""
        from trainers.fairchem.ranks import launch_problems

        return launch_problems(spec.backend, params)

    def run(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.fairchem.ranks import job_tasks

        tasks = job_tasks()
        if tasks.nodes > 1:
            from trainers.fairchem.ranks import launch_problems

            raise ConfigError(launch_problems(ctx.spec.backend, tasks)[0])
        if ctx.extra.get("follower") or tasks.rank != 0:
            self.echo(f"[fairchem] task {tasks.rank} of {tasks.per_node}: FairChem's ranks run from task 0")
            return {"follower": True}
        self.ranks = tasks.per_node
        begin = getattr(ctx.prestarted, "begin", None)
        if begin is not None:   # accepted: the early interpreter imports while the run is prepared (prewarm.py)
            begin()
        return run_task(ctx, train=self._train_like, predict=self._predict, export=self._export)

    def _train_like(self, ctx: JobContext) -> Dict[str, Any]:
        from trainers.fairchem.artifacts import finalize

        spec, layout = ctx.spec, ctx.layout
        layout.create()
        native = layout.native(NATIVE)
        native.mkdir(parents=True, exist_ok=True)
        ts = new_timestamp_id(spec.task, native)
        ck.remove_stale_temps(native)
        sources = ModelSources(spec, layout)
        start = self._start(ctx, sources, ts)
        done = self._readable_start(spec, layout, start) if start.continuing else None
        data = self._data_paths(spec, "train", layout, ts, materialize=True)
        plan = self.plan(PlanRequest(
            spec, layout, mode="train", data=data, checkpoint=start.checkpoint, n_train=self._count(data["train"]),
            epochs_done=done if spec.task == "resume" else None, timestamp_id=ts, source=start.source,
            resume_target=spec.train.epochs if user_set(spec, "train.epochs") else None, ranks=self.ranks,
            sources=sources))
        max_epochs = plan.max_epochs
        if start.continuing and spec.task != "resume" and done is not None and max_epochs is not None \
                and done >= max_epochs:
            self.echo(f"[fairchem] {start.checkpoint} already trained {done}/{max_epochs} epochs: nothing left to "
                      "train")
        else:
            self._train(plan, ctx, start.continuing, done)
        return finalize(spec, layout, self.echo)

    def _start(self, ctx: JobContext, sources: ModelSources, ts: str) -> _Start:
        """Where this training starts: resume from the model named or the run's newest checkpoint; an interrupted
        run of this spec from its own; a fine-tune from a weights-only copy of its model (fresh optimizer)."""
        from trainers.fairchem.runner import child_helper

        spec, layout = ctx.spec, ctx.layout
        own_last = ck.newest(layout.native(NATIVE))
        if spec.task == "resume":
            if spec.model_in or spec.model.manifest or spec.model.weights:
                return _Start(checkpoint=sources.model_source(), continuing=True)
            if own_last is not None:
                return _Start(checkpoint=str(own_last), continuing=True)
            if layout.checkpoint.is_file():
                return _Start(checkpoint=str(layout.checkpoint), continuing=True)
            raise ConfigError(f"model_in: not set and {layout.root} holds no FairChem checkpoint to resume")
        if ctx.resume and own_last is not None:   # an interrupted run of this spec
            self.echo(f"[fairchem] continuing the interrupted run from {own_last}")
            source = sources.model_source() if spec.task == "finetune" else None
            return _Start(checkpoint=str(own_last), source=source, continuing=True)
        if spec.task == "finetune":
            source = sources.model_source()
            if not Path(source).is_file():
                raise ConfigError(f"model_in: file not found: {source}")
            init = layout.native(NATIVE) / "init" / f"{ts}-weights.pt"
            child_helper(spec, "weights-only", str(source), str(init))
            self.echo(f"[fairchem] fine-tuning from {source} (weights only: fresh optimizer, epoch 0)")
            return _Start(checkpoint=str(init), source=source)
        return _Start()

    def _readable_start(self, spec: RunSpec, layout: RunLayout, start: _Start) -> int:
        """The epochs the checkpoint a training continues from already trained. Our child makes FairChem's
        checkpoint writes atomic, but one from FairChem run directly (or from an older runner) may be torn by a
        kill mid-write: then an older one of the run is used (``start.checkpoint`` is updated)."""
        from trainers.fairchem.runner import inspect_checkpoint

        native = layout.native(NATIVE)
        candidates = [str(start.checkpoint)]
        if not (spec.model_in or spec.model.manifest or spec.model.weights):
            candidates += [str(p) for p in ck.newest_first(native) if str(p) != str(start.checkpoint)]
            if layout.checkpoint.is_file():
                candidates.append(str(layout.checkpoint))
        for cand in candidates:
            try:
                info = inspect_checkpoint(spec, cand)
            except (FairchemError, ValueError, IndexError) as e:
                self.echo(f"[fairchem] {cand} is not readable ({e}); trying an older checkpoint")
                continue
            start.checkpoint = cand
            if not info.get("has_optimizer"):
                self.echo(f"[fairchem] note: {cand} holds no optimizer state; the optimizer starts fresh")
            return info.get("epochs_done") or 0
        raise FairchemError(f"no readable checkpoint to continue from in {native / 'checkpoints'}")

    def _train(self, plan: Plan, ctx: JobContext, continuing: bool, done: Optional[int]) -> None:
        """Run the training; a preemption says where its checkpoint is; no checkpoint at all is an error."""
        from launcher.core import preemption
        from trainers.fairchem.runner import execute

        layout = ctx.layout
        try:
            execute(plan, self.echo, early=ctx.prestarted)
        except preemption.Preempted as e:
            last = ck.newest(layout.native(NATIVE))
            if last is not None:  # normally mirrored by the child already; then nothing is copied
                ck.mirror(last, layout.checkpoint)
                raise preemption.Preempted(f"{e}; checkpoint {layout.checkpoint}") from None
            if not continuing:
                self.echo("[fairchem] stopped before FairChem wrote its first checkpoint: nothing was saved, "
                          "the run starts from the beginning when launched again")
                raise preemption.Preempted(f"{e}; no checkpoint written yet") from None
            raise
        if not (plan.checkpoint_dir / "checkpoint.pt").is_file() and \
                not (plan.checkpoint_dir / "best_checkpoint.pt").is_file():
            # child.py saves the final state of every training of FairChem's loop that took a step
            done_note = f", {done} epochs already done" if done else ""
            raise FairchemError(f"FairChem exited 0 but wrote no checkpoint in {plan.checkpoint_dir}: it trained "
                                f"no step (optim.max_epochs {plan.max_epochs}{done_note}), or its trainer's own loop "
                                f"saved none [log: {plan.log_path}]")

    # ------------------------------------------------------------------ evaluate / infer / export
    def _predict(self, ctx: JobContext, *, with_metrics: bool) -> Dict[str, Any]:
        from trainers.fairchem.predictions import evaluate_predictions, find_predictions
        from trainers.fairchem.runner import child_helper, execute
        from trainers.fairchem.sources import is_training_checkpoint

        spec, layout = ctx.spec, ctx.layout
        layout.create()
        native = layout.native(NATIVE)
        native.mkdir(parents=True, exist_ok=True)
        ts = new_timestamp_id(spec.task, native)
        split = spec.eval.split
        src = getattr(spec.data, split)
        if not src:
            raise ConfigError(f"data.{split}: required for task={spec.task} with eval.split={split}")
        sources = ModelSources(spec, layout)
        model = source = sources.model_source()
        if not is_training_checkpoint(source):
            wrapped = native / "init" / f"{ts}-weights.pt"
            child_helper(spec, "weights-only", str(source), str(wrapped))
            source = str(wrapped)
        gb = spec.eval.group_by if with_metrics else None
        path, labels, index = self._predict_data(spec, layout, src, ts, group_by=gb)
        plan = self.plan(PlanRequest(spec, layout, mode="predict", data={"test": path}, checkpoint=source,
                                     timestamp_id=ts, source=model, sources=sources))
        execute(plan, self.echo, early=ctx.prestarted)
        npz = find_predictions(plan.results_dir)
        metrics = evaluate_predictions(npz, labels, index, layout.eval_dir, with_metrics=with_metrics,
                                       energy_only=spec.eval.energy_only, group_by=gb,
                                       note=lambda line: self.echo(f"[fairchem] {line}"))
        if with_metrics:
            from launcher.core.metrics import metrics_line

            self.echo(f"[fairchem] {spec.task} data.{split}: {metrics_line(metrics)}")
        return {"metrics": metrics, "eval_dir": str(layout.eval_dir), "predictions": str(npz), "model": str(source)}

    def _predict_data(self, spec: RunSpec, layout: RunLayout, src: str, ts: str, *,
                      group_by: Optional[str]) -> Tuple[str, Any, Any]:
        """(the LMDB FairChem predicts on, its labels, the indices of ``src`` they are): ``src`` itself, or a
        copy of the selected records (or of all, where ids repeat) with unique ids."""
        import numpy as np

        from trainers.fairchem.predictions import duplicate_ids, read_labels
        from trainers.fairchem.subset import split_selection, write_subset

        split, tp = spec.eval.split, bool(spec.data.trust_pickles)
        selection = split_selection(spec, split, active=True)
        labels = (read_labels(src, with_forces=not spec.eval.energy_only, trust_pickles=tp, group_by=group_by)
                  if selection is None else None)
        if labels is not None and not duplicate_ids(labels.ids):
            return src, labels, np.arange(len(labels.ids))
        index = selection if selection is not None else np.arange(len(labels.ids))
        target = layout.native(NATIVE) / "data" / f"{split}-{ts}.lmdb"
        path = str(write_subset(src, index, target, rekey=True, trust_pickles=tp))
        labels = read_labels(path, with_forces=not spec.eval.energy_only, trust_pickles=tp, group_by=group_by)
        self.echo(f"[fairchem] data.{split}: {len(index)} records copied to {path} (unique ids for predictions)")
        return path, labels, index

    def _export(self, ctx: JobContext) -> Dict[str, Any]:
        import json

        from trainers.fairchem.artifacts import write_artifacts
        from trainers.fairchem.runner import child_helper

        spec, layout = ctx.spec, ctx.layout
        layout.create()
        sources = ModelSources(spec, layout)
        source = Path(sources.model_source() or "")
        native = layout.native(NATIVE)
        out = native / "export" / new_timestamp_id("export", native)
        child_helper(spec, "export", str(source), str(out))
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        summary["best"] = source.name == "best_checkpoint.pt"
        config = None
        if not summary.get("model"):  # bare weights: the model config comes from the manifest they came with
            saved, _where, _key = sources.saved_config(str(source))
            if saved and isinstance(saved.get("model"), dict):
                summary["model"] = saved["model"]
                config = saved
        manifest = write_artifacts(spec, layout, source, out / "weights.pt", summary, config=config)
        return {"best_model": str(layout.best_model), "weights_sha256": manifest["weights"]["sha256"],
                "epochs_done": summary.get("epochs_done")}
