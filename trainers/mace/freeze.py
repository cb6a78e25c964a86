"""``train.freeze: head_only``: train the readout of one head, keep everything else bit for bit."""
from __future__ import annotations

from typing import Any, Dict

from launcher.core.errors import ConfigError


class HeadFreeze:
    """``freeze: head_only``: only the readout entries that feed the chosen head train.

    Multi-head readouts share weight tensors across heads; after each update the entries of the
    other heads (and everything outside the readouts) are put back bit for bit.
    """

    def __init__(self, model: Any, sample_batch: Any, n_heads: int) -> None:
        import torch

        self.params: Dict[str, Any] = {}
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("readouts."))
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise ConfigError("train.freeze: head_only found no readout parameters in this model")
        masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in trainable.items()}
        if n_heads > 1:
            model.zero_grad(set_to_none=True)
            out = model(sample_batch.to_dict(), training=True, compute_force=False)
            out["energy"].sum().backward()
            masks = {n: (p.grad is not None) & (p.grad != 0) if p.grad is not None else torch.zeros_like(p, dtype=torch.bool)
                     for n, p in trainable.items()}
            model.zero_grad(set_to_none=True)
        self.masks = masks
        self.frozen = {n: p.detach().clone() for n, p in trainable.items()}
        self.trainable = trainable

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for n, p in self.trainable.items():
                p.copy_(torch.where(self.masks[n], p, self.frozen[n]))

    def state_dict(self) -> Dict[str, Any]:
        return {"masks": self.masks, "frozen": self.frozen}

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        self.masks = {n: st["masks"][n] for n in self.trainable}
        self.frozen = {n: st["frozen"][n] for n in self.trainable}
