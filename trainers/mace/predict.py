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
            mininterval: float = 0.5) -> Dict[str, Any]:
    """Energies (float64 numpy, one per graph) and forces (a list of (n_i, 3) arrays or None); ``mininterval``:
    seconds between refreshes of the bar (``train.progress_mininterval``)."""
    import torch

    model.eval()
    energies: List[np.ndarray] = []
    forces: Optional[List[np.ndarray]] = [] if compute_force else None
    from data.util import progress_bar

    it: Any = progress_bar(batches(graphs, batch_size), progress, total=(len(graphs) + batch_size - 1) // batch_size,
                           desc=desc, unit="batch", mininterval=mininterval, leave=False)
    for batch in it:
        batch = batch.to(device)
        ctx = torch.enable_grad() if compute_force else torch.no_grad()
        with ctx, autocast(device, amp):
            out = model(batch.to_dict(), training=False, compute_force=compute_force)
        energies.append(out["energy"].detach().double().cpu().numpy().reshape(-1))
        if forces is not None:
            f = out["forces"].detach().double().cpu().numpy()
            ptr = batch.ptr.cpu().numpy()
            forces.extend(f[ptr[k]:ptr[k + 1]] for k in range(len(ptr) - 1))
    return {"energy": np.concatenate(energies) if energies else np.zeros(0), "forces": forces}


def error_sums(model: Any, graphs: Sequence[Any], *, batch_size: int, device: Any, compute_force: bool,
               amp: bool = False, positions: Optional[Sequence[int]] = None, num_workers: int = 0) -> np.ndarray:
    """[n_graphs, sum (dE/N)^2, n_force_components, sum dF^2, sum |dE/N|, sum |dF|] over ``graphs`` (at
    ``positions``, default all)."""
    import torch

    model.eval()
    s = np.zeros(6, dtype=np.float64)
    for batch in batches(graphs, batch_size, positions, num_workers):
        batch = batch.to(device)
        ctx = torch.enable_grad() if compute_force else torch.no_grad()
        with ctx, autocast(device, amp):
            out = model(batch.to_dict(), training=False, compute_force=compute_force)
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
    return s


def metrics_from_sums(s: np.ndarray, *, energy_weight: float, force_weight: float) -> Dict[str, Optional[float]]:
    e_mse = s[1] / s[0] if s[0] else 0.0
    f_mse = s[3] / s[2] if s[2] else 0.0
    return {
        "loss": float(energy_weight * e_mse + force_weight * f_mse),
        "energy_rmse_per_atom": float(np.sqrt(e_mse)) if s[0] else None,
        "energy_mae_per_atom": float(s[4] / s[0]) if s[0] else None,
        "force_rmse": float(np.sqrt(f_mse)) if s[2] else None,
        "force_mae": float(s[5] / s[2]) if s[2] else None,
    }
