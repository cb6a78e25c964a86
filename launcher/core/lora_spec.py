"""``train.freeze: lora``: the adapter keys' own rules and block names (the adapters: trainers/mace/lora.py).
No project imports: the schema module imports this one."""
from __future__ import annotations

import math
from typing import Any, List

LORA_BLOCKS = ("interactions", "products", "readouts")   # train.lora_blocks=all, in the model's order


def lora_problems(spec: Any) -> List[str]:
    """Ranges of the lora keys, one line each (the task rule is the schema's)."""
    t, p = spec.train, []
    if t.lora_rank < 1:
        p.append(f"train.lora_rank: must be >= 1, got {t.lora_rank}")
    if t.lora_alpha is not None and not (t.lora_alpha > 0 and math.isfinite(t.lora_alpha)):
        p.append(f"train.lora_alpha: must be a number > 0 or null, got {t.lora_alpha}")
    return p


def lora_blocks(t: Any) -> List[str]:
    """``train.lora_blocks`` as a list of blocks, in the model's order."""
    named = set(str(t.lora_blocks).split("+"))
    return [b for b in LORA_BLOCKS if b in named or "all" in named]
