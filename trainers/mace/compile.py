"""``train.compile``: the MACE training step through ``torch.compile``.

The module is rebuilt the way mace-torch prepares one for compilation (``mace.tools.compile.prepare``: e3nn's
TorchScript code generation off, the symmetric contractions traced by ``torch.fx``, ``autograd.grad`` allowed in
the graph so forces stay in it) and compiled with dynamic shapes, as graphs change size with every batch. Only
the training forward is compiled; validation runs the same (prepared) module eagerly.
"""
from __future__ import annotations

from typing import Any, Dict


def prepare_model(cfg: Dict[str, Any], model: Any) -> Any:
    """A module built from ``cfg`` through mace's compile preparation, holding ``model``'s weights."""
    from mace.tools.compile import prepare

    from trainers.mace.model_config import build_model

    prepared = prepare(build_model)(cfg)
    missing, unexpected = prepared.load_state_dict(model.state_dict(), strict=False)
    # tracing drops the symmetric contractions' "*_zeroed" flags (constants the traced code no longer reads)
    stray = [k for k in unexpected if not k.endswith("_zeroed")]
    if missing or stray:
        raise RuntimeError(f"train.compile: the prepared model does not take the weights (missing {missing[:3]}, "
                           f"unexpected {stray[:3]})")
    return prepared


def compile_module(module: Any) -> Any:
    """``module`` compiled for training (dynamic shapes: every batch has its own number of atoms and edges)."""
    import torch

    return torch.compile(module, dynamic=True, fullgraph=False)
