"""Forward passes without training: predictions, and validation sums for the loop.

Validation metrics are built from sums (squared errors, counts) rather than batch means, so they
do not depend on the batch size and add up exactly across DDP ranks.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence

import numpy as np


def autocast(device: Any, enabled: bool):
    from trainers.mace.amp import autocast as amp_autocast

    return amp_autocast(device, enabled)


def batches(graphs: Sequence[Any], batch_size: int, positions: Optional[Sequence[int]] = None,
            num_workers: int = 0):
    """Collated batches of ``graphs`` (a list or a streamed dataset) at ``positions`` (default: all), in order."""
    from trainers.mace.stream import loader

    pos = list(range(len(graphs))) if positions is None else list(positions)
    yield from loader(graphs, [pos[i:i + batch_size] for i in range(0, len(pos), batch_size)],
                      num_workers=num_workers)


class EvalGraphs:
    """Position ``j`` -> (graph, :class:`Label`) of entry ``indices[j]``: what evaluate / infer stream.

    The graph as :class:`trainers.mace.stream.SplitGraphs` builds it; the label carries what the eval files
    need of the structure (its reference energy and forces in float64, as stored, and its ``eval.group_by``
    label), so nothing else of the split is read or kept.
    """

    def __init__(self, graphs: Any, group_by: Optional[str] = None) -> None:
        self.graphs, self.group_by = graphs, group_by

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, j: int) -> tuple:
        from launcher.core.metrics import group_label

        s = self.graphs.structure(j)
        g = self.graphs.graph(j, s)
        forces = None if s.forces is None else np.asarray(s.forces, dtype=np.float64)
        stress = None if s.stress is None else np.asarray(s.stress, dtype=np.float64).reshape(3, 3)
        label = Label(int(self.graphs.indices[j]), int(s.natoms), None if s.energy is None else float(s.energy),
                      forces, group_label(s.info, self.group_by) if self.group_by else None, stress)
        return g, label


class Label(NamedTuple):
    index: int
    natoms: int
    energy: Optional[float]
    forces: Optional[np.ndarray]
    group: Optional[str]
    stress: Optional[np.ndarray] = None     # (3, 3) eV/Å^3


def collate_labelled(items: Sequence[tuple]) -> tuple:
    """(collated batch, [Label, ...]) of :class:`EvalGraphs` items."""
    from trainers.mace.graphs import collate

    return collate([g for g, _ in items]), [lab for _, lab in items]


def predict_batch(model: Any, batch: Any, *, device: Any, compute_force: bool = True,
                  amp: bool = False, compute_stress: bool = False) -> Dict[str, Any]:
    """One collated batch -> ``{"energy": (B,) float64, "forces": [(n_i, 3) float64, ...] or None,
    "stress": (B, 3, 3) float64 eV/Å^3 or None}`` (stress only with ``compute_stress`` and forces)."""
    import torch

    batch = batch.to(device)
    stress = compute_force and compute_stress
    ctx = torch.enable_grad() if compute_force else torch.no_grad()
    with ctx, autocast(device, amp):
        out = model(batch.to_dict(), training=False, compute_force=compute_force,
                    **({"compute_stress": True} if stress else {}))
    pred: Dict[str, Any] = {"energy": out["energy"].detach().double().cpu().numpy().reshape(-1), "forces": None,
                            "stress": out["stress"].detach().double().cpu().numpy().reshape(-1, 3, 3) if stress else None}
    if compute_force:
        f = out["forces"].detach().double().cpu().numpy()
        ptr = batch.ptr.cpu().numpy()
        pred["forces"] = [f[ptr[k]:ptr[k + 1]] for k in range(len(ptr) - 1)]
    return pred


def stream_predictions(model: Any, source: Any, *, batch_size: int, device: Any, compute_force: bool = True,
                       amp: bool = False, num_workers: int = 0, progress: bool = False, desc: str = "predict",
                       mininterval: float = 0.5) -> Iterator[tuple]:
    """``(prediction, labels)`` per batch of an :class:`EvalGraphs`, in position order; ``num_workers``
    processes read and build the graphs ahead (``train.num_workers``). Stress (a gradient w.r.t. the cell) is
    predicted for the batches that hold a stress label, as validation scores it."""
    from data.util import progress_bar
    from trainers.mace.stream import loader

    model.eval()
    n = len(source)
    plan = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    it: Any = progress_bar(loader(source, plan, num_workers=num_workers, collate=collate_labelled), progress,
                           total=len(plan), desc=desc, unit="batch", mininterval=mininterval, leave=False)
    for batch, labels in it:
        stress = any(lab.stress is not None for lab in labels)
        yield predict_batch(model, batch, device=device, compute_force=compute_force, amp=amp,
                            compute_stress=stress), labels


def error_sums(model: Any, graphs: Sequence[Any], *, batch_size: int, device: Any, compute_force: bool,
               amp: bool = False, positions: Optional[Sequence[int]] = None, num_workers: int = 0) -> np.ndarray:
    """[n_graphs, sum (dE/N)^2, n_force_components, sum dF^2, sum |dE/N|, sum |dF|, n_stress_components,
    sum dS^2, sum |dS|] over ``graphs`` (at ``positions``, default all).

    Stress is predicted only for batches holding a structure with a stress label (``stress_weight`` > 0), so
    data without stress costs nothing more; its errors count the labelled structures' 9 components each.
    """
    import torch

    model.eval()
    s = np.zeros(9, dtype=np.float64)
    for batch in batches(graphs, batch_size, positions, num_workers):
        batch = batch.to(device)
        sw = getattr(batch, "stress_weight", None)
        want_stress = compute_force and sw is not None and bool((sw > 0).any())
        ctx = torch.enable_grad() if compute_force else torch.no_grad()
        with ctx, autocast(device, amp):
            out = model(batch.to_dict(), training=False, compute_force=compute_force,
                        **({"compute_stress": True} if want_stress else {}))
        natoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
        de = ((out["energy"].detach().double() - batch.energy.double()) / natoms)
        ew = batch.energy_weight.double() if hasattr(batch, "energy_weight") else torch.ones_like(de)
        de = de[ew > 0]
        s[0] += de.numel()
        s[1] += float((de**2).sum())
        s[4] += float(de.abs().sum())
        if compute_force:
            df = out["forces"].detach().double() - batch.forces.double()
            s[2] += df.numel()
            s[3] += float((df**2).sum())
            s[5] += float(df.abs().sum())
        if want_stress:
            ds = (out["stress"].detach().double() - batch.stress.double())[sw > 0]
            s[6] += ds.numel()
            s[7] += float((ds**2).sum())
            s[8] += float(ds.abs().sum())
    return s


def metrics_from_sums(s: np.ndarray, *, energy_weight: float, force_weight: float,
                      stress_weight: float = 0.0) -> Dict[str, Optional[float]]:
    """The val record's loss and errors; ``stress_rmse``/``stress_mae`` (eV/Å^3) only when stress was scored."""
    e_mse = s[1] / s[0] if s[0] else 0.0
    f_mse = s[3] / s[2] if s[2] else 0.0
    has_s = len(s) > 6 and s[6] > 0
    s_mse = s[7] / s[6] if has_s else 0.0
    out = {
        "loss": float(energy_weight * e_mse + force_weight * f_mse + stress_weight * s_mse),
        "energy_rmse_per_atom": float(np.sqrt(e_mse)) if s[0] else None,
        "energy_mae_per_atom": float(s[4] / s[0]) if s[0] else None,
        "force_rmse": float(np.sqrt(f_mse)) if s[2] else None,
        "force_mae": float(s[5] / s[2]) if s[2] else None,
    }
    if has_s:
        out.update({"stress_rmse": float(np.sqrt(s_mse)), "stress_mae": float(s[8] / s[6])})
    return out


def stream_into(out: Any, model: Any, source: "EvalGraphs", *, spec: Any, device: Any, with_metrics: bool,
                key: str, progress: bool) -> None:
    """Every batch of ``source`` predicted and added to ``out`` (a ``launcher.core.metrics.EvalStream``), as
    evaluate / infer write their files; with metrics a structure without an energy is refused naming ``key``
    (the data's run key)."""
    from launcher.core.errors import ConfigError

    for pred, labels in stream_predictions(
            model, source, batch_size=spec.data.batch_size, device=device, compute_force=not spec.eval.energy_only,
            amp=spec.eval.amp, num_workers=spec.train.num_workers,
            progress=progress, desc=spec.task,
            mininterval=spec.train.progress_mininterval):
        if with_metrics:
            missing = [lab.index for lab in labels if lab.energy is None]
            if missing:
                raise ConfigError(f"{key}: task=evaluate needs energies; structures {missing[:5]} have none "
                                  f"(use task=infer)")
        out.add([lab.index for lab in labels], [lab.natoms for lab in labels], pred["energy"],
                pred["forces"], [lab.energy for lab in labels], [lab.forces for lab in labels],
                [lab.group for lab in labels], pred_stress=pred.get("stress"),
                true_stress=[lab.stress for lab in labels])
