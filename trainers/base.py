"""The one small interface every backend implements.

A backend receives a :class:`JobContext` (the validated RunSpec, its RunLayout, and whether the
run directory holds an unfinished run of the same spec to resume) and runs ``spec.task``.
Heavy imports (torch, mace, fairchem) belong inside the backend's modules, never here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from launcher.errors import NotImplementedBackend
from launcher.layout import RunLayout
from launcher.schema import RunSpec


@dataclass
class JobContext:
    spec: RunSpec
    layout: RunLayout
    resume: bool = False          # an unfinished run of the same spec is in layout: continue it
    attempt: int = 1              # how many times this run dir has been started (requeues included)
    extra: Dict[str, Any] = field(default_factory=dict)


class Backend:
    """Base class: one method per task. Each returns a small JSON-able result (best metrics...)."""

    name = "base"

    # ---- before anything runs ----
    def preflight(self, spec: RunSpec) -> List[str]:
        """Backend-specific problems that can be found without running (one line each)."""
        return []

    def describe(self, ctx: JobContext) -> str:
        """What would execute for this spec (printed by a dry run)."""
        return f"{type(self).__module__}.{type(self).__name__}.{ctx.spec.task}(run_dir={ctx.layout.root})"

    # ---- tasks ----
    def run(self, ctx: JobContext) -> Dict[str, Any]:
        fn = getattr(self, ctx.spec.task, None)
        if fn is None:
            raise NotImplementedBackend(f"backend={ctx.spec.backend}: task={ctx.spec.task} is not implemented yet")
        return fn(ctx)

    def train(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=train is not implemented yet")

    def finetune(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=finetune is not implemented yet")

    def resume(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=resume is not implemented yet")

    def evaluate(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=evaluate is not implemented yet")

    def infer(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=infer is not implemented yet")

    def export(self, ctx: JobContext) -> Dict[str, Any]:
        raise NotImplementedBackend(f"backend={ctx.spec.backend}: task=export is not implemented yet")
