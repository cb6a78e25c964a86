"""Loading MACE model files without running code from them.

A mace ``.model`` is a pickled module: plain ``torch.load`` would run whatever a crafted file asks for.
Every MACE file a user names (``model_in``, a manifest's weights, ``model.weights``) is instead read
with torch's weights-only unpickler, which builds only the classes and calls only the functions of
:data:`MODEL_GLOBALS` (named in full; derived from real files: every interaction, radial basis,
distance transform, gate and readout our model.json can build, the multi-head MACE-MH-1 layout and
``mace_run_train`` output). Three of those would still run code, so they are replaced while loading:

- ``torch.fx.graph_module.reduce_graph_module`` ``exec``s the source text stored in the file (mace's
  symmetric contractions hold fx graph modules): a plain module with the stored parameters and
  buffers stands in, and the source is never run;
- e3nn's ``CodeGenMixin.__setstate__`` loads TorchScript stored as bytes: that state is dropped;
- ``builtins.getattr`` (how a gate such as ``torch.tanh`` is pickled) is limited to a few torch
  activation functions; the fx tracer class a graph module refers to is a placeholder.

Modules of the allow-list are restored from their state only (a call to their constructor from the
file is refused). What comes back is a source of a config and a state dict, never run as it is: the
model that runs is rebuilt by :func:`trainers.mace.model_config.build_model` (see ``model_io``).
``data.trust_pickles=true`` loads with plain pickle instead (trusted files only).
No torch at module level: preflight reads :data:`MODEL_GLOBALS`.
"""
from __future__ import annotations

import functools
import importlib
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

from launcher.core.errors import ConfigError
from launcher.core.safe_pickle import TRUST_HINT, model_file_problem, unpickler_reason

_GRAPH_MODULE = "torch.fx.graph_module.reduce_graph_module"
_GETATTR = "builtins.getattr"
_TRACER = "torch.fx._symbolic_trace.Tracer"
#: torch functions a pickled gate may name (``getattr(torch._C._VariableFunctionsClass, NAME)``).
GATE_FUNCTIONS = frozenset({"tanh", "abs", "sigmoid", "relu", "exp", "sin", "cos", "erf"})

MODEL_GLOBALS: Tuple[str, ...] = (
    # e3nn
    "e3nn.math._normalize_activation.normalize2mom",
    "e3nn.nn._activation.Activation",
    "e3nn.nn._fc.FullyConnectedNet",
    "e3nn.nn._fc._Layer",
    "e3nn.nn._gate.Gate",
    "e3nn.nn._extract.Extract",
    "e3nn.o3._irreps.Irrep",
    "e3nn.o3._irreps.Irreps",
    "e3nn.o3._irreps._MulIr",
    "e3nn.o3._linear.Instruction",
    "e3nn.o3._linear.Linear",
    "e3nn.o3._spherical_harmonics.SphericalHarmonics",
    "e3nn.o3._tensor_product._instruction.Instruction",
    "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
    "e3nn.o3._tensor_product._tensor_product.TensorProduct",
    # mace
    "mace.modules.blocks.AtomicEnergiesBlock",
    "mace.modules.blocks.EquivariantProductBasisBlock",
    "mace.modules.blocks.LinearDipoleReadoutBlock",
    "mace.modules.blocks.LinearNodeEmbeddingBlock",
    "mace.modules.blocks.LinearReadoutBlock",
    "mace.modules.blocks.NonLinearDipoleReadoutBlock",
    "mace.modules.blocks.NonLinearReadoutBlock",
    "mace.modules.blocks.RadialEmbeddingBlock",
    "mace.modules.blocks.RealAgnosticAttResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticDensityInteractionBlock",
    "mace.modules.blocks.RealAgnosticDensityResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticInteractionBlock",
    "mace.modules.blocks.RealAgnosticResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticResidualNonLinearInteractionBlock",
    "mace.modules.blocks.ScaleShiftBlock",
    "mace.modules.gate.GatedEquivariantBlock",
    "mace.modules.irreps_tools.reshape_irreps",
    "mace.modules.models.MACE",
    "mace.modules.models.ScaleShiftMACE",
    "mace.modules.radial.AgnesiTransform",
    "mace.modules.radial.BesselBasis",
    "mace.modules.radial.ChebychevBasis",
    "mace.modules.radial.GaussianBasis",
    "mace.modules.radial.PolynomialCutoff",
    "mace.modules.radial.RadialMLP",
    "mace.modules.radial.SoftTransform",
    "mace.modules.radial.ZBLBasis",
    "mace.modules.symmetric_contraction.Contraction",
    "mace.modules.symmetric_contraction.SymmetricContraction",
    # torch
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.functional.silu",
    "torch.nn.functional.sigmoid",
    "torch.nn.functional.tanh",
    "torch.fx._symbolic_trace.Tracer",
    "torch._C._VariableFunctionsClass",
    "torch.torch_version.TorchVersion",
    # numpy values and arrays some models keep as attributes
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
    # replaced while loading (see the module docstring)
    _GRAPH_MODULE,
    _GETATTR,
)


def model_file_problems(key: str, path: Path) -> List[str]:
    """Preflight: the one-line problem when ``path`` names a global off :data:`MODEL_GLOBALS` (no torch)."""
    problem = model_file_problem(key, Path(path), MODEL_GLOBALS)
    return [problem] if problem else []


def _graph_module_state(body: Dict[str, Any], import_block: str = "") -> Any:
    """Stands in for ``reduce_graph_module``: the stored parameters, buffers and submodules; the stored
    source (``body["_code"]``, ``import_block``) is never executed."""
    import torch

    m = torch.nn.Module()
    for name in ("_parameters", "_buffers", "_modules"):
        part = body.get(name) if isinstance(body, dict) else None
        if isinstance(part, dict):
            getattr(m, name).update(part)
    persistent = body.get("_non_persistent_buffers_set") if isinstance(body, dict) else None
    if isinstance(persistent, set):
        m._non_persistent_buffers_set = set(persistent)
    return m


def _gate_function(owner: Any, name: Any) -> Any:
    """Stands in for ``getattr``: only ``torch.<activation>`` as a pickled gate names it."""
    import pickle

    import torch

    if owner is torch._C._VariableFunctionsClass and name in GATE_FUNCTIONS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"getattr({getattr(owner, '__name__', type(owner).__name__)}, {name!r}) "
                                 "is not allowed in a model file")


class _Reference:
    """Stands in for a class a file only refers to (an fx graph module's tracer class): never built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import pickle

        raise pickle.UnpicklingError("a class named only as a reference cannot be built from a model file")


def _state_only(cls: type, full_name: str) -> type:
    """A subclass of module class ``cls`` that the unpickler can restore from state but not construct by
    calling it, and that drops e3nn's stored TorchScript (``__codegen__``) instead of loading it."""
    import pickle

    import torch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(f"{full_name} may only be restored from its state in a model file")

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        state.pop("__codegen__", None)
        torch.nn.Module.__setstate__(self, state)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__setstate__": __setstate__,
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


@functools.lru_cache(maxsize=1)
def _safe_globals() -> Tuple[Tuple[Any, str], ...]:
    """``(object, full name)`` for torch's ``safe_globals``: the allow-list as it is loaded."""
    import torch

    out: List[Tuple[Any, str]] = [(_graph_module_state, _GRAPH_MODULE), (_gate_function, _GETATTR),
                                  (_Reference, _TRACER)]
    for full in MODEL_GLOBALS:
        if full in (_GRAPH_MODULE, _GETATTR, _TRACER):
            continue
        module, _, name = full.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # numpy 2 warns on numpy.core
                obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue        # another version of mace/e3nn/numpy: its files cannot name it either
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            obj = _state_only(obj, full)
        out.append((obj, full))
    return tuple(out)


def load_model_file(path: Path, *, key: str = "model_in", trust: bool = False) -> Any:
    """What torch file ``path`` holds, loaded without running code from it (``trust``: plain pickle).

    A global off the allow-list is a ConfigError naming ``key``, the file and the global, found by
    scanning the file before torch reads it (the same check preflight makes).
    """
    import mace  # noqa: F401 - mace's own set-up of torch.load for e3nn happens before ours
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    if trust:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    problems = model_file_problems(key, path)
    if problems:
        raise ConfigError(problems[0])
    try:
        with torch.serialization.safe_globals(list(_safe_globals())):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the restricted unpickler refused is bad input
        raise ConfigError(f"{key}: {path} could not be loaded without running code from it "
                          f"({unpickler_reason(str(e))}); {TRUST_HINT}") from None
