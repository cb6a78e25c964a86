"""The contract every backend implements (:class:`BackendBase`), and the context a job hands it.

A backend is one folder (under ``trainers/`` or in any installed package) holding a subclass of
:class:`BackendBase`, one Hydra config file ``conf/backend/NAME.yaml`` and one entry point in the group
``mlip_launch.backends`` (``NAME = "package.module:Class"``); docs/architecture.md walks through adding one.
The launcher (kernel and doors) names no backend: whatever it needs to know of one is a member below, each
optional one with its default declared here, and it reads them as plain attributes (no probing).

Called, in this order:

- ``prestart(argv, spec)``: at launcher start-up, before the config is composed; may start something slow
  (FairChem's interpreter) and return a handle, which travels with the :class:`JobContext`
  (``ctx.prestarted``) to ``run``. The launcher closes it if it is never used. Default: nothing.
- ``check(spec)`` (required): the backend's own preflight problems, one line each naming the key; the keys
  this backend cannot honour are refused here, before anything runs.
- ``check_launch(spec, params)``: the launcher settings (``hydra.launcher.*``) it cannot honour. Default: none.
- ``describe(ctx)`` (required): what a dry run prints.
- ``run(ctx)`` (required): run ``ctx.spec.task``; returns a small JSON-able result (``epochs_done``, best
  metrics...). With ``distributed = True`` every rank of a multi-process job calls it (ranks > 0 with
  ``ctx.extra["follower"]``); otherwise rank 0 alone does.

Declarations (class attributes, or properties where computing them costs an import):

- ``distributed``: trains as several in-process ranks (see ``launcher.worker``). Default False.
- ``key_docs``: run key -> how this backend honours it (or why it refuses it), for docs/schema.md's backend
  table (``launcher.schema_docs``). Default: none (every key as the launcher).
- ``objectives``: the ``eval.objective`` names a training of this backend records in logs/metrics.jsonl, a
  subset of the schema's ``OBJECTIVE_NAMES``. Default: none (an Optuna study over its trainings is refused).
- ``own_keys``: schema key -> what it is, for the keys only this backend reads (e.g. a native config file);
  preflight refuses them, when set, for every other backend (``launcher.backends.backend_problems``), so that
  no backend has to know another's keys. Default: none.
- ``model_globals``: the fully qualified names a model file of this backend may refer to in its pickle,
  beyond what torch's weights-only unpickler allows by itself; preflight refuses files naming anything else
  (``launcher.model_files``) unless ``data.trust_pickles``. Default None: no pickled model files to check.
- ``model_sources``: the files, relative to a run directory, beyond the standard checkpoint and manifest,
  from which this backend can start when that run directory is given as ``model_in``. Default: none.

A backend's other files in the run directory are its own: it names them under ``RunLayout.artifact(name)``
or ``RunLayout.native(name)``, never as new ``RunLayout`` members.

Heavy imports (torch, mace, fairchem) belong inside the backend's functions, never at module level:
preflight and dry runs import the backend module.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import (Any, Callable, Collection, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple,
                    runtime_checkable)

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


class BackendBase(abc.ABC):
    """What the launcher needs of a backend (see the module docstring for when each member is used)."""

    name: str = ""   # set by launcher.backends.get_backend to the name it was registered under
    distributed: bool = False
    key_docs: Mapping[str, str] = MappingProxyType({})
    objectives: Tuple[str, ...] = ()
    own_keys: Mapping[str, str] = MappingProxyType({})
    model_globals: Optional[Collection[str]] = None
    model_sources: Tuple[str, ...] = ()

    def prestart(self, argv: Sequence[str], spec: Optional[RunSpec] = None) -> Optional[Prestarted]:
        """Start slow work early (see the module docstring); the default starts nothing."""
        return None

    @abc.abstractmethod
    def check(self, spec: RunSpec) -> List[str]:
        """This backend's preflight problems for ``spec``, one line each naming the key."""

    def check_launch(self, spec: RunSpec, params: Any) -> List[str]:
        """The launcher settings (``launcher.submit.LauncherParams``) this backend cannot honour; default none."""
        return []

    @abc.abstractmethod
    def describe(self, ctx: JobContext) -> str:
        """What a dry run prints for ``ctx``."""

    @abc.abstractmethod
    def run(self, ctx: JobContext) -> Dict[str, Any]:
        """Run ``ctx.spec.task`` in ``ctx.layout``; a small JSON-able result."""


Backend = BackendBase   # the name the rest of the code types backends with


def prestart_of(backend: BackendBase, argv: Sequence[str], spec: Optional[RunSpec] = None) -> Optional[Any]:
    """Call the backend's ``prestart``; never raises (an optimization must not stop a run)."""
    try:
        return backend.prestart(argv, spec)
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
