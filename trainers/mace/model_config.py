"""model.json: MACE hyperparameters under mace_run_train's names, resolved against the data.

A user's model.json carries architecture keys only (``num_channels``, ``max_L``, ``r_max`` ...,
the names of ``mace_run_train``'s flags, so MACE configs port as they are). What mace computes
from the training set -- the element table, E0s, the average number of neighbours and the
scale/shift -- is filled in by :func:`resolve` and written back into ``artifacts/model.json``:
a resolved model.json rebuilds the exact module with :func:`build_model`, no data needed.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from launcher.core.errors import ConfigError

MODEL_KINDS = ("MACE", "ScaleShiftMACE")
SCALINGS = ("rms_forces_scaling", "std_scaling", "no_scaling")
GATES = ("silu", "tanh", "abs", "None")

# key -> default (mace_run_train's defaults; hidden irreps default to 128x0e + 128x1o)
DEFAULTS: Dict[str, Any] = {
    "model": "MACE",
    "num_channels": 128,
    "max_L": 1,
    "hidden_irreps": None,
    "max_ell": 3,
    "correlation": 3,
    "num_interactions": 2,
    "r_max": 5.0,
    "num_radial_basis": 8,
    "num_cutoff_basis": 5,
    "radial_MLP": [64, 64, 64],
    "radial_type": "bessel",
    "MLP_irreps": "16x0e",
    "gate": "silu",
    "interaction": "RealAgnosticResidualInteractionBlock",
    "interaction_first": "RealAgnosticResidualInteractionBlock",
    "distance_transform": "None",
    "pair_repulsion": False,
    "apply_cutoff": True,
    "use_reduced_cg": False,
    "use_so3": False,
    "use_agnostic_product": False,
    "use_last_readout_only": False,
    "edge_irreps": None,
    "use_edge_irreps_first": False,
    "readout": "NonLinearReadoutBlock",
    "heads": None,
    # finetune with heads the base model lacks: where each new head's readout (and, unless given, its
    # E0s and scale/shift) comes from -- a head of the base model, "fresh", or {new_head: either}
    "head_init": None,
    "scaling": "rms_forces_scaling",
    "E0s": "average",
    # computed from the training data unless given
    "atomic_numbers": None,
    "atomic_energies": None,
    "avg_num_neighbors": None,
    "atomic_inter_scale": None,
    "atomic_inter_shift": None,
}
VALID_KEYS = tuple(DEFAULTS)
COMPUTED_KEYS = ("atomic_numbers", "atomic_energies", "avg_num_neighbors", "atomic_inter_scale", "atomic_inter_shift")


def load_model_json(path: str | Path) -> Dict[str, Any]:
    """Read and check a model.json; unknown keys are a one-line ConfigError listing the valid ones."""
    from launcher.core.layout import read_json_file

    raw = read_json_file(Path(path), key="train.input_json")
    return check_model_config(raw, source=str(path))


def our_keys(raw: Any, *, source: str = "model.json") -> Dict[str, Any]:
    """The keys a model description gives, under our names: the original implementation's form
    (``model_type``, ``z_table``, ``e0_values`` ...) is mapped, ours is returned as it is."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object of MACE hyperparameters")
    from trainers.mace.origin_format import config_from_origin, is_origin_form

    return config_from_origin(raw, source=source) if is_origin_form(raw) else dict(raw)


def check_model_config(raw: Any, *, source: str = "model.json") -> Dict[str, Any]:
    """Defaults filled in, unknown keys and bad choices refused (one line each). Either form is accepted."""
    raw = our_keys(raw, source=source)
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], VALID_KEYS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'{hint}; valid keys: {', '.join(VALID_KEYS)}")
    from launcher.core.numbers import nonfinite_number

    bad = nonfinite_number(raw)
    if bad:  # a NaN r_max would stall the neighbour search; a NaN anywhere else trains nothing
        raise ConfigError(f"{source}: {bad[0]}: expected a finite number, got {bad[1]}")
    cfg = dict(DEFAULTS)
    cfg.update(raw)
    if cfg["model"] not in MODEL_KINDS:
        raise ConfigError(f"{source}: model: '{cfg['model']}' is not one of {', '.join(MODEL_KINDS)}")
    if cfg["scaling"] not in SCALINGS:
        raise ConfigError(f"{source}: scaling: '{cfg['scaling']}' is not one of {', '.join(SCALINGS)}")
    if str(cfg["gate"]) not in GATES:
        raise ConfigError(f"{source}: gate: '{cfg['gate']}' is not one of {', '.join(GATES)}")
    if isinstance(cfg["radial_MLP"], str):
        try:
            cfg["radial_MLP"] = list(ast.literal_eval(cfg["radial_MLP"]))
        except (ValueError, SyntaxError):
            raise ConfigError(f"{source}: radial_MLP: expected a list of ints like [64, 64, 64]") from None
    for key in ("num_channels", "max_L", "max_ell", "correlation", "num_interactions", "num_radial_basis", "num_cutoff_basis"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < (0 if key == "max_L" else 1):
            raise ConfigError(f"{source}: {key}: expected a positive integer, got {cfg[key]!r}")
    if not isinstance(cfg["r_max"], (int, float)) or cfg["r_max"] <= 0:
        raise ConfigError(f"{source}: r_max: expected a positive number, got {cfg['r_max']!r}")
    cfg["r_max"] = float(cfg["r_max"])
    if cfg["heads"] is not None and (not isinstance(cfg["heads"], list) or not cfg["heads"]):
        raise ConfigError(f"{source}: heads: expected a non-empty list of head names")
    hi = cfg["head_init"]
    if hi is not None and not isinstance(hi, str) and not (
            isinstance(hi, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in hi.items())):
        raise ConfigError(f"{source}: head_init: expected a head name, 'fresh', or {{new_head: head name or 'fresh'}}")
    return cfg


def heads_of(cfg: Dict[str, Any]) -> List[str]:
    return list(cfg.get("heads") or ["Default"])


def hidden_irreps(cfg: Dict[str, Any]) -> str:
    if cfg.get("hidden_irreps"):
        return str(cfg["hidden_irreps"])
    c, lmax = int(cfg["num_channels"]), int(cfg["max_L"])
    return " + ".join(f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def _parse_e0s(value: Any, zs: Sequence[int], source: str) -> Optional[Dict[int, float]]:
    """E0s given by the user: a {z: energy} mapping (or its string form) or a list in z order."""
    if value is None or value == "average":
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{source}: E0s: expected 'average', a {{Z: energy}} mapping or a list") from None
    if isinstance(value, dict):
        out = {int(k): float(v) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        if len(value) != len(zs):
            raise ConfigError(f"{source}: E0s: {len(value)} values for {len(zs)} elements {list(zs)}")
        out = {int(z): float(v) for z, v in zip(zs, value)}
    else:
        raise ConfigError(f"{source}: E0s: expected 'average', a {{Z: energy}} mapping or a list")
    missing = [z for z in zs if z not in out]
    if missing:
        raise ConfigError(f"{source}: E0s: no value for elements {missing}")
    return out


def resolve(cfg: Dict[str, Any], structures: Sequence[Any], *, source: str = "model.json") -> Dict[str, Any]:
    """Fill in what mace computes from the training set (element table, E0s, neighbours, scale).

    ``structures`` are :class:`data.structure.Structure` of the training split; already-given
    values are kept, so resolving a resolved config changes nothing.
    """
    cfg = dict(cfg)
    data_zs = sorted({int(z) for s in structures for z in s.numbers})
    if cfg["atomic_numbers"] is None:
        cfg["atomic_numbers"] = data_zs
    zs = [int(z) for z in cfg["atomic_numbers"]]
    extra = sorted(set(data_zs) - set(zs))
    if extra:
        raise ConfigError(f"{source}: atomic_numbers {zs} lacks elements found in the training data: {extra}")
    heads = heads_of(cfg)
    if cfg["atomic_energies"] is None:
        given = _parse_e0s(cfg["E0s"], zs, source)
        if given is None:
            given = average_e0s(structures, zs)
        row = [given[z] for z in zs]
        cfg["atomic_energies"] = [row] * len(heads) if len(heads) > 1 else row
    e0 = np.asarray(cfg["atomic_energies"], dtype=np.float64).reshape(-1, len(zs))[0]
    if cfg["avg_num_neighbors"] is None:
        cfg["avg_num_neighbors"] = avg_num_neighbors(structures, cfg["r_max"])
    if cfg["atomic_inter_scale"] is None or cfg["atomic_inter_shift"] is None:
        mean, scale = scale_shift(structures, zs, e0, cfg["scaling"])
        if cfg["model"] == "MACE":
            mean = 0.0
        cfg["atomic_inter_scale"] = [scale] * len(heads)
        cfg["atomic_inter_shift"] = [mean] * len(heads)
    if cfg["model"] == "MACE" and cfg["interaction_first"] not in (
        "RealAgnosticInteractionBlock", "RealAgnosticDensityInteractionBlock"
    ):
        cfg["interaction_first"] = "RealAgnosticInteractionBlock"  # as mace_run_train --model MACE
    cfg["hidden_irreps"] = hidden_irreps(cfg)
    return cfg


def average_e0s(structures: Sequence[Any], zs: Sequence[int]) -> Dict[int, float]:
    """mace's E0s='average': least squares of total energies on element counts."""
    a = np.zeros((len(structures), len(zs)))
    b = np.zeros(len(structures))
    col = {z: j for j, z in enumerate(zs)}
    for i, s in enumerate(structures):
        if s.energy is None:
            raise ConfigError(f"E0s=average needs energies; training structure {s.index} has none")
        b[i] = s.energy
        for z in s.numbers:
            a[i, col[int(z)]] += 1
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    return {int(z): float(sol[j]) for j, z in enumerate(zs)}


def avg_num_neighbors(structures: Sequence[Any], r_max: float) -> float:
    from mace.data.neighborhood import get_neighborhood

    edges = atoms = 0
    for s in structures:
        ei, *_ = get_neighborhood(positions=s.positions, cutoff=float(r_max), pbc=tuple(bool(p) for p in s.pbc),
                                  cell=np.array(s.cell))
        edges += ei.shape[1]
        atoms += s.natoms
    return float(edges / max(atoms, 1))


def scale_shift(structures: Sequence[Any], zs: Sequence[int], e0: np.ndarray, scaling: str) -> tuple:
    """(mean per-atom interaction energy, scale) as mace's scaling functions."""
    col = {z: j for j, z in enumerate(zs)}
    per_atom = []
    forces = []
    for s in structures:
        ref = sum(e0[col[int(z)]] for z in s.numbers)
        per_atom.append((s.energy - ref) / s.natoms)
        if s.forces is not None:
            forces.append(s.forces.reshape(-1))
    per_atom = np.asarray(per_atom)
    mean = float(per_atom.mean()) if per_atom.size else 0.0
    if scaling == "no_scaling":
        return mean, 1.0
    if scaling == "std_scaling":
        scale = float(per_atom.std()) if per_atom.size else 1.0
    else:
        f = np.concatenate(forces) if forces else np.zeros(0)
        scale = float(np.sqrt(np.mean(f**2))) if f.size else 1.0
    if not np.isfinite(scale) or scale < np.finfo(float).eps:
        scale = 1.0
    return mean, scale


def torch_dtype(name: str) -> Any:
    """``train.dtype`` (float32 / float64) as a torch dtype."""
    import torch

    return torch.float64 if name == "float64" else torch.float32


def build_model(cfg: Dict[str, Any], dtype: Any = None) -> Any:
    """A ``ScaleShiftMACE`` from a resolved config, in ``dtype`` (a torch dtype). The trainer always passes the
    run's dtype as a value; None (a caller outside a run) means torch's current default."""
    import torch
    from mace import modules  # before e3nn: mace sets up torch.load for e3nn's constants
    from mace.modules import blocks
    from e3nn import o3

    missing = [k for k in COMPUTED_KEYS if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"model.json: not resolved, missing {', '.join(missing)}")
    heads = heads_of(cfg)
    zs = [int(z) for z in cfg["atomic_numbers"]]
    ae = np.asarray(cfg["atomic_energies"], dtype=np.float64)  # (n_elements,) or (n_heads, n_elements) as given
    scale = cfg["atomic_inter_scale"]
    shift = cfg["atomic_inter_shift"]
    model = modules.ScaleShiftMACE(
        r_max=float(cfg["r_max"]),
        num_bessel=int(cfg["num_radial_basis"]),
        num_polynomial_cutoff=int(cfg["num_cutoff_basis"]),
        max_ell=int(cfg["max_ell"]),
        interaction_cls=modules.interaction_classes[cfg["interaction"]],
        interaction_cls_first=modules.interaction_classes[cfg["interaction_first"]],
        num_interactions=int(cfg["num_interactions"]),
        num_elements=len(zs),
        hidden_irreps=o3.Irreps(hidden_irreps(cfg)),
        MLP_irreps=o3.Irreps(cfg["MLP_irreps"]),
        atomic_energies=ae,
        avg_num_neighbors=float(cfg["avg_num_neighbors"]),
        atomic_numbers=zs,
        correlation=cfg["correlation"],
        gate=modules.gate_dict[str(cfg["gate"])],
        pair_repulsion=bool(cfg["pair_repulsion"]),
        apply_cutoff=bool(cfg["apply_cutoff"]),
        use_reduced_cg=bool(cfg["use_reduced_cg"]),
        use_so3=bool(cfg["use_so3"]),
        use_agnostic_product=bool(cfg["use_agnostic_product"]),
        use_last_readout_only=bool(cfg["use_last_readout_only"]),
        distance_transform=str(cfg["distance_transform"]),
        edge_irreps=o3.Irreps(cfg["edge_irreps"]) if cfg.get("edge_irreps") else None,
        use_edge_irreps_first=bool(cfg["use_edge_irreps_first"]),
        radial_MLP=[int(x) for x in cfg["radial_MLP"]],
        radial_type=cfg["radial_type"],
        heads=heads,
        readout_cls=getattr(blocks, cfg.get("readout") or "NonLinearReadoutBlock"),
        atomic_inter_scale=scale,
        atomic_inter_shift=shift,
    )
    return model.to(dtype or torch.get_default_dtype())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def config_from_module(model: Any) -> Dict[str, Any]:
    """The resolved model.json of an existing mace module (a ``.model`` from mace_run_train, a
    foundation model): rebuilding it with :func:`build_model` and loading its state dict gives
    the same module."""
    import torch
    from mace.tools.scripts_utils import extract_config_mace_model

    c = extract_config_mace_model(model)
    if "error" in c:
        raise ConfigError(f"model_in: {c['error']} (got {type(model).__name__})")
    gate_name = "None"
    for name, fn in (("silu", torch.nn.functional.silu), ("tanh", torch.tanh), ("abs", torch.abs)):
        if c["gate"] is fn:
            gate_name = name
    heads = list(c["heads"])
    dt = c.get("distance_transform")
    cfg = dict(DEFAULTS)
    cfg.update({
        "model": "ScaleShiftMACE",
        "num_channels": o3_mul(c["hidden_irreps"]),
        "max_L": int(c["hidden_irreps"].lmax),
        "hidden_irreps": str(c["hidden_irreps"]),
        "max_ell": int(c["max_ell"]),
        "correlation": _jsonable(c["correlation"]),
        "num_interactions": int(c["num_interactions"]),
        "r_max": float(c["r_max"]),
        "num_radial_basis": int(c["num_bessel"]),
        "num_cutoff_basis": int(c["num_polynomial_cutoff"]),
        "radial_MLP": [int(x) for x in c["radial_MLP"]],
        "radial_type": c["radial_type"],
        "MLP_irreps": str(c["MLP_irreps"]),
        "gate": gate_name,
        "interaction": c["interaction_cls"].__name__,
        "interaction_first": c["interaction_cls_first"].__name__,
        "distance_transform": "None" if dt in (None, "None") else dt,
        "pair_repulsion": bool(c["pair_repulsion"]),
        "apply_cutoff": bool(c["apply_cutoff"]),
        "use_reduced_cg": bool(c["use_reduced_cg"]),
        "use_so3": bool(c["use_so3"]),
        "use_agnostic_product": bool(c["use_agnostic_product"]),
        "use_last_readout_only": bool(c["use_last_readout_only"]),
        "edge_irreps": str(c["edge_irreps"]) if c.get("edge_irreps") else None,
        "use_edge_irreps_first": bool(c["use_edge_irreps_first"]),
        "readout": c["readout_cls"].__name__,
        "heads": heads if heads != ["Default"] else None,
        "E0s": "average",
        "atomic_numbers": [int(z) for z in _jsonable(c["atomic_numbers"])],
        "atomic_energies": _jsonable(c["atomic_energies"]),
        "avg_num_neighbors": float(_jsonable(c["avg_num_neighbors"])),
        "atomic_inter_scale": np.asarray(_jsonable(c["atomic_inter_scale"]), dtype=float).reshape(-1).tolist(),
        "atomic_inter_shift": np.asarray(_jsonable(c["atomic_inter_shift"]), dtype=float).reshape(-1).tolist(),
    })
    return cfg


def o3_mul(irreps: Any) -> int:
    return int(irreps[0].mul) if len(irreps) else 0


def save_model_json(cfg: Dict[str, Any], path: Path) -> None:
    from launcher.core.atomic import atomic_write_json

    atomic_write_json(Path(path), {k: _jsonable(v) for k, v in cfg.items()})
