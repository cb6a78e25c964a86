"""Where models come from and how they are written.

Sources (``model_in`` / ``model.manifest`` / ``model.weights``):

- a mace ``.model`` file (``mace_run_train`` output, foundation models): a pickled module,
  loaded with ``weights_only=False`` -- trusted input only;
- our artifacts: ``manifest.json`` (or the run dir holding it) + ``best_model.pt`` + model config;
- our ``checkpoints/checkpoint.pt`` (or a run dir holding one);
- a plain state dict or a mace checkpoint (``{"model": state_dict, ...}``) with a resolved
  model.json (``train.input_json``).

Everything we write ourselves is loaded with ``weights_only=True``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from launcher.core.errors import ConfigError

CHECKPOINT_FORMAT = "mlip-launch/mace-checkpoint"


@dataclass
class LoadedModel:
    model: Any                       # ScaleShiftMACE in torch's default dtype
    config: Dict[str, Any]           # resolved model.json
    source: str                      # what it was loaded from
    checkpoint: Optional[Dict[str, Any]] = None   # our full training state when loaded from checkpoint.pt


def load_weights_only(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"model: file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input
        raise ConfigError(f"model: {path} is not a weights-only torch file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_mace_module(path: Path) -> Any:
    """A pickled mace module (``.model``). Executes pickled code: trusted files only."""
    import mace  # noqa: F401 - registers mace classes before unpickling
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ConfigError(f"model_in: file not found: {path}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ConfigError(f"model_in: {path} does not hold a mace model (got {type(obj).__name__})")
    return obj


def _from_config_and_state(cfg: Dict[str, Any], state: Dict[str, Any], source: str) -> Any:
    from trainers.mace.model_config import build_model

    model = build_model(cfg)
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
    import torch

    from launcher.core.layout import RunLayout, manifest_model_config, manifest_weights_path, read_manifest
    from trainers.mace.model_config import check_model_config, config_from_module, load_model_json

    dtype = torch.get_default_dtype()
    model_in = Path(spec.model_in) if spec.model_in else None
    manifest_path = Path(spec.model.manifest) if spec.model.manifest else None
    weights = Path(spec.model.weights) if spec.model.weights else None

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

    if model_in is not None and model_in.suffix == ".model":
        module = load_mace_module(model_in)
        cfg = config_from_module(module)
        model = _from_config_and_state(cfg, module.state_dict(), str(model_in))
        return LoadedModel(model.to(dtype), cfg, str(model_in))

    if model_in is not None and weights is None:
        obj = load_weights_only(model_in)
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
    if manifest_path is not None:
        manifest = read_manifest(manifest_path)
        if manifest.get("backend") != "mace":
            raise ConfigError(f"model.manifest: {manifest_path} is a {manifest.get('backend')} model, not mace")
        cfg = check_model_config(manifest_model_config(manifest), source=str(manifest_path))
        if weights is None:
            weights = manifest_weights_path(manifest_path, manifest)
    if cfg is None and spec.train.input_json:
        cfg = load_model_json(spec.train.input_json)
    if cfg is None:
        raise ConfigError("model.weights: a state dict needs its model config: set model.manifest or a resolved train.input_json")
    if weights is None:
        raise ConfigError("model.weights: no weights named (set model_in or model.weights)")
    if state is None:
        state = _state_of(load_weights_only(weights), weights)
    model = _from_config_and_state(cfg, state, str(weights))
    return LoadedModel(model.to(dtype), cfg, str(weights))


def export_mace_model(model: Any, path: Path) -> None:
    """A mace ``.model`` (pickled module, CPU) that ``MACECalculator`` loads; written atomically."""
    import copy

    from launcher.core.atomic import atomic_torch_save

    m = copy.deepcopy(model).to("cpu")
    m.eval()
    atomic_torch_save(m, Path(path))
