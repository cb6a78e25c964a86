"""Forward passes without training: predictions, and validation sums for the loop.

Validation metrics are built from sums (squared errors, counts) rather than batch means, so they
do not depend on the batch size and add up exactly across DDP ranks.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def autocast(device: Any, enabled: bool):
    import torch

    if enabled and getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def batches(graphs: Sequence[Any], batch_size: int, positions: Optional[Sequence[int]] = None,
            num_workers: int = 0):
    """Collated batches of ``graphs`` (a list or a streamed dataset) at ``positions`` (default: all), in order."""
    from trainers.mace.stream import loader

    pos = list(range(len(graphs))) if positions is None else list(positions)
    yield from loader(graphs, [pos[i:i + batch_size] for i in range(0, len(pos), batch_size)],
                      num_workers=num_workers)


def predict(model: Any, graphs: Sequence[Any], *, batch_size: int, device: Any, compute_force: bool = True,
            amp: bool = False, progress: bool = False, desc: str = "predict",
            mininterval: float = 0.5, compute_stress: bool = False) -> Dict[str, Any]:
    """Energies (float64 numpy, one per graph), forces (a list of (n_i, 3) arrays or None) and, with
    ``compute_stress`` (and forces), stress (an (n, 3, 3) array, eV/Å^3, else None); ``mininterval``:
    seconds between refreshes of the bar (``train.progress_mininterval``)."""
    import torch

    model.eval()
    energies: List[np.ndarray] = []
    forces: Optional[List[np.ndarray]] = [] if compute_force else None
    stress: Optional[List[np.ndarray]] = [] if compute_force and compute_stress else None
    from data.util import progress_bar

    it: Any = progress_bar(batches(graphs, batch_size), progress, total=(len(graphs) + batch_size - 1) // batch_size,
                           desc=desc, unit="batch", mininterval=mininterval, leave=False)
    for batch in it:
        batch = batch.to(device)
        ctx = torch.enable_grad() if compute_force else torch.no_grad()
        with ctx, autocast(device, amp):
            out = model(batch.to_dict(), training=False, compute_force=compute_force,
                        **({"compute_stress": True} if stress is not None else {}))
        energies.append(out["energy"].detach().double().cpu().numpy().reshape(-1))
        if stress is not None:
            stress.append(out["stress"].detach().double().cpu().numpy().reshape(-1, 3, 3))
        if forces is not None:
            f = out["forces"].detach().double().cpu().numpy()
            ptr = batch.ptr.cpu().numpy()
            forces.extend(f[ptr[k]:ptr[k + 1]] for k in range(len(ptr) - 1))
    return {"energy": np.concatenate(energies) if energies else np.zeros(0), "forces": forces,
            "stress": (np.concatenate(stress) if stress else np.zeros((0, 3, 3))) if stress is not None else None}


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
