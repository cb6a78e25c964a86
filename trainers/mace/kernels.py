"""Which equivariant kernels a MACE model trains and predicts with (``train.kernels``).

``e3nn`` is mace-torch's reference implementation; ``cueq`` (NVIDIA cuEquivariance) and ``oeq``
(OpenEquivariance) are the accelerated ones ``mace_run_train --enable_cueq / --enable_oeq`` use. As there,
the module is converted with mace-torch's own converters after it is built or loaded, and weights are stored
in e3nn form only (checkpoints, best_model.pt, the manifest's model, every export): they load anywhere, and a
run may resume with other kernels than it started with.

Preflight only asks whether the packages can be found (no import): a dry run stays fast.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional, Sequence, Tuple

KERNELS = ("auto", "e3nn", "cueq", "oeq")
#: the import names each choice needs
PACKAGES: Dict[str, Tuple[str, ...]] = {"cueq": ("cuequivariance", "cuequivariance_torch"),
                                        "oeq": ("openequivariance",)}
#: cuEquivariance's GPU kernels; without them it runs its (slow) reference path
CUEQ_OPS = "cuequivariance_ops_torch"
INSTALL = {"cueq": "pip install 'mlip-launch[cueq]' (CPU reference path; on a GPU node 'mlip-launch[cuda]' "
                   "adds cuEquivariance's GPU ops for CUDA 12)",
           "oeq": "pip install 'mlip-launch[oeq]' (needs a CUDA GPU and its compiler at first use)"}


def _found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):   # a parent package that fails, or a module without a spec
        return False


def missing_packages(kind: str) -> List[str]:
    """The import names ``kind`` needs that cannot be found."""
    return [p for p in PACKAGES.get(kind, ()) if not _found(p)]


def preflight_problems(value: Any, *, key: str = "train.kernels") -> List[str]:
    """One line when ``value`` is unknown, or an explicit choice whose packages are missing."""
    if value not in KERNELS:
        return [f"{key}: expected one of {', '.join(KERNELS)}, got {value!r}"]
    missing = missing_packages(value)
    if missing:
        return [f"{key}: {value} needs {', '.join(missing)}, which is not installed; install it with "
                f"{INSTALL[value]}, or set {key}=auto"]
    return []


def _ops_import() -> Optional[str]:
    """None when cuEquivariance's GPU ops import, else why not."""
    try:
        importlib.import_module(CUEQ_OPS)
    except Exception as e:  # noqa: BLE001 - a broken CUDA library raises anything; the reason is logged
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return None


def choose(requested: str, device: Any, *, lora: bool = False) -> Tuple[str, str]:
    """``(kernels, why)`` for ``requested`` on ``device`` (a torch.device); ``lora``: adapters on e3nn's layers."""
    on_cuda = getattr(device, "type", str(device)) == "cuda"
    if requested == "e3nn":
        return "e3nn", "requested"
    if requested == "auto" and lora:
        return "e3nn", "auto: train.freeze=lora adapts e3nn's linear layers"
    if requested == "oeq":
        return "oeq", "requested" + ("" if on_cuda else "; OpenEquivariance's kernels are CUDA-only, this will fail on CPU")
    if requested == "cueq":
        if not on_cuda:
            return "cueq", "requested; on CPU cuEquivariance runs its reference path (slower than e3nn)"
        why = _ops_import()
        return "cueq", "requested" + (f"; its GPU ops do not import ({why}): reference path, slow" if why else
                                      ", with its GPU ops")
    if not on_cuda:
        return "e3nn", "auto: not on CUDA (cuEquivariance's kernels are GPU-only)"
    if missing_packages("cueq"):
        return "e3nn", f"auto: cuEquivariance is not installed ({INSTALL['cueq']})"
    why = _ops_import()
    if why:
        return "e3nn", f"auto: cuEquivariance's GPU ops package does not import ({why})"
    return "cueq", "auto: CUDA with cuEquivariance's GPU ops"


def convert(model: Any, kernels: str, device: Any) -> Any:
    """``model`` (e3nn form) as a module running ``kernels`` (the same module for e3nn)."""
    import copy

    dev = getattr(device, "type", str(device))
    if kernels == "cueq":
        from mace.cli.convert_e3nn_cueq import run

        return run(copy.deepcopy(model), device=dev).to(device)
    if kernels == "oeq":
        from mace.cli.convert_e3nn_oeq import run

        return run(copy.deepcopy(model), device=dev).to(device)
    return model


class E3nnForm:
    """The e3nn-form state dict of a module that runs other kernels, through one e3nn twin built once
    (mace-torch's converters build a new module per call; the checkpoint of every epoch need not)."""

    def __init__(self, model: Any, kernels: str, prepared_from: Optional[Dict[str, Any]] = None) -> None:
        """``prepared_from``: the config ``model`` was built from through mace's compile preparation, which
        drops a few constant flags from its state dict (the twin, built from that config, restores them)."""
        self.kernels = kernels
        self.twin = None
        param = next(model.parameters())
        if prepared_from is not None:
            from trainers.mace.model_config import build_model

            self.twin = build_model(prepared_from, param.dtype)
            return
        if kernels == "e3nn":
            return
        from mace.tools.scripts_utils import extract_config_mace_model

        config = extract_config_mace_model(model)
        self.args = (len(config["hidden_irreps"].slices()) - 1, config["correlation"], int(config["num_interactions"]),
                     config.get("use_reduced_cg", True), config.get("keep_last_layer_irreps", False))
        config.pop("cueq_config", None)
        config.pop("oeq_config", None)
        self.twin = model.__class__(**config).to(dtype=param.dtype)

    def state_dict(self, model: Any) -> Dict[str, Any]:
        """``model``'s weights in e3nn form (the twin's tensors: save them before the next call)."""
        if self.twin is None:
            return model.state_dict()
        if self.kernels == "e3nn":   # a prepared e3nn module: the same weights, the twin adds the flags
            self.twin.to(next(model.parameters()).device).load_state_dict(model.state_dict(), strict=False)
        elif self.kernels == "cueq":
            from mace.cli.convert_cueq_e3nn import transfer_weights

            transfer_weights(model, self.twin.to(next(model.parameters()).device), *self.args)
        else:   # oeq: the same weights; only the convolution's tensor product has no weights to carry
            dst = self.twin.state_dict()
            src = model.state_dict()
            self.twin.load_state_dict({k: src.get(k, v) if ".conv_tp." not in k else v for k, v in dst.items()})
        return self.twin.state_dict()


def trainable_names(model: Any) -> List[str]:
    """Names of the parameters the optimizer holds, in its order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _fits(v: Any, p: Any) -> bool:
    return not hasattr(v, "numel") or v.dim() == 0 or v.numel() == p.numel()


def _as(v: Any, p: Any) -> Any:
    return v.reshape(p.shape) if hasattr(v, "numel") and v.dim() > 0 else v


def adapt_training_state(ck: Dict[str, Any], model: Any, kernels: str,
                         old_names: Sequence[str]) -> Tuple[Dict[str, Any], Optional[str]]:
    """``ck`` (a checkpoint whose optimizer and EMA state were saved by a run on ``ck["kernels"]``) made loadable
    by ``model`` running ``kernels``; with the same kernels it is returned as is (exact resume). Otherwise the
    per-parameter state is carried over by name (cuEquivariance's linears add a unit axis: reshaped), and restarts
    for the parameters without a counterpart: the symmetric contractions, stored in another basis. Returns the
    checkpoint and a line for train.log."""
    was = ck.get("kernels", "e3nn")
    if was == kernels:
        return ck, None
    ck = dict(ck)
    params = dict(model.named_parameters())
    names = trainable_names(model)
    restarted = [n for n in names if n not in old_names]
    if ck.get("optimizer") is not None:
        old = dict(zip(old_names, (ck["optimizer"]["state"].get(i) for i in range(len(old_names)))))
        state = {j: {k: _as(v, params[n]) for k, v in old[n].items()} for j, n in enumerate(names)
                 if old.get(n) is not None and all(_fits(v, params[n]) for v in old[n].values())}
        groups = [dict(ck["optimizer"]["param_groups"][0], params=list(range(len(names))))]
        ck["optimizer"] = {"state": state, "param_groups": groups}
    if ck.get("ema") is not None:
        shadow = dict(zip(old_names, ck["ema"]["shadow_params"]))
        ck["ema"] = dict(ck["ema"], collected_params=None,
                         shadow_params=[_as(shadow[n], params[n]) if n in shadow else params[n].detach().clone()
                                        for n in names])
    return ck, (f"train.kernels: the checkpoint trained with {was}, this run with {kernels}: weights converted "
                f"exactly; optimizer moments{' and EMA averages' if ck.get('ema') else ''} carried over except for "
                f"{len(restarted)} of {len(names)} parameters (symmetric contractions, another basis), which restart")
