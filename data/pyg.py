"""Conversion between :class:`data.structure.Structure` and FairChem v1's PyG ``Data`` records.

The field names and dtypes follow FairChem's ``AtomsToGraphs`` so that FairChem's own
``LmdbDataset`` and trainer read our files unchanged: float32 ``pos``/``cell``/``forces``,
float ``atomic_numbers``, long ``tags``/``fixed``, ``natoms`` int, ``pbc`` (1,3) bool and the
energy as a Python float (a float64, so it round-trips bit for bit). Labels are written only as
``energy``/``forces``/``stress``: FairChem configs either name those directly or carry
``key_mapping: {y: energy, force: forces}``, which FairChem 1.10 refuses (an assertion) when the
target name is already present, so writing ``y`` too would break them. Reading accepts either
naming (``y``/``force`` or ``energy``/``forces``).
Torch is imported inside the functions: only trainer code paths call them.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from data.structure import Structure

REQUIRED_FIELDS = ("pos", "atomic_numbers")
ENERGY_FIELDS = ("energy", "y")
FORCES_FIELDS = ("forces", "force")
STRESS_FIELDS = ("stress", "stresses")


def _json_safe(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def structure_to_pyg(s: Structure, default_sid: int | None = None) -> Any:
    """Build the FairChem-layout ``torch_geometric.data.Data`` for one structure.

    ``sid`` falls back to ``default_sid`` (the writer passes the global position), then to
    ``s.index``.
    """
    import torch
    from torch_geometric.data import Data

    n = s.natoms
    fields: dict[str, Any] = {
        "pos": torch.tensor(s.positions, dtype=torch.float32),
        "atomic_numbers": torch.tensor(s.numbers, dtype=torch.float32),
        "cell": torch.tensor(s.cell, dtype=torch.float32).view(1, 3, 3),
        "pbc": torch.tensor(s.pbc, dtype=torch.bool).view(1, 3),
        "natoms": int(n),
        "tags": torch.tensor(s.tags, dtype=torch.long),
        "fixed": torch.tensor(s.fixed, dtype=torch.long),
        # plain Python values only: a pickled numpy scalar would not load under numpy<2
        "sid": _json_safe(s.sid) if s.sid is not None
        else int(s.index if default_sid is None else default_sid),
        "fid": _json_safe(s.fid) if s.fid is not None else 0,
    }
    if s.energy is not None:
        fields["energy"] = float(s.energy)
    if s.forces is not None:
        fields["forces"] = torch.tensor(s.forces, dtype=torch.float32)
    if s.stress is not None:
        fields["stress"] = torch.tensor(s.stress, dtype=torch.float32).view(1, 3, 3)
    info = dict(s.info)
    fields["config_type"] = str(info.pop("config_type", "Default"))
    fields["isolated"] = bool(info.pop("isolated", False))
    fields["info"] = json.dumps(_json_safe(info), sort_keys=True)
    return Data(**fields)


def pyg2(data: Any) -> Any:
    """Upgrade a ``Data`` pickled by PyG 1.x (no ``_store``) as FairChem's ``pyg2_data_transform``."""
    if "_store" not in data.__dict__:
        from torch_geometric.data import Data

        return Data(**{k: v for k, v in data.__dict__.items() if v is not None})
    return data


def _fields(data: Any) -> dict[str, Any]:
    """The record's attributes as a plain dict (``Data.__contains__`` is slow)."""
    to_dict = getattr(data, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return {k: v for k, v in vars(data).items() if not k.startswith("_")}


def _get(fields: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = fields.get(name)
        if value is not None:
            return value
    return None


def _np(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if not value.dtype.is_floating_point or value.element_size() > 2:
            value = value.numpy()
        else:  # half / bfloat16: through float32 (bfloat16 has no numpy dtype)
            value = value.float().numpy()
    return np.asarray(value, dtype=dtype)


def _scalar(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value.tolist()
    return value


def pyg_to_structure(data: Any, index: int) -> Structure:
    """Read a FairChem-layout ``Data`` (either label naming) into a :class:`Structure`.

    Raises ``KeyError`` naming the missing field and ``ValueError`` for inconsistent shapes;
    callers add the shard and key to the message.
    """
    f = _fields(data)
    for name in REQUIRED_FIELDS:
        if f.get(name) is None:
            raise KeyError(f"lacks required field '{name}'")
    energy = _get(f, ENERGY_FIELDS)
    if energy is not None:
        energy = _np(energy, np.float64).reshape(-1)
        if energy.size != 1:
            raise ValueError(f"energy has {energy.size} values, expected 1")
        energy = float(energy[0])
    forces = _get(f, FORCES_FIELDS)
    stress = _get(f, STRESS_FIELDS)
    info: dict[str, Any] = {}
    if isinstance(f.get("info"), str):
        try:
            info.update(json.loads(f["info"]))
        except json.JSONDecodeError:
            info["info"] = f["info"]
    if f.get("config_type") is not None:
        info["config_type"] = str(f["config_type"])
    if f.get("isolated") is not None:
        info["isolated"] = bool(_scalar(f["isolated"]))
    natoms = f.get("natoms")

    def opt(name: str, dtype: Any) -> Any:
        value = f.get(name)
        return None if value is None else _np(value, dtype)

    return Structure(
        positions=_np(f["pos"], np.float64),
        numbers=_np(f["atomic_numbers"], np.float64),
        cell=opt("cell", np.float64),
        pbc=opt("pbc", bool),
        energy=energy,
        forces=None if forces is None else _np(forces, np.float64),
        stress=None if stress is None else _np(stress, np.float64),
        natoms=-1 if natoms is None else int(_scalar(natoms)),
        tags=opt("tags", np.int64),
        fixed=opt("fixed", np.int64),
        sid=_scalar(f.get("sid")),
        fid=_scalar(f.get("fid")),
        index=int(index),
        info=info,
    )
