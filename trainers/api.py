"""The interface every backend implements, and the context a job hands it.

A backend is one folder under ``trainers/`` (or any installed package), one Hydra config file
``conf/backend/NAME.yaml`` and one entry point in the group ``mlip_launch.backends``
(``NAME = "package.module:Class"``). The launcher finds it there and calls, in this order:

- ``prestart(argv, spec)`` (optional): at launcher start-up, before the config is composed; may
  start something slow (FairChem's interpreter) and return a handle, which travels with the
  :class:`JobContext` (``ctx.prestarted``) to ``run``. The launcher closes it if it is never used.
- ``check(spec)``: the backend's own preflight problems, one line each naming the key; the keys
  this backend cannot honour are refused here, before anything runs.
- ``describe(ctx)``: what a dry run prints.
- ``run(ctx)``: run ``ctx.spec.task`` (train, finetune, resume, evaluate, infer or export);
  returns a small JSON-able result (``epochs_done``, best metrics...).
- ``model_globals`` (optional attribute, default None): the fully qualified names a model file of this
  backend may refer to in its pickle, beyond what torch's weights-only unpickler allows by itself;
  preflight refuses files naming anything else (``launcher.model_files``) unless ``data.trust_pickles``.

Heavy imports (torch, mace, fairchem) belong inside the backend's functions, never at module level:
preflight and dry runs import the backend module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, runtime_checkable

from launcher.core.errors import NotImplementedBackend
from launcher.core.layout import RunLayout
from launcher.core.schema import TRAINING_TASKS, RunSpec


@runtime_checkable
class Prestarted(Protocol):
    """Whatever a backend's ``prestart`` returns: closed by the launcher when the run does not use it."""

    def close(self) -> None: ...


@dataclass
class JobContext:
    spec: RunSpec
    layout: RunLayout
    resume: bool = False          # an unfinished run of the same spec is in layout: continue it
    attempt: int = 1              # how many times this run dir has been started (requeues included)
    prestarted: Optional[Any] = None  # what the backend's prestart() returned, for this run only
    extra: Dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What the launcher needs of a backend (see the module docstring for when each is called)."""

    name: str

    def check(self, spec: RunSpec) -> List[str]: ...

    def describe(self, ctx: JobContext) -> str: ...

    def run(self, ctx: JobContext) -> Dict[str, Any]: ...


def prestart_of(backend: Any, argv: Sequence[str], spec: Optional[RunSpec] = None) -> Optional[Any]:
    """Call the backend's optional ``prestart`` hook; never raises (an optimization must not stop a run)."""
    hook = getattr(backend, "prestart", None)
    if hook is None:
        return None
    try:
        return hook(argv, spec)
    except Exception:  # noqa: BLE001
        return None


def unsupported_task(spec: RunSpec) -> NotImplementedBackend:
    return NotImplementedBackend(f"backend={spec.backend}: task={spec.task} is not implemented yet")


def run_task(ctx: JobContext, *, train: Callable[[JobContext], Dict[str, Any]],
             predict: Callable[..., Dict[str, Any]], export: Callable[[JobContext], Dict[str, Any]]) -> Dict[str, Any]:
    """Dispatch ``ctx.spec.task``: train/finetune/resume -> ``train``, evaluate/infer -> ``predict`` (with
    ``with_metrics``), export -> ``export``. A backend whose tasks split this way calls it from ``run``."""
    task = ctx.spec.task
    if task in TRAINING_TASKS:
        return train(ctx)
    if task in ("evaluate", "infer"):
        return predict(ctx, with_metrics=(task == "evaluate"))
    if task == "export":
        return export(ctx)
    raise unsupported_task(ctx.spec)
