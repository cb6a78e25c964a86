"""``train.freeze``: which parameters a fine-tune trains; everything else stays bit for bit.

``head_only`` trains the readout of one head (:class:`HeadFreeze`); ``lora`` trains low-rank adapters on the
equivariant linear layers (:class:`LoraFreeze`, :mod:`trainers.mace.lora`). The loop calls :func:`make_freeze`
once in its setup, ``restore()`` after every update and saves ``state_dict()`` in the checkpoint.
No torch at import: preflight imports this module (:func:`preflight_problems`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from launcher.core.errors import ConfigError


def make_freeze(t: Any, model: Any, first_batch: Callable[[], Any], n_heads: int,
                note: Callable[[str], None]) -> Optional[Any]:
    """The freeze of ``train.freeze`` (``t``: the train section) applied to ``model``, or None; ``first_batch``
    builds a training batch (head_only probes which readout entries feed the head), ``note`` writes train.log."""
    if t.freeze == "head_only":
        return HeadFreeze(model, first_batch(), n_heads)
    if t.freeze == "lora":
        return LoraFreeze(model, t, note)
    return None


def preflight_problems(spec: Any) -> List[str]:
    """The lora keys set without ``train.freeze: lora``, and what lora cannot combine with on the core trainer, one
    line each (no torch)."""
    t = spec.train
    if t.freeze != "lora":
        from launcher.core.schema import TrainSpec

        default = TrainSpec()
        return [f"train.{key}: only used with train.freeze=lora (train.freeze is {t.freeze}); leave it unset"
                for key in ("lora_rank", "lora_alpha", "lora_blocks") if getattr(t, key) != getattr(default, key)]
    if spec.task not in ("finetune", "resume"):
        return []
    problems = []
    if t.kernels in ("cueq", "oeq"):
        problems.append(f"train.kernels: {t.kernels} replaces the e3nn linear layers train.freeze=lora adapts; "
                        "set train.kernels=e3nn (or auto, which picks e3nn for lora)")
    if t.compile:
        problems.append("train.compile: not supported with train.freeze=lora (the adapters hook e3nn's linear "
                        "layers); set train.compile=false")
    return problems


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


class LoraFreeze:
    """``freeze: lora``: adapters on the o3.Linear layers of ``train.lora_blocks`` train; every base parameter has
    ``requires_grad`` off, so the optimizer never sees it.

    The model's state dict is the merged plain model (:mod:`trainers.mace.lora`); this state holds what that
    cannot: the base weights of the adapted layers and the adapters, for an exact resume.
    """

    def __init__(self, model: Any, t: Any, note: Callable[[str], None]) -> None:
        from launcher.core.lora_spec import lora_blocks
        from trainers.mace import lora

        self.rank, self.blocks = int(t.lora_rank), lora_blocks(t)
        self.alpha = float(t.lora_alpha) if t.lora_alpha is not None else float(self.rank)
        self.layers = lora.attach(model, self.rank, self.alpha, self.blocks)
        trainable, total = lora.count(model, self.layers)
        note(f"train.freeze=lora: adapters of rank {self.rank} (alpha {self.alpha:g}, scale "
             f"{self.alpha / self.rank:g}) on {len(self.layers)} o3.Linear layers of {', '.join(self.blocks)}; "
             f"trainable {trainable} of {total} parameters ({100 * trainable / max(total, 1):.2f}%), "
             f"the base model's {total - trainable} frozen; artifacts hold the adapters merged")

    def restore(self) -> None:
        """Nothing to put back: the base parameters take no gradient and no optimizer step."""

    def state_dict(self) -> Dict[str, Any]:
        from trainers.mace.lora import PATHS_KEY

        return {"kind": "lora", "rank": self.rank, "alpha": self.alpha, "blocks": list(self.blocks),
                "base": {n: m.weight.detach().clone() for n, m in self.layers.items()},
                "adapters": {n: getattr(m, PATHS_KEY).state_dict() for n, m in self.layers.items()}}

    def load_state_dict(self, st: Dict[str, Any]) -> None:
        """The base weights and adapters of a checkpoint (the model itself was loaded merged)."""
        import torch

        from trainers.mace.lora import PATHS_KEY

        if st.get("kind") != "lora" or (st["rank"], list(st["blocks"])) != (self.rank, list(self.blocks)) \
                or st["alpha"] != self.alpha or set(st["base"]) != set(self.layers):
            raise ConfigError(f"train.freeze: the checkpoint's freeze ({st.get('kind', 'head_only')}, rank "
                              f"{st.get('rank')}, alpha {st.get('alpha')}, blocks {st.get('blocks')}) is not this "
                              f"run's (lora, rank {self.rank}, alpha {self.alpha:g}, blocks {self.blocks})")
        with torch.no_grad():
            for n, m in self.layers.items():
                m.weight.copy_(st["base"][n])
                getattr(m, PATHS_KEY).load_state_dict(st["adapters"][n])
