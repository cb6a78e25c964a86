"""A backend that fits one number: the energy per atom, by a few numpy gradient steps.

It exists to prove the backend contract: everything a backend needs comes from ``trainers.api`` (the contract),
``launcher.core`` (run layout, manifest, atomic writes, preemption) and ``data`` (LMDB records, index
selection); the launcher knows it only through its entry point. No torch: records are read with
``data.fastpickle.record_fields``, only those the sampling selects, batch by batch.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from launcher.core import preemption
from launcher.core.atomic import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text
from launcher.core.errors import ConfigError
from launcher.core.layout import RunLayout, package_versions, write_manifest
from launcher.core.schema import RunSpec, default_of, get_key, leaf_keys
from trainers.api import BackendBase, JobContext

#: How this backend honours each key it reads; any other key set to a non-default value is refused.
KEY_DOCS = {
    "device": "cpu or auto (numpy on the CPU)",
    "seed": "shuffling of the training batches (unless train.seed)",
    "train.seed": "shuffling of the training batches",
    "train.epochs": "passes over the selected training structures",
    "train.batch_size": "structures per gradient step",
    "train.lr": "step size of the gradient descent on the per-atom squared error (< 1)",
    "train.dtype": "float64 or float32 arithmetic",
    "train.save_every": "checkpoint every N epochs",
    "data.train": "the structures fitted", "data.val": "validation after every epoch (val loss)",
    "data.test": "not read: this backend only trains",
    "data.format": "lmdb (FairChem LMDB records)",
    "data.indices": "indices of data.train", "data.indices_path": "indices of data.train",
    **{f"data.{s}_indices.{k}": f"sampling of data.{s}" for s in ("train", "val", "test")
       for k in ("max_samples", "shuffle", "seed", "indices_path")},
    "eval.objective": "val_loss only (read by an Optuna sweep)",
}
GENERIC = ("backend", "task", "run_dir", "name", "overwrite", "dry_run")   # the launcher's own keys
MODEL_FILE = "constant.json"   # artifacts/: the model in this backend's own format, beside best_model.pt


def _set_keys(spec: RunSpec) -> List[str]:
    """The keys ``spec`` sets to something other than the schema default."""
    return [k for k in leaf_keys() if get_key(spec, k) != default_of(k)]


class ConstantBackend(BackendBase):
    name = "constant"
    key_docs = KEY_DOCS
    objectives = ("val_loss",)

    def check(self, spec: RunSpec) -> List[str]:
        problems = []
        if spec.task != "train":
            problems.append(f"task: backend={spec.backend} only trains (task=train), got task={spec.task}")
        if spec.device not in ("cpu", "auto"):
            problems.append(f"device: backend={spec.backend} runs on the CPU; use device=cpu or auto")
        if not spec.train.lr < 1:
            problems.append(f"train.lr: backend={spec.backend} diverges for lr >= 1, got {spec.train.lr}")
        if spec.eval.objective != "val_loss":
            problems.append(f"eval.objective: backend={spec.backend} records val_loss only")
        skip = set(KEY_DOCS) | set(GENERIC)
        problems += [f"{k}: not used by backend={spec.backend}; leave it unset" for k in _set_keys(spec)
                     if k not in skip]
        return problems

    def describe(self, ctx: JobContext) -> str:
        t = ctx.spec.train
        return (f"constant backend: fit the energy per atom of {ctx.spec.data.train} for {t.epochs} epoch(s), "
                f"batch {t.batch_size}, lr {t.lr} -> {ctx.layout.root}")

    def run(self, ctx: JobContext) -> Dict[str, Any]:
        spec, layout = ctx.spec, ctx.layout.create()
        dtype = np.float32 if spec.train.dtype == "float32" else np.float64
        train, val = _split(spec, "train"), _split(spec, "val") if spec.data.val else None
        state = {"epoch": 0, "e": 0.0, "best": None, "best_epoch": None}
        if ctx.resume and layout.checkpoint.is_file():
            state.update(json.loads(layout.checkpoint.read_text(encoding="utf-8")))
        e = dtype(state["e"])
        log = [f"constant: resume={ctx.resume} from epoch {state['epoch']}, {len(train[1])} train structures"]
        for epoch in range(state["epoch"] + 1, spec.train.epochs + 1):
            losses = []
            order = np.random.default_rng([spec.effective_seed, epoch]).permutation(train[1])  # same on resume
            for batch in _batches(order, spec.train.batch_size):
                per_atom = _per_atom_energies(train[0], batch, dtype)
                losses.append(float(np.mean((per_atom - e) ** 2)))
                e = dtype(e - dtype(spec.train.lr) * dtype(2) * np.mean(e - per_atom))
            val_loss = _loss(val, e, dtype, spec.train.batch_size) if val else float(np.mean(losses))
            append_jsonl(layout.metrics_jsonl, {"split": "train", "epoch": epoch, "step": epoch,
                                                "loss": float(np.mean(losses)), "lr": spec.train.lr})
            append_jsonl(layout.metrics_jsonl, {"split": "val", "epoch": epoch, "step": epoch, "loss": val_loss})
            log.append(f"epoch {epoch}: e={float(e):.6f} eV/atom val_loss={val_loss:.6g}")
            if state["best"] is None or val_loss < state["best"]:
                state.update(best=val_loss, best_epoch=epoch)
                atomic_write_json(layout.artifact(MODEL_FILE), {"energy_per_atom": float(e)})
            state.update(epoch=epoch, e=float(e))
            if epoch % spec.train.save_every == 0 or epoch == spec.train.epochs or preemption.preemption_requested():
                atomic_write_json(layout.checkpoint, state)
            if preemption.preemption_requested():
                atomic_write_text(layout.train_log, "\n".join(log) + "\n")
                raise preemption.Preempted(f"preempted after epoch {epoch}")
        atomic_write_text(layout.train_log, "\n".join(log) + "\n")
        atomic_write_bytes(layout.best_model, layout.artifact(MODEL_FILE).read_bytes())   # the standard name
        write_manifest(layout, backend=spec.backend, weights=layout.best_model,
                       model_config={"kind": "constant", "file": MODEL_FILE}, versions=package_versions(["numpy"]),
                       data={"train": spec.data.train, "val": spec.data.val},
                       metrics={"loss": state["best"]}, extra={"best_epoch": state["best_epoch"]})
        return {"epochs_done": state["epoch"], "energy_per_atom": state["e"], "best_val_loss": state["best"]}


def _split(spec: RunSpec, split: str) -> Tuple[Any, np.ndarray]:
    """(reader, selected indices) of one split: only the selected records are ever read."""
    from data.datasets import open_dataset
    from data.indices import select_split_indices

    ds = open_dataset(getattr(spec.data, split))
    return ds, select_split_indices(spec.data, split, len(ds), active=(split == "train"))


def _batches(indices: np.ndarray, size: int) -> Sequence[np.ndarray]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def _per_atom_energies(ds: Any, batch: np.ndarray, dtype: Any) -> np.ndarray:
    from data.fastpickle import record_fields

    out = []
    for i in batch:
        fields = record_fields(ds.get_bytes(int(i)))
        if not fields or fields.get("energy") is None:
            raise ConfigError(f"data: record {int(i)} has no energy the constant backend can read")
        out.append(float(fields["energy"]) / int(fields.get("natoms") or len(fields["atomic_numbers"])))
    return np.asarray(out, dtype=dtype)


def _loss(split: Tuple[Any, np.ndarray], e: Any, dtype: Any, size: int) -> float:
    total, n = 0.0, 0
    for batch in _batches(split[1], size):
        per_atom = _per_atom_energies(split[0], batch, dtype)
        total, n = total + float(np.sum((per_atom - e) ** 2)), n + len(batch)
    return total / max(n, 1)
