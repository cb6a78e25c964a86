"""What a model file given to the MACE trainer holds, judged before the job's torch.load.

The job (``trainers.mace.model_io``) takes a pickled mace module (``.model``), our training checkpoint, a mace
checkpoint (``{"model": state_dict}``) or a plain state dict (the last two with a model config from a manifest or
``train.input_json``). Anything else it refuses only after importing torch and reading the file; preflight reads
the archive's ``data.pkl`` here with stand-ins for every class it names, so nothing in the file runs, no torch is
imported and the verdict is the job's.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, List, Optional

CHECKPOINT_FORMAT = "mlip-launch/mace-checkpoint"  # trainers.mace.model_io.CHECKPOINT_FORMAT (no torch here)


class _Named:
    """A stand-in for any class a pickle names: records the name, runs nothing."""

    where = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state  # a pickled module's attributes (its heads among them)


class _Outline(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):  # state dicts: a plain container, safe to build
            return collections.OrderedDict
        return type(name, (_Named,), {"where": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        return _Named()


def outline(path: Path) -> Optional[Any]:
    """The top-level object of a ``torch.save`` zip archive, every class a stand-in; None when unreadable here
    (a legacy-format file: the job's loader decides)."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return None
            return _Outline(io.BytesIO(zf.read(pkl))).load()
    except Exception:  # noqa: BLE001 - an odd archive: the job's own loader gives its verdict
        return None


def _kind(obj: Any) -> str:
    """``module`` (a pickled nn.Module), ``checkpoint`` (ours), ``state`` (a state dict or mace checkpoint),
    or a description of what it is instead."""
    if isinstance(obj, _Named):
        return "module" if obj.where.startswith(("mace.", "torch.nn.")) else f"an object of {obj.where}"
    if isinstance(obj, dict):
        if obj.get("format") == CHECKPOINT_FORMAT:
            return "checkpoint"
        if isinstance(obj.get("model"), dict) or (obj and all(isinstance(v, _Named) for v in obj.values())):
            return "state"
        keys = ", ".join(map(str, list(obj)[:6]))
        return f"a mapping of {keys}" if keys else "an empty mapping"
    return f"a {type(obj).__name__}"


def _heads(obj: Any, kind: str) -> List[str]:
    """The heads a mace module or our checkpoint names (empty when it does not say)."""
    if kind == "module":
        state = getattr(obj, "state", None)
        heads = state.get("heads") if isinstance(state, dict) else None
    elif kind == "checkpoint":
        cfg = obj.get("model_config")
        heads = cfg.get("heads") if isinstance(cfg, dict) else None
    else:
        heads = None
    return [str(h) for h in heads] if isinstance(heads, (list, tuple)) else []


def _head_problem(spec: Any, p: Path, obj: Any, kind: str) -> List[str]:
    """``train.head_key`` must be a head of a multi-head model the task uses as it is (as the job's head_of), and
    so must every ``eval.heads`` name."""
    from launcher.core.heads import head_problems

    if spec.task == "train" or (spec.task == "finetune" and spec.train.input_json):
        return []  # train builds its model; a finetune with a model.json may add heads
    return head_problems(spec, _heads(obj, kind), str(p))


def model_file_problems(spec: Any) -> List[str]:
    """The job's refusals of ``model_in`` / ``model.weights`` files, one line each naming the key and file."""
    problems: List[str] = []
    has_config = bool(spec.model.manifest or spec.train.input_json)
    for key in ("model_in", "model.weights"):
        value = spec.model_in if key == "model_in" else spec.model.weights
        p = Path(value) if value else None
        if p is None or not p.is_file() or p.name.endswith(".json"):
            continue
        obj = outline(p)
        if obj is None:
            continue
        kind = _kind(obj)
        if key == "model_in":
            problems += _head_problem(spec, p, obj, kind)
        if p.suffix == ".model":
            if kind != "module":
                problems.append(f"{key}: {p} does not hold a mace model (a .model file is a pickled module; "
                                f"this holds {kind if kind not in ('checkpoint', 'state') else 'weights only'})")
            continue
        if kind == "module":  # outside a .model file only weights are read (torch.load weights_only)
            problems.append(f"{key}: {p} holds a pickled module, which is read only from a .model file "
                            "(rename it to .model)")
        elif kind not in ("checkpoint", "state"):
            problems.append(f"{key}: {p} holds {kind}: neither a MACE model, an mlip-launch checkpoint nor a state "
                            "dict (a model of another backend?)")
        elif kind == "state" and not has_config and not (key == "model_in" and spec.model.weights):
            problems.append(f"{key}: {p} holds weights only; they need their model config: set model.manifest or "
                            "train.input_json")
    return problems
