"""Heads of multi-head MACE models: which entries of the readouts, E0s and scale/shift belong to which head;
adding heads to a base model for a fine-tune (:func:`add_heads`) and taking one head alone (:func:`select_head`).

A fine-tune whose ``train.input_json`` lists heads the base model lacks adds them: every existing part keeps
the base weights, each new head's readout starts from a named head or fresh (``head_init``), and what
happened is returned in ``LoadedModel.notes`` for train.log.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from launcher.core.errors import ConfigError


ROW_KEYS = ("atomic_energies_fn.atomic_energies", "scale_shift.scale", "scale_shift.shift")


def head_entries(model: Any) -> Dict[str, Tuple[str, int]]:
    """State-dict keys whose entries split over heads: key -> (kind, MLP width per head).

    ``linear``: ``LinearReadoutBlock`` weight (in x heads); ``hidden``/``out``: ``NonLinearReadoutBlock``
    ``linear_1`` (in x heads x M) and ``linear_2`` (heads x M x heads, only the diagonal blocks are
    used: mace masks the hidden features by head); ``row``: E0s (heads x elements) and scale/shift.
    """
    n = len(model.heads)
    out: Dict[str, Tuple[str, int]] = {k: ("row", 0) for k in ROW_KEYS}
    for i, r in enumerate(model.readouts):
        kind = type(r).__name__
        if kind == "LinearReadoutBlock":
            out[f"readouts.{i}.linear.weight"] = ("linear", 0)
        elif kind == "NonLinearReadoutBlock":
            m = int(r.hidden_irreps.dim) // n
            out[f"readouts.{i}.linear_1.weight"] = ("hidden", m)
            out[f"readouts.{i}.linear_2.weight"] = ("out", m)
        else:
            raise ConfigError(f"model: readout {kind} (readouts.{i}): heads can be added or selected only with "
                              "LinearReadoutBlock / NonLinearReadoutBlock readouts")
    if hasattr(model, "embedding_readout"):
        raise ConfigError("model: an embedding readout: heads can be added or selected only without one")
    return out


def head_part(t: Any, kind: str, n_heads: int, m: int, h: int) -> Any:
    """The view of ``t`` (a tensor of a :func:`head_entries` key) that belongs to head ``h``."""
    if kind == "linear":
        return t.view(-1, n_heads)[:, h]
    if kind == "hidden":
        return t.view(-1, n_heads, m)[:, h, :]
    if kind == "out":
        return t.view(n_heads, m, n_heads)[h, :, h]
    return t.view(n_heads, -1)[h]


def remap_heads(src: Any, src_heads: Sequence[str], dst: Any, dst_heads: Sequence[str],
                readout_from: Dict[str, Optional[str]]) -> None:
    """Fill ``dst`` (built for ``dst_heads``) from ``src``: every part outside the heads as it is,
    the readout of each dst head from ``readout_from[head]`` (a src head; None keeps dst's own
    initialisation; a head not named there takes the src head of its name), the E0s/scale/shift rows of heads ``src`` has by name from ``src`` (others keep
    dst's, i.e. its config's). e3nn normalises ``linear_2`` by its fan-in (heads x M), so that block
    is rescaled to give the same output."""
    import torch

    src_state, dst_state = src.state_dict(), dst.state_dict()
    e_src, e_dst = head_entries(src), head_entries(dst)
    hs, hd = len(src_heads), len(dst_heads)
    new: Dict[str, Any] = {}
    with torch.no_grad():
        for k, t in dst_state.items():
            if k in e_dst:
                kind, m = e_dst[k]
                out = t.clone()
                for j, head in enumerate(dst_heads):
                    frm = head if kind == "row" else readout_from.get(head, head)
                    if frm is None or frm not in src_heads:
                        continue
                    if kind != "row" and e_src.get(k, (None, m))[1] != m:
                        raise ConfigError(f"model: {k}: MLP width per head differs ({e_src[k][1]} vs {m})")
                    part = head_part(src_state[k], kind, hs, m, list(src_heads).index(frm))
                    if kind == "out":
                        part = part * math.sqrt(hd / hs)
                    head_part(out, kind, hd, m, j).copy_(part.to(out.dtype))
                new[k] = out
            elif k.startswith("readouts.") and k.endswith("output_mask"):
                new[k] = t
            elif k in src_state and src_state[k].shape == t.shape:
                new[k] = src_state[k].clone()
            else:
                raise ConfigError(f"model: {k} differs in shape between the base model and the model with heads "
                                  f"{', '.join(dst_heads)}; only heads can change")
        dst.load_state_dict(new, strict=True)


# keys of our model config that must agree between a base model and the model.json that adds heads
_NOT_ARCH = ("model", "heads", "head_init", "scaling", "E0s", "atomic_energies", "atomic_inter_scale",
             "atomic_inter_shift")


def _agree(key: str, a: Any, b: Any) -> bool:
    from trainers.mace.origin_format import format_irreps, parse_irreps

    if a is None or b is None:
        return a is None and b is None
    if key in ("hidden_irreps", "edge_irreps", "MLP_irreps"):
        return format_irreps(parse_irreps(a, key, "")) == format_irreps(parse_irreps(b, key, ""))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_agree(key, x, y) for x, y in zip(a, b))
    if isinstance(a, list) != isinstance(b, list):   # correlation: one value or one per interaction
        values = a if isinstance(a, list) else b
        one = b if isinstance(a, list) else a
        return all(_agree(key, v, one) for v in values)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    return str(a) == str(b)


def add_heads(spec: Any, base: Any) -> Any:
    """A fine-tune whose ``train.input_json`` lists heads the base model lacks: the base model with them added.

    ``train.input_json`` (either form) must list every head of the base model; keys it gives beyond
    heads, E0s and scale/shift must agree with the base model. ``head_init`` names where each new
    head's readout starts: a head of the base model (its E0s and scale/shift too, unless the file gives
    them) or ``fresh`` (the default: mace's initialisation; E0s and scale/shift from the file, else
    fitted on the training data as ``E0s`` / ``scaling`` say).
    """
    import torch

    from launcher.core.layout import read_json_file
    from trainers.mace.model_config import build_model, check_model_config, heads_of, our_keys, torch_dtype
    from trainers.mace.origin_format import is_origin_form, verify_against_module

    path = Path(spec.train.input_json)
    source = f"train.input_json ({path})"
    raw = read_json_file(path, key="train.input_json")
    given = our_keys(raw, source=source)
    target = check_model_config(raw, source=source)
    base_heads = heads_of(base.config)
    if target["heads"] is None:
        return base
    heads = list(target["heads"])
    new_heads = [h for h in heads if h not in base_heads]
    if not new_heads:
        return base
    init = _head_inits(source, base, given, target["head_init"], heads, new_heads)
    e0_rows, scales, shifts, notes = _head_rows(spec, base, raw, given, target, heads, init)
    notes.append(f"heads {', '.join(heads)}: the existing heads ({', '.join(base_heads)}) and every part outside "
                 f"the readouts keep the weights of {base.source}")
    cfg = dict(base.config)
    cfg.update({"heads": heads, "head_init": target["head_init"], "atomic_energies": e0_rows,
                "atomic_inter_scale": scales, "atomic_inter_shift": shifts})
    model = build_model(cfg, torch_dtype(spec.train.dtype))
    remap_heads(base.model, base_heads, model, heads, init)
    if is_origin_form(raw):
        verify_against_module(raw, model, source=source, base=base.model)
    return dataclasses.replace(base, model=model, config=cfg, checkpoint=None, notes=notes)   # a LoadedModel


def _head_inits(source: str, base: Any, given: Dict[str, Any], hi: Any, heads: List[str],
                new_heads: List[str]) -> Dict[str, Optional[str]]:
    """Where each new head's readout starts (a base head, None: fresh), after checking that the file keeps every
    base head and the base model's architecture."""
    from trainers.mace.model_config import DEFAULTS, heads_of

    base_heads = heads_of(base.config)
    missing = [h for h in base_heads if h not in heads]
    if missing:
        raise ConfigError(f"{source}: heads must list every head of the base model ({', '.join(base_heads)}); "
                          f"missing: {', '.join(missing)}")
    for key in DEFAULTS:
        if key in given and key not in _NOT_ARCH and not _agree(key, given[key], base.config.get(key)):
            raise ConfigError(f"{source}: {key}: {given[key]!r} differs from the base model's "
                              f"{base.config.get(key)!r} ({base.source}); adding heads keeps the rest of the model")
    if isinstance(hi, dict):
        stray = [k for k in hi if k not in new_heads]
        if stray:
            raise ConfigError(f"{source}: head_init: '{stray[0]}' is not a new head (new: {', '.join(new_heads)})")
    init: Dict[str, Optional[str]] = {}
    for h in new_heads:
        frm = hi.get(h, "fresh") if isinstance(hi, dict) else (hi or "fresh")
        if frm != "fresh" and frm not in base_heads:
            raise ConfigError(f"{source}: head_init: '{frm}' is not a head of the base model "
                              f"(heads: {', '.join(base_heads)}) nor 'fresh'")
        init[h] = None if frm == "fresh" else frm
    return init


def _base_rows(base: Any, n_heads: int) -> Tuple[Any, Any, Any]:
    """The base model's E0s (heads x elements), scale and shift (one per head), float64 numpy."""
    import numpy as np

    base_e0 = base.model.atomic_energies_fn.atomic_energies.detach().cpu().double().reshape(n_heads, -1).numpy()
    base_scale = base.model.scale_shift.scale.detach().cpu().double().reshape(-1).numpy()
    base_shift = base.model.scale_shift.shift.detach().cpu().double().reshape(-1).numpy()
    if base_scale.size == 1 and n_heads > 1:
        base_scale = np.repeat(base_scale, n_heads)
        base_shift = np.repeat(base_shift, n_heads)
    return base_e0, base_scale, base_shift


def _head_rows(spec: Any, base: Any, raw: Any, given: Dict[str, Any], target: Dict[str, Any],
               heads: List[str], init: Dict[str, Optional[str]]) -> Tuple[list, list, list, List[str]]:
    """E0 rows, scales, shifts of every head (base heads keep theirs) and one note per new head."""
    import numpy as np

    from trainers.mace.model_config import _parse_e0s, average_e0s, heads_of, scale_shift
    from trainers.mace.origin_format import is_origin_form

    name = Path(spec.train.input_json).name
    source = f"train.input_json ({spec.train.input_json})"
    zs = [int(z) for z in base.config["atomic_numbers"]]
    base_heads = heads_of(base.config)
    base_e0, base_scale, base_shift = _base_rows(base, len(base_heads))
    given_e0 = None
    if given.get("atomic_energies") is not None:
        given_e0 = np.asarray(given["atomic_energies"], dtype=np.float64).reshape(len(heads), -1)
    given_scale, given_shift = given.get("atomic_inter_scale"), given.get("atomic_inter_shift")
    explicit_e0 = given.get("E0s") not in (None, "average")
    structures: List[Any] = []

    def training_structures() -> List[Any]:
        if not structures:
            from trainers.mace import stream

            structures.extend(stream.stats_sample(spec)[0])   # bounded: data.stats_samples
        return structures

    e0_rows, scales, shifts, notes = [], [], [], list(base.notes)
    for j, h in enumerate(heads):
        if h in base_heads:
            i = base_heads.index(h)
            e0_rows.append(base_e0[i].tolist())
            scales.append(float(base_scale[i]))
            shifts.append(float(base_shift[i]))
            continue
        frm = init[h]
        if given_e0 is not None:
            row, e0_how = given_e0[j], f"from {name} ({'e0_values' if is_origin_form(raw) else 'atomic_energies'})"
        elif explicit_e0:
            row, e0_how = np.array([_parse_e0s(given["E0s"], zs, source)[z] for z in zs]), f"from {name} (E0s)"
        elif frm is not None:
            row, e0_how = base_e0[base_heads.index(frm)], f"copied from head '{frm}'"
        else:
            data = training_structures()
            fit = average_e0s(data, zs)
            seen = sorted({int(z) for s in data for z in s.numbers})
            row = np.array([fit[z] if z in seen else 0.0 for z in zs])
            e0_how = (f"fitted on the training data (least squares on element counts) for Z={seen}"
                      + (", 0.0 for the other elements" if len(seen) < len(zs) else ""))
        if given_scale is not None and given_shift is not None:
            sc, sh, ss_how = float(given_scale[j]), float(given_shift[j]), f"from {name}"
        elif frm is not None:
            i = base_heads.index(frm)
            sc, sh, ss_how = float(base_scale[i]), float(base_shift[i]), f"copied from head '{frm}'"
        else:
            mean, sc = scale_shift(training_structures(), zs, np.asarray(row), target["scaling"])
            sh = 0.0 if base.config.get("model") == "MACE" else float(mean)
            ss_how = f"from the training data ({target['scaling']})"
        e0_rows.append([float(x) for x in row])
        scales.append(float(sc))
        shifts.append(float(sh))
        readout = f"copied from head '{frm}'" if frm is not None else "initialised fresh (mace's initialisation)"
        notes.append(f"new head '{h}': readout {readout}; E0s {e0_how}; scale/shift {ss_how}")
    return e0_rows, scales, shifts, notes


def select_head(model: Any, cfg: Dict[str, Any], head: str) -> Tuple[Any, Dict[str, Any]]:
    """A single-head copy of a multi-head model: ``head``'s readout, E0s and scale/shift, the rest as it is."""
    import torch

    from trainers.mace.model_config import build_model, heads_of

    heads = heads_of(cfg)
    i = heads.index(head)
    one = dict(cfg)
    one.update({"heads": [head], "head_init": None,
                "atomic_energies": [model.atomic_energies_fn.atomic_energies.detach().cpu().double()
                                    .reshape(len(heads), -1)[i].tolist()],
                "atomic_inter_scale": [float(model.scale_shift.scale.detach().reshape(-1)[i if model.scale_shift.scale.numel() > 1 else 0])],
                "atomic_inter_shift": [float(model.scale_shift.shift.detach().reshape(-1)[i if model.scale_shift.shift.numel() > 1 else 0])]})
    single = build_model(one, next(model.parameters()).dtype)
    remap_heads(model, heads, single, [head], {head: head})
    return single, one
