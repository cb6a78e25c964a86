"""Where models come from and how they are written.

Sources (``model_in`` / ``model.manifest`` / ``model.weights``):

- a mace ``.model`` file (``mace_run_train`` output, foundation models): a pickled module, read
  through an allow-list of MACE/e3nn/torch classes without running code from it
  (:mod:`trainers.mace.safe_load`; ``data.trust_pickles=true`` for files off the list), then rebuilt
  from its config and state dict;
- our artifacts: ``manifest.json`` (or the run dir holding it) + ``best_model.pt`` + model config;
- our ``checkpoints/checkpoint.pt`` (or a run dir holding one);
- a plain state dict or a mace checkpoint (``{"model": state_dict, ...}``) with a resolved
  model.json (``train.input_json``);
- the original implementation's v1 manifest bundles (``config`` in the original model description,
  ``weights``/``source`` with sha256); ``model.weights`` overrides the weights a manifest names.

A manifest's weights are checked against the sha256 it records before they are read. A fine-tune
whose ``train.input_json`` lists heads the base model lacks adds them (:func:`add_heads`): every
existing part keeps the base weights, each new head's readout starts from a named head or fresh
(``head_init``), and what happened is returned in ``LoadedModel.notes`` for train.log.

Every torch file is read through that allow-list (torch's weights-only unpickler).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from launcher.core.errors import ConfigError

CHECKPOINT_FORMAT = "mlip-launch/mace-checkpoint"


@dataclass
class LoadedModel:
    model: Any                       # ScaleShiftMACE in torch's default dtype
    config: Dict[str, Any]           # resolved model.json
    source: str                      # what it was loaded from
    checkpoint: Optional[Dict[str, Any]] = None   # our full training state when loaded from checkpoint.pt
    notes: List[str] = field(default_factory=list)  # what loading decided, one line each (for train.log)


@contextlib.contextmanager
def exact_jit(device: str) -> Iterator[None]:
    """Run TorchScript code (e3nn's compiled tensor products and linears) unoptimised on CPU.

    Why: torch's profiling graph executor runs a scripted function as written for its first call(s)
    and through an optimised graph afterwards (and again as written after a shape guard fails), and
    the two round differently in the last bits (~1e-16 relative in float64, ~1e-7 in float32, growing
    over training). Which one a step takes depends on the history of the process, so a run resumed in
    a fresh process drifted away from the uninterrupted one. With the optimisation off every call takes
    the same path and resume is bit-identical on CPU; on CPU the optimised graph was not measurably
    faster (no fusion there). On a GPU the fusers stay on: CUDA training is not bit-reproducible anyway.
    The setting is per thread and restored on exit.
    """
    import torch

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if not cpu:
        yield
        return
    with torch.jit.optimized_execution(False):
        yield


def load_weights_only(path: Path, *, key: str = "model", trust: bool = False) -> Any:
    """A torch file (state dict, checkpoint) read through the allow-list unpickler (:mod:`trainers.mace.safe_load`)."""
    from trainers.mace.safe_load import load_model_file

    return load_model_file(path, key=key, trust=trust)


def load_mace_module(path: Path, *, key: str = "model_in", trust: bool = False) -> Any:
    """A pickled mace module (``.model``), read through the allow-list unpickler: a source of its config and
    state dict, not a module to run (its compiled parts are not restored); ``trust`` loads it as it is."""
    import torch

    from trainers.mace.safe_load import load_model_file

    obj = load_model_file(path, key=key, trust=trust)
    if not isinstance(obj, torch.nn.Module):
        raise ConfigError(f"{key}: {path} does not hold a mace model (got {type(obj).__name__})")
    if trust:
        return obj
    from trainers.mace.model_config import config_from_module

    try:
        cfg = config_from_module(obj)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:  # a module mace cannot describe
        raise ConfigError(f"{key}: {path} is not a mace model this version can read "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return _from_config_and_state(cfg, obj.state_dict(), str(path))


def _is_codegen_constant(key: str) -> bool:
    """A constant of e3nn's generated code (``..._compiled_main_left_right._w3j_1_1_2``): a function of the
    architecture, rebuilt with it; a module read without its TorchScript has none."""
    return any(part.startswith("_compiled_main") for part in key.split("."))


def _from_config_and_state(cfg: Dict[str, Any], state: Dict[str, Any], source: str) -> Any:
    from trainers.mace.model_config import build_model

    model = build_model(cfg)
    own = model.state_dict()
    missing = {k: own[k] for k in own if k not in state and _is_codegen_constant(k)}
    if missing:
        state = {**state, **missing}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(line.strip() for line in str(e).splitlines()[:2])
        raise ConfigError(f"model: weights in {source} do not match the model config ({first})") from None
    return model


def _state_of(obj: Any, path: Path) -> Dict[str, Any]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]          # mace / our checkpoint
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        return obj                   # a plain state dict
    raise ConfigError(f"model.weights: {path} holds neither a state dict nor a checkpoint with 'model'")


def apply_ema(model: Any, ckpt: Dict[str, Any]) -> None:
    """Put a checkpoint's EMA weights (the ones evaluated and kept as best) into ``model``."""
    import torch

    ema = ckpt.get("ema")
    if not ema:
        return
    if (ckpt.get("freeze") or {}).get("kind") == "lora":
        from trainers.mace.lora import apply_lora_ema

        return apply_lora_ema(model, ckpt["freeze"], ema["shadow_params"])
    frozen = ckpt.get("freeze") is not None
    params = [p for n, p in model.named_parameters() if not frozen or n.startswith("readouts.")]
    shadow = ema["shadow_params"]
    if len(shadow) != len(params):
        raise ConfigError(f"model_in: the checkpoint's EMA holds {len(shadow)} tensors for {len(params)} parameters")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"model_in: {path} is not an mlip-launch MACE checkpoint")
    return ckpt


def load_model(spec: Any, *, prefer: str = "best") -> LoadedModel:
    """Load the model a finetune/resume/evaluate/export spec names (see the module docstring).

    A run directory as ``model_in`` gives its best model (``prefer="best"``) or its latest
    training checkpoint (``prefer="checkpoint"``), whichever it has when the preferred is missing.
    """
    loaded = _load_base(spec, prefer=prefer)
    if spec.task == "finetune" and spec.train.input_json:
        loaded = add_heads(spec, loaded)
    return loaded


def _n_state_heads(state: Dict[str, Any]) -> Optional[int]:
    e0 = state.get("atomic_energies_fn.atomic_energies")
    if e0 is None or not hasattr(e0, "shape"):
        return None
    return int(e0.shape[0]) if e0.dim() == 2 else 1


def _first_heads(cfg: Dict[str, Any], n: int) -> Dict[str, Any]:
    """``cfg`` restricted to its first ``n`` heads."""
    import numpy as np

    from trainers.mace.model_config import heads_of

    out = dict(cfg)
    out["heads"] = heads_of(cfg)[:n]
    if cfg.get("atomic_energies") is not None:
        rows = np.asarray(cfg["atomic_energies"], dtype=np.float64)
        out["atomic_energies"] = rows.reshape(-1, rows.shape[-1])[:n].tolist()
    for key in ("atomic_inter_scale", "atomic_inter_shift"):
        if cfg.get(key) is not None:
            out[key] = list(np.atleast_1d(np.asarray(cfg[key], dtype=np.float64)))[:n]
    return out


def _e0_like_state(cfg: Dict[str, Any], state: Dict[str, Any]) -> Dict[str, Any]:
    """One head's E0s as a row or as a one-row table, whichever the weights hold (mace writes both)."""
    import numpy as np

    e0 = state.get("atomic_energies_fn.atomic_energies")
    if e0 is None or cfg.get("atomic_energies") is None:
        return cfg
    given = np.asarray(cfg["atomic_energies"], dtype=np.float64)
    if given.size == e0.numel() and given.ndim != e0.dim() and e0.dim() in (1, 2):
        return {**cfg, "atomic_energies": given.reshape(tuple(e0.shape)).tolist()}
    return cfg


def _check_io(manifest_path: Path, manifest: Dict[str, Any]) -> None:
    io = manifest.get("io") or {}
    for key, ok in (("energy_unit", ("eV",)), ("force_unit", ("eV/Angstrom", "eV/A", "eV/Å")), ("energy_is_total", (True,))):
        if key in io and io[key] not in ok:
            raise ConfigError(f"model.manifest: {manifest_path}: io.{key} {io[key]!r} is not supported "
                              f"(the trainer works in {ok[0]!r})")


def _load_base(spec: Any, *, prefer: str) -> LoadedModel:
    import torch

    from launcher.core.layout import (RunLayout, manifest_form, manifest_model_config, manifest_weights_path,
                                      read_json_file, read_manifest, verify_manifest_weights)
    from trainers.mace.model_config import check_model_config, config_from_module
    from trainers.mace.origin_format import is_origin_form, verify_against_module

    dtype = torch.get_default_dtype()
    model_in = Path(spec.model_in) if spec.model_in else None
    manifest_path = Path(spec.model.manifest) if spec.model.manifest else None
    weights = Path(spec.model.weights) if spec.model.weights else None
    notes: List[str] = []

    if model_in is not None and model_in.is_dir():
        theirs = RunLayout.of(model_in)
        cands = [theirs.checkpoint, theirs.manifest]
        if prefer == "best":
            cands.reverse()
        for cand in cands:
            if cand.exists():
                model_in = cand
                break
        else:
            raise ConfigError(f"model_in: {model_in} holds neither checkpoints/checkpoint.pt nor artifacts/manifest.json")
    if model_in is not None and model_in.name.endswith(".json"):
        manifest_path, model_in = model_in, None
    if model_in is not None and not model_in.exists():
        raise ConfigError(f"model_in: file not found: {model_in}")

    trust = bool(spec.data.trust_pickles)
    if model_in is not None and model_in.suffix == ".model":
        module = load_mace_module(model_in, trust=trust)
        cfg = config_from_module(module)
        model = _from_config_and_state(cfg, module.state_dict(), str(model_in))
        return LoadedModel(model.to(dtype), cfg, str(model_in))

    if model_in is not None and weights is None:
        obj = load_weights_only(model_in, key="model_in", trust=trust)
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            cfg = check_model_config(obj["model_config"], source=str(model_in))
            model = _from_config_and_state(cfg, obj["model"], str(model_in))
            apply_ema(model, obj)
            return LoadedModel(model.to(dtype), cfg, str(model_in), checkpoint=obj)
        weights = model_in
        state = _state_of(obj, model_in)
    else:
        state = None

    cfg = None
    raw: Any = None
    cfg_source = ""
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        if manifest.get("backend") != "mace":
            raise ConfigError(f"model.manifest: {manifest_path} is a {manifest.get('backend')} model, not mace")
        _check_io(manifest_path, manifest)
        raw, cfg_source = manifest_model_config(manifest), str(manifest_path)
        if not raw:
            raise ConfigError(f"model.manifest: {manifest_path} carries no model config "
                              f"('{'model' if manifest_form(manifest) == 'mlip-launch' else 'config'}')")
        cfg = check_model_config(raw, source=cfg_source)
        named = manifest_weights_path(manifest_path, manifest)
        if weights is None:
            weights = named
        verify_manifest_weights(manifest_path, manifest, weights)
        entry = manifest.get("weights") or manifest.get("source") or {}
        if Path(weights).resolve() != named.resolve():
            notes.append(f"weights {weights} (model.weights, in place of {named}) with the model config of {manifest_path}")
        elif isinstance(entry, dict) and entry.get("sha256"):
            notes.append(f"weights {weights}: sha256 matches {manifest_path}")
        if manifest_form(manifest) == "v1" and manifest.get("backend_version"):
            from launcher.core.layout import package_versions

            have = package_versions(["mace-torch"])["mace-torch"]
            if have != manifest["backend_version"]:
                notes.append(f"model.manifest: written with mace-torch {manifest['backend_version']}, loaded with {have}")
    if cfg is None and spec.train.input_json:
        raw, cfg_source = read_json_file(Path(spec.train.input_json), key="train.input_json"), str(spec.train.input_json)
        cfg = check_model_config(raw, source=cfg_source)
    if cfg is None:
        raise ConfigError("model.weights: a state dict needs its model config: set model.manifest or a resolved train.input_json")
    if weights is None:
        raise ConfigError("model.weights: no weights named (set model_in or model.weights)")
    if state is None:
        wkey = "model.weights" if spec.model.weights else ("model.manifest" if manifest_path else "model_in")
        if weights.suffix == ".model":
            state = load_mace_module(weights, key=wkey, trust=trust).state_dict()
        else:
            state = _state_of(load_weights_only(weights, key=wkey, trust=trust), weights)
    from trainers.mace.model_config import heads_of

    n_state = _n_state_heads(state)
    if spec.task == "finetune" and n_state is not None and n_state < len(heads_of(cfg)):
        heads = heads_of(cfg)
        notes.append(f"the weights in {weights} hold {n_state} heads and {cfg_source} lists {len(heads)}: the weights' "
                     f"heads are taken to be its first {n_state} ({', '.join(heads[:n_state])})")
        cfg = _first_heads(cfg, n_state)
        raw = None   # the description is of the larger model: checked when the heads are added
    cfg = _e0_like_state(cfg, state)
    model = _from_config_and_state(cfg, state, str(weights))
    if raw is not None and is_origin_form(raw):
        verify_against_module(raw, model, source=cfg_source)
    return LoadedModel(model.to(dtype), cfg, str(weights), notes=notes)


# ---------------------------------------------------------------------------------------------
# Heads: which entries of the readouts, E0s and scale/shift belong to which head
# ---------------------------------------------------------------------------------------------

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


def add_heads(spec: Any, base: LoadedModel) -> LoadedModel:
    """A fine-tune whose ``train.input_json`` lists heads the base model lacks: the base model with them added.

    ``train.input_json`` (either form) must list every head of the base model; keys it gives beyond
    heads, E0s and scale/shift must agree with the base model. ``head_init`` names where each new
    head's readout starts: a head of the base model (its E0s and scale/shift too, unless the file gives
    them) or ``fresh`` (the default: mace's initialisation; E0s and scale/shift from the file, else
    fitted on the training data as ``E0s`` / ``scaling`` say).
    """
    import numpy as np
    import torch

    from launcher.core.layout import read_json_file
    from trainers.mace.model_config import (DEFAULTS, _parse_e0s, average_e0s, build_model, check_model_config,
                                            heads_of, our_keys, scale_shift)
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
    missing = [h for h in base_heads if h not in heads]
    if missing:
        raise ConfigError(f"{source}: heads must list every head of the base model ({', '.join(base_heads)}); "
                          f"missing: {', '.join(missing)}")
    for key in DEFAULTS:
        if key in given and key not in _NOT_ARCH and not _agree(key, given[key], base.config.get(key)):
            raise ConfigError(f"{source}: {key}: {given[key]!r} differs from the base model's "
                              f"{base.config.get(key)!r} ({base.source}); adding heads keeps the rest of the model")
    hi = target["head_init"]
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

    zs = [int(z) for z in base.config["atomic_numbers"]]
    base_e0 = base.model.atomic_energies_fn.atomic_energies.detach().cpu().double().reshape(len(base_heads), -1).numpy()
    base_scale = base.model.scale_shift.scale.detach().cpu().double().reshape(-1).numpy()
    base_shift = base.model.scale_shift.shift.detach().cpu().double().reshape(-1).numpy()
    if base_scale.size == 1 and len(base_heads) > 1:
        base_scale = np.repeat(base_scale, len(base_heads))
        base_shift = np.repeat(base_shift, len(base_heads))
    given_e0 = None
    if given.get("atomic_energies") is not None:
        given_e0 = np.asarray(given["atomic_energies"], dtype=np.float64).reshape(len(heads), -1)
    given_scale = given.get("atomic_inter_scale")
    given_shift = given.get("atomic_inter_shift")
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
            row, e0_how = given_e0[j], f"from {path.name} ({'e0_values' if is_origin_form(raw) else 'atomic_energies'})"
        elif explicit_e0:
            row, e0_how = np.array([_parse_e0s(given["E0s"], zs, source)[z] for z in zs]), f"from {path.name} (E0s)"
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
            sc, sh, ss_how = float(given_scale[j]), float(given_shift[j]), f"from {path.name}"
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
    notes.append(f"heads {', '.join(heads)}: the existing heads ({', '.join(base_heads)}) and every part outside "
                 f"the readouts keep the weights of {base.source}")
    cfg = dict(base.config)
    cfg.update({"heads": heads, "head_init": hi, "atomic_energies": e0_rows,
                "atomic_inter_scale": scales, "atomic_inter_shift": shifts})
    model = build_model(cfg).to(torch.get_default_dtype())
    remap_heads(base.model, base_heads, model, heads, init)
    if is_origin_form(raw):
        verify_against_module(raw, model, source=source, base=base.model)
    return LoadedModel(model, cfg, base.source, notes=notes)


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
    single = build_model(one).to(torch.get_default_dtype())
    remap_heads(model, heads, single, [head], {head: head})
    return single, one


def export_mace_model(model: Any, path: Path) -> None:
    """A mace ``.model`` (pickled module, CPU) that ``MACECalculator`` loads; written atomically."""
    import copy

    from launcher.core.atomic import atomic_torch_save

    m = copy.deepcopy(model).to("cpu")
    m.eval()
    atomic_torch_save(m, Path(path))
