"""Low-rank adapters (LoRA) on the equivariant linear layers of a MACE model (``train.freeze: lora``).

An e3nn ``o3.Linear`` holds one weight block per irrep path (``mul_in x mul_out``, shared by the 2l+1
components of the irrep), flattened in the order of its instructions. The adapter of a layer adds to each
block a low-rank product ``scale * down @ up`` (``down``: ``mul_in x r``, ``up``: ``r x mul_out``): it acts
on the multiplicity channels only, so the adapted layer is an ``o3.Linear`` with other weights and the model
stays equivariant. ``up`` starts at zero: the adapted model starts equal to the base model.

The layer runs with ``weight + delta`` passed to its own forward (a forward pre-hook), and its state dict
reports that sum under ``weight`` without the adapter (a state-dict hook): every state dict of an adapted
model (best_model.pt, the checkpoint's model) is the plain model with the adapters merged, loadable without
this code. The base weights and the adapters travel in the checkpoint's ``freeze`` entry
(:meth:`trainers.mace.freeze.LoraFreeze.state_dict`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch

from launcher.core.errors import ConfigError

PATHS_KEY = "lora"   # the adapter's name inside its o3.Linear (state dict keys <layer>.lora.*, left out when saved)


class LinearAdapter(torch.nn.Module):
    """The low-rank update of one ``o3.Linear``: a ``down``/``up`` pair per weighted irrep path."""

    def __init__(self, linear: Any, rank: int, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.shapes: List[Tuple[int, int]] = [tuple(ins.path_shape) for ins in linear.instructions]
        p = linear.weight
        self.down = torch.nn.ParameterList()
        self.up = torch.nn.ParameterList()
        for mul_in, mul_out in self.shapes:
            r = min(rank, mul_in, mul_out)
            # down ~ N(0, 1/r): a unit step of ``up`` moves each weight entry by about one unit, as in full
            # fine-tuning (e3nn's weights are O(1); the layer normalises by its fan-in itself)
            self.down.append(torch.nn.Parameter(torch.randn(mul_in, r, dtype=p.dtype, device=p.device) / math.sqrt(r)))
            self.up.append(torch.nn.Parameter(torch.zeros(r, mul_out, dtype=p.dtype, device=p.device)))

    def delta(self) -> torch.Tensor:
        """The update of the layer's flat weight vector (e3nn's layout: path blocks in instruction order)."""
        return torch.cat([(d @ u).reshape(-1) for d, u in zip(self.down, self.up)]) * self.scale


def _adapted_forward(module: Any, args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
    if len(args) > 1 or kwargs.get("weight") is not None:
        raise RuntimeError("train.freeze=lora: an adapted o3.Linear was called with external weights")
    return args, {**kwargs, "weight": module.weight + getattr(module, PATHS_KEY).delta()}


def _merged_state(module: Any, state: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(f"{prefix}{PATHS_KEY}.")]:
        del state[key]
    with torch.no_grad():
        state[f"{prefix}weight"] = module.weight + getattr(module, PATHS_KEY).delta()


def target_layers(model: Any, blocks: Sequence[str]) -> Dict[str, Any]:
    """The weighted ``o3.Linear`` layers inside ``blocks`` (``interactions``, ``products``, ``readouts``), by name."""
    from e3nn import o3

    return {name: m for name, m in model.named_modules()
            if name.split(".")[0] in blocks and isinstance(m, o3.Linear) and m.weight_numel > 0}


def widest_rank(layers: Dict[str, Any]) -> int:
    """The largest rank any path of ``layers`` can use: ``min(mul_in, mul_out)`` of its widest path."""
    return max((min(ins.path_shape) for m in layers.values() for ins in m.instructions), default=0)


def attach(model: Any, rank: int, alpha: float, blocks: Sequence[str]) -> Dict[str, Any]:
    """Add adapters to ``model``'s layers in ``blocks``; every other parameter stops training. The adapted layers,
    by name. A rank beyond every path of those layers is a configuration error naming train.lora_rank."""
    layers = target_layers(model, blocks)
    if not layers:
        raise ConfigError(f"train.lora_blocks: no e3nn o3.Linear layer in {', '.join(blocks)} of this model "
                          "(train.freeze=lora adapts e3nn's linear layers; train.kernels=e3nn)")
    widest = widest_rank(layers)
    if rank > widest:
        raise ConfigError(f"train.lora_rank: {rank} is more than the adapted layers allow: their widest irrep path "
                          f"has {widest} channels; at most {widest}")
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers.values():
        m.add_module(PATHS_KEY, LinearAdapter(m, rank, alpha / rank))
        # public since torch 2.5; the private name (the same hook) before
        post_hook = getattr(m, "register_state_dict_post_hook", None) or m._register_state_dict_hook
        m._lora_handles = (m.register_forward_pre_hook(_adapted_forward, with_kwargs=True), post_hook(_merged_state))
    return layers


def merge(layers: Dict[str, Any]) -> None:
    """Fold each adapter into its layer's weight and remove it: the model is a plain mace model again."""
    with torch.no_grad():
        for m in layers.values():
            m.weight.copy_(m.weight + getattr(m, PATHS_KEY).delta())
            for handle in m._lora_handles:
                handle.remove()
            del m._lora_handles
            delattr(m, PATHS_KEY)


def adapter_parameters(layers: Dict[str, Any]) -> List[Any]:
    """The adapters' parameters in the order ``model.named_parameters()`` lists them (the optimizer's and EMA's)."""
    return [p for m in layers.values() for p in getattr(m, PATHS_KEY).parameters()]


def count(model: Any, layers: Dict[str, Any]) -> Tuple[int, int]:
    """``(adapter parameters, all parameters)`` of an adapted model."""
    return sum(p.numel() for p in adapter_parameters(layers)), sum(p.numel() for p in model.parameters())


def apply_lora_ema(model: Any, freeze: Dict[str, Any], shadow: Sequence[Any]) -> None:
    """Put a lora checkpoint's EMA into ``model`` (loaded with the checkpoint's merged weights): its base weights
    plus the EMA of the adapters, merged (what the run evaluated and kept as best)."""
    layers = attach(model, int(freeze["rank"]), float(freeze["alpha"]), list(freeze["blocks"]))
    params = adapter_parameters(layers)
    if set(freeze["base"]) != set(layers) or len(shadow) != len(params):
        raise ConfigError(f"model_in: the checkpoint's adapters ({len(freeze['base'])} layers, {len(shadow)} EMA "
                          f"tensors) do not fit this model ({len(layers)} layers, {len(params)} tensors)")
    with torch.no_grad():
        for n, m in layers.items():
            m.weight.copy_(freeze["base"][n])
        for p, s in zip(params, shadow):
            p.copy_(s)
    merge(layers)
    for p in model.parameters():
        p.requires_grad_(True)
