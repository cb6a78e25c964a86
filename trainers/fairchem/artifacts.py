"""The standard run layout filled from FairChem's own tree: the newest checkpoints mirrored into
``checkpoints/``, the best weights exported to ``artifacts/`` with ``fairchem_checkpoint.pt`` and
``manifest.json``."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from launcher.core.errors import FairchemError
from launcher.core.layout import RunLayout
from launcher.core.schema import RunSpec
from trainers.fairchem import checkpoints as ck
from trainers.fairchem.runner import child_helper, inspect_checkpoint
from trainers.fairchem.sources import NATIVE


def finalize(spec: RunSpec, layout: RunLayout, echo: Callable[[str], None]) -> Dict[str, Any]:
    """Mirror the newest checkpoints into the standard layout (where the child has not already) and export the
    best weights; the training's result."""
    native = layout.native(NATIVE)
    last = ck.newest(native)
    if last is not None:
        ck.mirror(last, layout.checkpoint)
    best = ck.newest(native, "best_checkpoint.pt")
    if best is not None:
        ck.mirror(best, layout.best_checkpoint)
    source = best or last
    if source is None:
        raise FairchemError(f"no FairChem checkpoint in {native}/checkpoints to export")
    summary = summary_for(spec, source)
    if best is None:   # no validation within the run: the final weights, and no best metric to claim
        summary = {**summary, "best": None, "best_val_metric": None, "val_metrics": {}}
        echo("[fairchem] no validation ran (no data.val, or optim.eval_every beyond the run's steps): "
             "artifacts/best_model.pt holds the final weights (manifest: fairchem.weights = final)")
    manifest = write_artifacts(spec, layout, source, source.parent / "weights.pt", summary,
                               weights_kind="best" if best is not None else "final")
    last_info = summary.get("last") if source == best and summary.get("last") else summary
    epochs = (last_info or {}).get("epochs_done")
    if last is not None and last.parent != source.parent:
        epochs = inspect_checkpoint(spec, str(last)).get("epochs_done")
    return {
        "epochs_done": epochs,
        "best_val_metric": summary.get("best_val_metric"),
        "primary_metric": summary.get("primary_metric"),
        "val_metrics": summary.get("val_metrics", {}),
        "best_model": str(layout.best_model),
        "checkpoint": str(layout.checkpoint) if last is not None else None,
        "weights_sha256": manifest["weights"]["sha256"],
    }


def summary_for(spec: RunSpec, source: Path) -> Dict[str, Any]:
    """summary.json + weights.pt of ``source``: written by the training child, else made now."""
    folder = source.parent
    summary_path, weights = folder / "summary.json", folder / "weights.pt"
    if summary_path.is_file() and weights.is_file() and weights.stat().st_mtime_ns >= source.stat().st_mtime_ns:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if Path(summary.get("source", "")) == source:
            return summary
    out = folder / f"export-{uuid.uuid4().hex[:6]}"
    child_helper(spec, "export", str(source), str(out))
    (out / "weights.pt").replace(weights)
    (out / "summary.json").replace(summary_path)
    out.rmdir()
    return json.loads(summary_path.read_text(encoding="utf-8"))


def write_artifacts(spec: RunSpec, layout: RunLayout, source: Path, weights: Path, summary: Dict[str, Any],
                    config: Optional[Dict[str, Any]] = None, weights_kind: Optional[str] = None) -> Dict[str, Any]:
    """artifacts/best_model.pt (bare state dict), fairchem_checkpoint.pt (untouched), manifest.json.

    The manifest's ``fairchem.weights`` says which weights these are: ``best`` (the best validation's),
    ``final`` (a training in which no validation ran: its last state; ``fairchem.best`` is then null) or
    ``checkpoint`` (an exported file that is not a best checkpoint)."""
    from launcher.core.layout import package_versions, write_manifest

    best = summary.get("best", source.name == "best_checkpoint.pt")
    kind = weights_kind or ("best" if best else "checkpoint")
    ck.atomic_copy(weights, layout.best_model)
    ck.atomic_copy(source, layout.artifact(ck.NATIVE_CHECKPOINT))
    versions = {**package_versions(["mlip-launch"]), **(summary.get("versions") or {})}
    model = dict(summary.get("model") or {})
    return write_manifest(
        layout, backend=spec.backend, weights=layout.best_model, model_config=model, heads=[],
        data={s: getattr(spec.data, s) for s in ("train", "val", "test") if getattr(spec.data, s)},
        metrics=summary.get("val_metrics") or {}, versions=versions,
        extra={"fairchem": {
            "checkpoint": ck.NATIVE_CHECKPOINT,
            "source": str(source),
            "best": None if best is None else bool(best),
            "weights": kind,
            "trainer": summary.get("trainer"),
            "model_name": model.get("name"),
            "epoch": summary.get("epoch"),
            "step": summary.get("step"),
            "primary_metric": summary.get("primary_metric"),
            "best_val_metric": summary.get("best_val_metric"),
            "n_parameters": summary.get("n_parameters"),
            "config_yml": spec.train.config_yml,
            **({"config": config} if config else {}),   # when the checkpoint carries none (bare weights)
            "load": "state dict without the 'module.' prefix; build the model from 'model' with "
                    "fairchem.core.common.registry and load_state_dict(strict=True)",
        }},
    )
