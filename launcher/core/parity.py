"""``parity.png`` of an evaluation: predicted vs reference energy per atom and force components, one colour per
group, MAE/RMSE in the legend. matplotlib is imported only when a plot is drawn (Agg, no display), so the CLI
start-up and infer never pay for it."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from launcher.core.atomic import atomic_write_bytes
from launcher.core.console_numbers import sig
from launcher.core.eval_errors import EvalArrays

#: Force points a streamed evaluation keeps for parity.png: a seeded uniform sample of the split's force
#: components (reservoir sampling), at most this many; below it, every point is drawn.
PARITY_MAX_POINTS = 200_000


def _force_points(data: EvalArrays, name: str, rows: np.ndarray, rng: Any, max_points: int) -> tuple:
    """(reference, predicted) force components of group ``name`` to draw: the streamed sample, or every free
    component of ``rows`` (at most ``max_points``, a seeded choice beyond)."""
    if data.streamed:
        return data.force_points.get(name, (np.zeros(0), np.zeros(0)))
    from launcher.core.eval_errors import free_forces

    fp, ft = free_forces(data.pf, data.tf, rows)
    if fp.size > max_points:
        pick = rng.choice(fp.size, size=max_points, replace=False)
        return ft.reshape(-1)[pick], fp.reshape(-1)[pick]
    return ft.reshape(-1), fp.reshape(-1)


def _draw_group(axes: Any, data: EvalArrays, name: str, rows: np.ndarray, rng: Any, max_points: int) -> None:
    """One group's points and legend lines on the energy (and force) panel."""
    pe, te, na = data.pe, data.te, data.na
    m = data.errors(rows, forces=False)
    axes[0].scatter(te[rows] / na[rows], pe[rows] / na[rows], s=8, alpha=0.7,
                    label=f"{name} (n={rows.size}) MAE {sig(m['energy_mae_per_atom'])} "
                          f"RMSE {sig(m['energy_rmse_per_atom'])}")
    if data.has_forces:
        xs, ys = _force_points(data, name, rows, rng, max_points)
        m = data.errors(rows)
        axes[1].scatter(xs, ys, s=4, alpha=0.5, label=f"{name} MAE {sig(m['force_mae'])} RMSE {sig(m['force_rmse'])}")


def _draw_overall(axes: Any, data: EvalArrays) -> None:
    """The errors of every structure as a legend line of their own (more than one group)."""
    m = data.errors(np.arange(data.pe.size), forces=data.has_forces)
    axes[0].plot([], [], " ", label=f"all (n={data.pe.size}) MAE {sig(m['energy_mae_per_atom'])} "
                                    f"RMSE {sig(m['energy_rmse_per_atom'])}")
    if data.has_forces:
        axes[1].plot([], [], " ", label=f"all MAE {sig(m['force_mae'])} RMSE {sig(m['force_rmse'])}")


def _finish_panels(axes: Any, has_forces: bool) -> None:
    """Equal axes, the diagonal, labels and legends."""
    panels = [(axes[0], "energy per atom", "eV/atom")]
    if has_forces:
        panels.append((axes[1], "force components", "eV/Å"))
    for ax, title, unit in panels:
        lo, hi = ax.get_xlim()
        lo2, hi2 = ax.get_ylim()
        lo, hi = min(lo, lo2), max(hi, hi2)
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_title(f"{title} (MAE / RMSE in {unit})")
        ax.legend(fontsize=7, loc="upper left")


def write_parity_png(path: Path, data: EvalArrays, groups: Optional[Sequence[str]] = None,
                     max_points: int = PARITY_MAX_POINTS) -> Path:
    """Two panels, energy per atom and force components (one when ``data`` has no forces), one colour per group.

    Force points beyond ``max_points`` per group are subsampled (seeded) to keep the file small; a streamed
    evaluation's ``data`` brings its own bounded sample (``force_points``) and its errors (``force_errors``).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    g = np.asarray(["all"] * data.pe.size if groups is None else [str(x) for x in groups], dtype=object)
    fig = Figure(figsize=(11 if data.has_forces else 5.5, 5), dpi=110)
    axes = fig.subplots(1, 2 if data.has_forces else 1, squeeze=False)[0]
    rng = np.random.default_rng(0)
    names = sorted(set(g.tolist()))
    for name in names:
        _draw_group(axes, data, name, np.flatnonzero(g == name), rng, max_points)
    if len(names) > 1:
        _draw_overall(axes, data)
    _finish_panels(axes, data.has_forces)
    fig.tight_layout()
    bio = io.BytesIO()
    fig.savefig(bio, format="png")
    atomic_write_bytes(Path(path), bio.getvalue())
    return Path(path)
