"""Standard artifacts of a MACE run: best_model.pt, model.json, manifest.json, best_model.model.

``best_model.pt`` is a state dict (``weights_only``-loadable); ``model.json`` is the resolved
config that rebuilds the module; ``best_model.model`` is the same model as a mace ``.model``
file for ``MACECalculator`` and mace's own tools. ``task=export`` of a multi-head model also
writes ``best_model.<head>.model``, the head ``train.head_key`` names on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from launcher.core.atomic import atomic_torch_save
from launcher.core.layout import RunLayout, package_versions, write_manifest


def mace_model_path(layout: RunLayout) -> Path:
    return layout.mace_model


def write_artifacts(layout: RunLayout, cfg: Dict[str, Any], *, spec: Any, metrics: Optional[Dict[str, Any]] = None,
                    state: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None,
                    head: Optional[str] = None) -> Dict[str, Any]:
    """Write (or complete) the artifacts from ``state`` (default: the best_model.pt on disk).

    ``head`` (a head of a multi-head model) adds ``best_model.<head>.model``: that head alone.
    """
    import torch

    from trainers.mace.model_config import build_model, heads_of, save_model_json
    from trainers.mace.model_io import export_mace_model, load_weights_only

    layout.artifacts.mkdir(parents=True, exist_ok=True)
    if state is not None:
        atomic_torch_save(state, layout.best_model)
    state = load_weights_only(layout.best_model)
    save_model_json(cfg, layout.model_json)
    model = build_model(cfg)
    model.load_state_dict(state)
    export_mace_model(model, mace_model_path(layout))
    head_info: Dict[str, Any] = {}
    if head is not None and len(heads_of(cfg)) > 1:
        from trainers.mace.model_io import select_head

        single, _ = select_head(model, cfg, head)
        export_mace_model(single, layout.mace_head_model(head))
        head_info = {"head": head, "head_model": layout.mace_head_model(head).name}
    data = {s: getattr(spec.data, s) for s in ("train", "val", "test") if getattr(spec.data, s)}
    info = {
        "task": spec.task,
        "dtype": str(torch.get_default_dtype()).replace("torch.", ""),
        "z_table": [int(z) for z in cfg["atomic_numbers"]],
        "r_max": float(cfg["r_max"]),
        "E0s": cfg["atomic_energies"],
        "mace_model": mace_model_path(layout).name,
        "model_json": layout.model_json.name,
    }
    info.update(extra or {})
    info.update(head_info)
    return write_manifest(layout, backend="mace", weights=layout.best_model, model_config=cfg,
                          heads=heads_of(cfg), data=data, metrics=metrics or {},
                          versions=package_versions(["mlip-launch", "torch", "mace-torch", "e3nn"]), extra=info)
