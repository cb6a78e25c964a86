"""``data.replay.select=fps``: farthest-point sampling of replay candidates on the base model's own descriptors.

A structure's descriptor is the mean over its atoms of the invariant (l=0) node features of every interaction
of the model being fine-tuned, computed once, before any update, over the candidate pool (``data.replay.pool``
records, streamed in batches): memory is one vector per candidate.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def farthest_points(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` rows of ``x`` picked greedily, each the farthest (Euclidean) from those picked before;
    the first is row 0 (the candidates come in seeded random order)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = min(int(k), n)
    picked = np.zeros(k, dtype=np.int64)
    dist = np.sum((x - x[0]) ** 2, axis=1)
    for j in range(1, k):
        picked[j] = int(np.argmax(dist))
        dist = np.minimum(dist, np.sum((x - x[picked[j]]) ** 2, axis=1))
    return picked


def invariant_layout(model: Any) -> tuple:
    """(num_layers, num_invariant_features, l_max) of a mace model's node features, as mace's calculator reads
    them for its descriptors."""
    from e3nn import o3

    irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
    l_max = irreps_out.lmax
    return int(model.num_interactions), irreps_out.dim // (l_max + 1) ** 2, l_max


def structure_descriptors(model: Any, graphs: Any, *, batch_size: int, device: Any, num_workers: int) -> np.ndarray:
    """``[len(graphs), d]``: per-structure mean of the model's invariant node features."""
    import torch
    from mace.modules.utils import extract_invariant

    from trainers.mace.stream import loader

    layers, features, l_max = invariant_layout(model)
    batches = [list(range(i, min(i + batch_size, len(graphs)))) for i in range(0, len(graphs), batch_size)]
    out = []
    model.eval()
    for batch in loader(graphs, batches, num_workers=num_workers):
        batch = batch.to(device)
        with torch.no_grad():   # energies only: no graph kept for gradients
            res = model(batch.to_dict(), training=False, compute_force=False)
        feats = extract_invariant(res["node_feats"], num_layers=layers, num_features=features, l_max=l_max)
        n = int(batch.ptr.numel()) - 1
        sums = torch.zeros(n, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, batch.batch, feats)
        counts = torch.bincount(batch.batch, minlength=n).clamp(min=1).unsqueeze(1).to(feats.dtype)
        out.append((sums / counts).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
