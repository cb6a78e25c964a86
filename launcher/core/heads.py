"""The heads a run names (``train.head_key``, ``eval.heads``) against the heads of a multi-head model.

Preflight reads a model's heads from its manifest or model file without torch (``launcher.models``,
``trainers.mace.model_files``) and asks here, so both give the job's verdict in the same words.
"""
from __future__ import annotations

from typing import Any, List, Sequence


def uses_head_key(spec: Any) -> bool:
    """Whether the task reads ``train.head_key``: an evaluate of ``eval.heads`` alone (no ``data.<eval.split>``)
    evaluates the heads it names and no other."""
    return not (spec.task == "evaluate" and spec.eval.heads and not getattr(spec.data, spec.eval.split, None))


def head_problems(spec: Any, heads: Sequence[str], where: str) -> List[str]:
    """``train.head_key`` (a multi-head model's) and every ``eval.heads`` name (any model whose heads are
    known) must be heads of the model ``where`` names; one line each, listing its heads."""
    heads = [str(h) for h in heads]
    if not heads:
        return []
    listed = ", ".join(heads)
    out: List[str] = []
    if len(heads) > 1 and uses_head_key(spec) and spec.train.head_key not in heads:
        out.append(f"train.head_key: '{spec.train.head_key}' is not a head of the model in {where}; "
                   f"its heads: {listed}")
    out += [f"eval.heads: '{name}' is not a head of the model in {where}; its heads: {listed}"
            for name in (spec.eval.heads or {}) if name not in heads]
    return out
