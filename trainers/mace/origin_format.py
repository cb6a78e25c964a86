"""The original implementation's MACE model description (``model_type: ScaleShiftMACE``, ``z_table``,
``e0_values`` per head, ``cutoff``, per-interaction irreps, ``products``, ``readouts``, ``scale_shift`` ...).

Users have it as ``model.json`` and as the ``config`` of a v1 manifest bundle. :func:`config_from_origin`
turns it into our model.json keys (``mace_run_train``'s names, see :mod:`trainers.mace.model_config`);
every key is either mapped, checked against what it is derived from, or refused with one line naming it.
:func:`verify_against_module` compares the per-layer description with a module built from the mapped
config, so a description our build cannot reproduce is refused instead of loaded into a different model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from launcher.core.errors import ConfigError

# original key -> our key (same meaning, value taken as it is)
RENAMED = {
    "model_type": "model",
    "z_table": "atomic_numbers",
    "e0_values": "atomic_energies",
    "heads": "heads",
    "cutoff": "r_max",
    "num_interactions": "num_interactions",
    "num_radial_basis": "num_radial_basis",
    "radial_type": "radial_type",
    "num_polynomial_cutoff": "num_cutoff_basis",
    "hidden_irreps": "hidden_irreps",
    "MLP_irreps": "MLP_irreps",
    "correlation": "correlation",
    "gate": "gate",
    "avg_num_neighbors": "avg_num_neighbors",
    "max_ell": "max_ell",
    "num_channels": "num_channels",
    "interaction_cls": "interaction",
    "interaction_cls_first": "interaction_first",
    "readout_cls": "readout",
    "use_agnostic_product": "use_agnostic_product",
    "use_reduced_cg": "use_reduced_cg",
    "use_so3": "use_so3",
    "use_last_readout_only": "use_last_readout_only",
    "pair_repulsion": "pair_repulsion",
    "distance_transform": "distance_transform",
    "edge_irreps": "edge_irreps",
    "radial_MLP": "radial_MLP",
    "use_edge_irreps_first": "use_edge_irreps_first",
    "apply_cutoff": "apply_cutoff",
}
# split into atomic_inter_scale / atomic_inter_shift
SCALE_SHIFT = "scale_shift"
# derived from the keys above; checked for consistency here and against the built module on load
DERIVED = ("interactions", "products", "readouts")
# accepted only with the value our build reproduces
FIXED = {"use_embedding_readout": False}
# our own additions, accepted in both forms
EXTENSIONS = ("head_init",)
ORIGIN_KEYS = tuple(RENAMED) + (SCALE_SHIFT,) + DERIVED + tuple(FIXED) + EXTENSIONS
MODEL_TYPES = ("ScaleShiftMACE",)


def is_origin_form(raw: Any) -> bool:
    """The original form names ``model_type``/``z_table``; ours names ``model``/``atomic_numbers``."""
    return isinstance(raw, dict) and "model" not in raw and ("model_type" in raw or "z_table" in raw)


def parse_irreps(value: Any, key: str, source: str) -> List[Tuple[int, int, str]]:
    """``"128x0e + 128x1o"`` -> [(128, 0, "e"), (128, 1, "o")] (without importing e3nn: preflight reads this)."""
    out: List[Tuple[int, int, str]] = []
    try:
        for part in str(value).replace(" ", "").split("+"):
            mul, _, ir = part.rpartition("x")
            if not ir[:-1].isdigit() or ir[-1] not in "eo":
                raise ValueError(part)
            out.append((int(mul) if mul else 1, int(ir[:-1]), ir[-1]))
    except ValueError:
        raise ConfigError(f"{source}: {key}: {value!r} is not an irreps string like '128x0e+128x1o'") from None
    return out


def format_irreps(irreps: List[Tuple[int, int, str]]) -> str:
    return "+".join(f"{m}x{l}{p}" for m, l, p in irreps)


def _irreps(value: Any, key: str, source: str) -> str:
    return format_irreps(parse_irreps(value, key, source))


def _list(raw: Dict[str, Any], key: str, source: str) -> List[Any]:
    v = raw.get(key)
    if not isinstance(v, list):
        raise ConfigError(f"{source}: {key}: expected a list, got {type(v).__name__}")
    return v


def config_from_origin(raw: Dict[str, Any], *, source: str = "model.json") -> Dict[str, Any]:
    """Our model.json keys for an original-form description (not yet defaulted: see ``check_model_config``)."""
    unknown = [k for k in raw if k not in ORIGIN_KEYS]
    if unknown:
        raise ConfigError(f"{source}: key '{unknown[0]}' of the original model description has no equivalent "
                          f"here; understood keys: {', '.join(ORIGIN_KEYS)}")
    for key, want in FIXED.items():
        if key in raw and bool(raw[key]) != want:
            raise ConfigError(f"{source}: {key}: {raw[key]!r} is not supported (only {want!r}: the description "
                              "carries no embedding_specs to rebuild an embedding readout from)")
    model_type = raw.get("model_type", "ScaleShiftMACE")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{source}: model_type: '{model_type}' is not supported; only {', '.join(MODEL_TYPES)}")
    out: Dict[str, Any] = {RENAMED[k]: v for k, v in raw.items() if k in RENAMED}
    if out.get("gate") is None and "gate" in out:
        out["gate"] = "None"
    if out.get("distance_transform") is None and "distance_transform" in out:
        out["distance_transform"] = "None"
    for key in ("hidden_irreps", "MLP_irreps", "edge_irreps"):
        if out.get(key):
            out[key] = _irreps(out[key], key, source)
    if "hidden_irreps" in out:
        hid = parse_irreps(out["hidden_irreps"], "hidden_irreps", source)
        out["max_L"] = max(l for _, l, _ in hid)
        n0 = sum(m for m, l, p in hid if (l, p) == (0, "e"))
        if "num_channels" in out and out["num_channels"] != n0:
            raise ConfigError(f"{source}: num_channels: {out['num_channels']} but hidden_irreps "
                              f"{out['hidden_irreps']} has {n0} scalar channels")
        out["num_channels"] = n0
    if isinstance(out.get("correlation"), list) and len(set(out["correlation"])) == 1:
        out["correlation"] = int(out["correlation"][0])
    heads = raw.get("heads")
    n_heads = len(heads) if isinstance(heads, list) and heads else 1
    if "atomic_energies" in out:
        out["atomic_energies"] = _e0_rows(out["atomic_energies"], n_heads, len(raw.get("z_table") or []), source)
    if SCALE_SHIFT in raw:
        ss = raw[SCALE_SHIFT]
        if not isinstance(ss, dict) or set(ss) - {"scale", "shift"} or not {"scale", "shift"} <= set(ss):
            raise ConfigError(f"{source}: scale_shift: expected {{'scale': [...], 'shift': [...]}} (one value per head)")
        for part in ("scale", "shift"):
            vals = ss[part] if isinstance(ss[part], list) else [ss[part]]
            if len(vals) != n_heads:
                raise ConfigError(f"{source}: scale_shift.{part}: {len(vals)} values for {n_heads} heads")
            out[f"atomic_inter_{part}"] = [float(v) for v in vals]
    _check_derived(raw, out, n_heads, source)
    if "head_init" in raw:
        out["head_init"] = raw["head_init"]
    return out


def _e0_rows(value: Any, n_heads: int, n_z: int, source: str) -> Any:
    rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
    if len(rows) != n_heads:
        raise ConfigError(f"{source}: e0_values: {len(rows)} rows for {n_heads} heads")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or (n_z and len(row) != n_z):
            raise ConfigError(f"{source}: e0_values[{i}]: expected {n_z} energies (one per z_table entry)")
    return value


def _check_derived(raw: Dict[str, Any], out: Dict[str, Any], n_heads: int, source: str) -> None:
    """What the derived sections must agree with, before any module is built."""
    n_int = out.get("num_interactions")
    if "interactions" in raw:
        inter = _list(raw, "interactions", source)
        if n_int is not None and len(inter) != n_int:
            raise ConfigError(f"{source}: interactions: {len(inter)} entries for num_interactions {n_int}")
        for i, entry in enumerate(inter):
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: interactions[{i}]: expected a mapping")
            for key, top in (("avg_num_neighbors", "avg_num_neighbors"), ("radial_MLP", "radial_MLP")):
                if key in entry and top in out and entry[key] != out[top]:
                    raise ConfigError(f"{source}: interactions[{i}].{key}: {entry[key]!r} differs from {top} "
                                      f"{out[top]!r}; per-interaction values are not supported")
    if "products" in raw:
        prods = _list(raw, "products", source)
        if n_int is not None and len(prods) != n_int:
            raise ConfigError(f"{source}: products: {len(prods)} entries for num_interactions {n_int}")
    if "readouts" in raw:
        reads = _list(raw, "readouts", source)
        want = 1 if raw.get("use_last_readout_only") else n_int
        if want is not None and len(reads) != want:
            raise ConfigError(f"{source}: readouts: {len(reads)} entries, expected {want}")
        last = reads[-1] if reads else {}
        if isinstance(last, dict) and last.get("hidden_irreps") and out.get("MLP_irreps"):
            # heads x MLP_irreps; a description with heads appended (MACE-MH-1/OC22/model.json) keeps the
            # readouts of the model it was made from: any 1..len(heads) heads' worth is accepted here
            got = _irreps(last["hidden_irreps"], "readouts[-1].hidden_irreps", source)
            mlp = parse_irreps(out["MLP_irreps"], "MLP_irreps", source)
            if len(mlp) == 1 and not any(got == format_irreps([(m * k, l, p) for m, l, p in mlp])
                                         for k in range(1, n_heads + 1)):
                want = format_irreps([(m * n_heads, l, p) for m, l, p in mlp])
                raise ConfigError(f"{source}: readouts[-1].hidden_irreps: {got} is not {n_heads} heads x MLP_irreps "
                                  f"{out['MLP_irreps']} ({want})")


def describe_module(model: Any) -> Dict[str, Any]:
    """The per-layer part of the original description, read from a mace module."""
    def attr(block: Any, name: str, conv: Any) -> Any:
        v = getattr(block, name, None)
        return None if v is None else conv(v)

    inter = []
    for block in model.interactions:
        entry = {k: attr(block, k, str) for k in ("node_feats_irreps", "edge_attrs_irreps", "edge_feats_irreps",
                                                    "target_irreps", "hidden_irreps")}
        entry["radial_MLP"] = attr(block, "radial_MLP", lambda v: [int(x) for x in v])
        entry["avg_num_neighbors"] = attr(block, "avg_num_neighbors", float)
        inter.append(entry)
    prods = []
    for p in model.products:
        prods.append({
            "irreps_out": str(p.linear.irreps_out),
            "linear_out": int(p.linear.irreps_out.dim),
            "contractions": [{"path_count": int(c.weights_max.shape[1])} for c in p.symmetric_contractions.contractions],
        })
    reads = [({"hidden_irreps": str(r.hidden_irreps)} if hasattr(r, "hidden_irreps") else {}) for r in model.readouts]
    return {"interactions": inter, "products": prods, "readouts": reads}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and ("x" in a or "x" in b):
        try:
            from e3nn import o3

            return o3.Irreps(a) == o3.Irreps(b)
        except (ValueError, AssertionError):
            return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    return a == b


def _first_difference(path: str, given: Any, built: Any) -> Optional[str]:
    if isinstance(given, dict) and isinstance(built, dict):
        for k, v in given.items():
            if k not in built or built[k] is None:
                continue   # not readable from this mace version's module: nothing to compare
            d = _first_difference(f"{path}.{k}", v, built[k])
            if d:
                return d
        return None
    if isinstance(given, list) and isinstance(built, list) and given and isinstance(given[0], (dict, list)):
        if len(given) != len(built):
            return f"{path}: {len(given)} entries, the built module has {len(built)}"
        for i, (g, b) in enumerate(zip(given, built)):
            d = _first_difference(f"{path}[{i}]", g, b)
            if d:
                return d
        return None
    if not (_same(given, built) if not isinstance(given, list) else
            isinstance(built, list) and len(given) == len(built) and all(_same(g, b) for g, b in zip(given, built))):
        return f"{path}: {given!r} in the description, {built!r} in the module built from it"
    return None


def verify_against_module(raw: Dict[str, Any], model: Any, *, source: str, base: Any = None) -> None:
    """Refuse a description whose per-layer irreps, path counts or readouts the built module does not match.

    ``base``: when heads were added to it, the description's readouts may describe it instead (the
    original kept a base model's readouts when it appended a head).
    """
    built = describe_module(model)
    for key in DERIVED:
        if key in raw:
            diff = _first_difference(key, raw[key], built[key])
            if diff and key == "readouts" and base is not None:
                diff = diff if _first_difference(key, raw[key], describe_module(base)[key]) else None
            if diff:
                raise ConfigError(f"{source}: {diff}")
