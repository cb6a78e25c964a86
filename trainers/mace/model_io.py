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
whose ``train.input_json`` lists heads the base model lacks adds them (:func:`trainers.mace.heads.add_heads`).

Every torch file is read through that allow-list (torch's weights-only unpickler).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

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
    from trainers.mace.model_config import build_model, torch_dtype

    floats = [v.dtype for v in state.values() if getattr(v, "is_floating_point", lambda: False)()]
    model = build_model(cfg, floats[0] if floats else torch_dtype("float64"))   # the stored model's own dtype
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
        from trainers.mace.heads import add_heads

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


def _model_in_file(spec: Any, prefer: str) -> Tuple[Optional[Path], Optional[Path]]:
    """``(model_in, manifest)``: a run directory as ``model_in`` gives its checkpoint or manifest (``prefer``),
    a ``.json`` ``model_in`` is a manifest."""
    from launcher.core.layout import RunLayout

    model_in = Path(spec.model_in) if spec.model_in else None
    manifest_path = Path(spec.model.manifest) if spec.model.manifest else None
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
    return model_in, manifest_path


def _manifest_config(manifest_path: Path, weights: Optional[Path], notes: List[str]) -> Tuple[Any, Dict[str, Any], Path]:
    """``(raw config, checked config, weights)`` of a mace manifest; its weights checked against its sha256
    (``weights``: model.weights in place of the ones it names); what was checked goes to ``notes``."""
    from launcher.core.layout import (manifest_form, manifest_model_config, manifest_weights_path, read_manifest,
                                      verify_manifest_weights)
    from trainers.mace.model_config import check_model_config

    manifest = read_manifest(manifest_path)
    if manifest.get("backend") != "mace":
        raise ConfigError(f"model.manifest: {manifest_path} is a {manifest.get('backend')} model, not mace")
    _check_io(manifest_path, manifest)
    raw = manifest_model_config(manifest)
    if not raw:
        raise ConfigError(f"model.manifest: {manifest_path} carries no model config "
                          f"('{'model' if manifest_form(manifest) == 'mlip-launch' else 'config'}')")
    cfg = check_model_config(raw, source=str(manifest_path))
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
    return raw, cfg, weights


def _load_base(spec: Any, *, prefer: str) -> LoadedModel:
    import torch

    from launcher.core.layout import read_json_file
    from trainers.mace.model_config import check_model_config, config_from_module, heads_of, torch_dtype
    from trainers.mace.origin_format import is_origin_form, verify_against_module

    dtype = torch_dtype(spec.train.dtype)
    model_in, manifest_path = _model_in_file(spec, prefer)
    weights = Path(spec.model.weights) if spec.model.weights else None
    notes: List[str] = []
    trust = bool(spec.data.trust_pickles)
    if model_in is not None and model_in.suffix == ".model":
        module = load_mace_module(model_in, trust=trust)
        cfg = config_from_module(module)
        model = _from_config_and_state(cfg, module.state_dict(), str(model_in))
        return LoadedModel(model.to(dtype), cfg, str(model_in))

    state = None
    if model_in is not None and weights is None:
        obj = load_weights_only(model_in, key="model_in", trust=trust)
        if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
            cfg = check_model_config(obj["model_config"], source=str(model_in))
            model = _from_config_and_state(cfg, obj["model"], str(model_in))
            apply_ema(model, obj)
            return LoadedModel(model.to(dtype), cfg, str(model_in), checkpoint=obj)
        weights = model_in
        state = _state_of(obj, model_in)

    cfg, raw, cfg_source = None, None, ""
    if manifest_path is not None:
        raw, cfg, weights = _manifest_config(manifest_path, weights, notes)
        cfg_source = str(manifest_path)
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


def export_mace_model(model: Any, path: Path) -> None:
    """A mace ``.model`` (pickled module, CPU) that ``MACECalculator`` loads; written atomically."""
    import copy

    from launcher.core.atomic import atomic_torch_save

    m = copy.deepcopy(model).to("cpu")
    m.eval()
    atomic_torch_save(m, Path(path))
