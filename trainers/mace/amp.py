"""Mixed precision of the MACE backend (``train.amp``, ``eval.amp``).

On CUDA the forward pass runs under autocast to bfloat16 where the GPU supports it (Ampere and later), else to
float16 with a gradient scaler (float16's range is too narrow for unscaled gradients). The loss is computed outside
autocast on float32 outputs, and the parameters, hence the optimizer state, stay float32. Autocast leaves
float64 untouched, so both keys need ``train.dtype=float32`` (preflight says so). On CPU the MACE backend refuses
them: mace-torch 0.3.16's e3nn tensor products fail under CPU autocast (``tensordot``: both inputs should have
same dtype), with e3nn and cuEquivariance kernels alike.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List


def amp_dtype(device: Any) -> Any:
    """The autocast dtype on ``device``: bfloat16 where supported, else float16."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: Any, enabled: bool) -> Any:
    """Autocast on a CUDA ``device`` when ``enabled`` (elsewhere a no-op: preflight refused amp on CPU)."""
    import torch

    if enabled and getattr(device, "type", str(device)) == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def needs_scaler(device: Any, enabled: bool) -> bool:
    """A gradient scaler only for float16 (bfloat16 has float32's range)."""
    import torch

    return bool(enabled) and getattr(device, "type", str(device)) == "cuda" and amp_dtype(device) == torch.float16


def as_float32(out: Dict[str, Any]) -> Dict[str, Any]:
    """The model's outputs with lower-precision tensors widened, for a float32 loss."""
    import torch

    return {k: v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v
            for k, v in out.items()}


def describe(device: Any, enabled: bool) -> str:
    """One line for train.log: what train.amp does on ``device``."""
    if not enabled:
        return "amp: off"
    if getattr(device, "type", str(device)) != "cuda":
        return "amp: off (device resolved to CPU, where the MACE backend runs no autocast)"
    name = str(amp_dtype(device)).replace("torch.", "")
    return f"amp: autocast to {name}" + (" with a gradient scaler" if name == "float16" else "") + \
           "; loss and optimizer state in float32"


def problems(spec: Any) -> List[str]:
    """Preflight: amp keys the MACE backend cannot honour for ``spec`` (one line each)."""
    from launcher.core.schema import TRAINING_TASKS, is_cuda

    keys = []
    if spec.train.amp and spec.task in TRAINING_TASKS:
        keys.append("train.amp")
    if spec.eval.amp and spec.task in ("evaluate", "infer"):
        keys.append("eval.amp")
    out = []
    for key in keys:
        # On a CPU device amp is stated in train.log and runs no autocast, as on the FairChem backends: mace-torch's
        # e3nn tensor products fail under CPU autocast, and a run file written for GPUs still runs on a laptop.
        if spec.train.dtype != "float32" and is_cuda(spec.device):
            out.append(f"{key}: needs train.dtype=float32 (autocast leaves float64 as it is), got "
                       f"train.dtype={spec.train.dtype}")
    return out
