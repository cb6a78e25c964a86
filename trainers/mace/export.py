"""Standard artifacts of a MACE run: best_model.pt, model.json, manifest.json, best_model.model.

``best_model.pt`` is a state dict (``weights_only``-loadable); ``model.json`` is the resolved
config that rebuilds the module; ``best_model.model`` is the same model as a mace ``.model``
file for ``MACECalculator`` and mace's own tools. ``task=export`` of a multi-head model also
writes ``best_model.<head>.model``, the head ``train.head_key`` names on its own. ``task=export`` also
writes ``best_model.model-lammps.pt``: what ``mace_create_lammps_model best_model.model`` writes (mace's
``LAMMPS_MACE`` wrapper in float64, TorchScript) for LAMMPS' ``pair_style mace``. The manifest lists
every exported file with its sha256 (``files``). The weights of a ``train.freeze: lora`` run hold its
adapters merged (the adapted model's state dict is the merged plain one, :mod:`trainers.mace.lora`): every
artifact is a plain mace model; the manifest's ``lora`` says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from launcher.core.atomic import atomic_torch_save
from launcher.core.layout import RunLayout, package_versions, sha256_file, write_manifest

LAMMPS_SUFFIX = "-lammps.pt"


MACE_MODEL = "best_model.model"   # artifacts/: the whole-module export mace's own tools (MACECalculator) load


def mace_model_path(layout: RunLayout) -> Path:
    return layout.artifact(MACE_MODEL)


def head_model_path(layout: RunLayout, head: str) -> Path:
    """A single-head MACE export of one head of a multi-head model (``task=export``, ``train.head_key``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in head)
    return layout.artifact(f"best_model.{safe}.model")


def lammps_model_path(layout: RunLayout) -> Path:
    """``best_model.model-lammps.pt``: the name ``mace_create_lammps_model`` gives it."""
    return layout.artifact(MACE_MODEL + LAMMPS_SUFFIX)


def write_lammps_model(model: Any, path: Path, head: Optional[str] = None) -> None:
    """As ``mace_create_lammps_model --format libtorch --dtype float64 [--head H]``, written atomically.

    The head is ``head`` on a multi-head model, else the model's last (LAMMPS_MACE's own default).
    """
    import copy

    from mace.calculators import LAMMPS_MACE  # before e3nn (see trainers/mace/__init__.py)
    from e3nn.util import jit

    from launcher.core.atomic import atomic_write_via

    m = copy.deepcopy(model).double().to("cpu")
    m.eval()
    wrapped = LAMMPS_MACE(m, head=head) if head is not None else LAMMPS_MACE(m)
    compiled = jit.compile(wrapped)
    atomic_write_via(path, lambda tmp: compiled.save(tmp))


def write_artifacts(layout: RunLayout, cfg: Dict[str, Any], *, spec: Any, metrics: Optional[Dict[str, Any]] = None,
                    state: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None,
                    head: Optional[str] = None) -> Dict[str, Any]:
    """Write (or complete) the artifacts from ``state`` (default: the best_model.pt on disk).

    ``head`` (a head of a multi-head model) adds ``best_model.<head>.model``: that head alone.
    """
    import torch

    from trainers.mace.model_config import build_model, heads_of, save_model_json, torch_dtype
    from trainers.mace.model_io import export_mace_model, load_weights_only

    layout.artifacts.mkdir(parents=True, exist_ok=True)
    if state is not None:
        atomic_torch_save(state, layout.best_model)
    state = load_weights_only(layout.best_model)
    save_model_json(cfg, layout.model_json)
    model = build_model(cfg, torch_dtype(spec.train.dtype))
    model.load_state_dict(state)
    export_mace_model(model, mace_model_path(layout))
    head_info: Dict[str, Any] = {}
    if head is not None and len(heads_of(cfg)) > 1:
        from trainers.mace.heads import select_head

        single, _ = select_head(model, cfg, head)
        export_mace_model(single, head_model_path(layout, head))
        head_info = {"head": head, "head_model": head_model_path(layout, head).name}
    files = [layout.best_model, layout.model_json, mace_model_path(layout)]
    if head_info:
        files.append(head_model_path(layout, head))
    if spec.task == "export":
        lammps = lammps_model_path(layout)
        try:
            write_lammps_model(model, lammps, head if head_info else None)
            head_info["lammps_model"] = lammps.name
            files.append(lammps)
        except Exception as e:  # noqa: BLE001 - a model TorchScript cannot compile: the rest of the export stands
            import warnings

            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            head_info.update({"lammps_model": None, "lammps_error": reason})
            warnings.warn(f"export: no LAMMPS model: TorchScript cannot compile this model ({reason})", stacklevel=2)
    head_info["files"] = {p.name: sha256_file(p) for p in files}
    data = {s: getattr(spec.data, s) for s in ("train", "val", "test") if getattr(spec.data, s)}
    info = {
        "task": spec.task,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "z_table": [int(z) for z in cfg["atomic_numbers"]],
        "r_max": float(cfg["r_max"]),
        "E0s": cfg["atomic_energies"],
        "mace_model": mace_model_path(layout).name,
        "model_json": layout.model_json.name,
    }
    if spec.task in ("finetune", "resume") and spec.train.freeze == "lora":   # the weights hold the adapters merged
        from launcher.core.lora_spec import lora_blocks

        info["lora"] = {"rank": spec.train.lora_rank, "alpha": spec.train.lora_alpha or spec.train.lora_rank,
                        "blocks": lora_blocks(spec.train), "merged": True}
    info.update(extra or {})
    info.update(head_info)
    return write_manifest(layout, backend="mace", weights=layout.best_model, model_config=cfg,
                          heads=heads_of(cfg), data=data, metrics=metrics or {},
                          versions=package_versions(["mlip-launch", "torch", "mace-torch", "e3nn"]), extra=info)
