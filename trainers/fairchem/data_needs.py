"""What the data needs of FairChem's config, decided from a bounded sample of the selected records."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass
class DataSample:
    """PBC settings and atom tags seen in a sample of the records a run reads."""

    n: int = 0
    pbc: set = field(default_factory=set)                   # distinct (bool, bool, bool)
    tag_sets: List[frozenset] = field(default_factory=list)  # per sampled record, its distinct tags

    def add(self, pbc: Any, tags: Any) -> None:
        self.n += 1
        if pbc is not None:
            self.pbc.add(tuple(bool(x) for x in pbc))
        if tags is not None:
            self.tag_sets.append(frozenset(int(x) for x in tags))

    @property
    def mixed_pbc(self) -> bool:
        return len(self.pbc) > 1


def apply_data_needs(config: Dict[str, Any], sample: DataSample, overridden: List[str]) -> List[str]:
    """Settings the sampled data needs to run at all; one note each. Settings given in backend_args stay."""
    notes: List[str] = []
    model = config["model"]
    name = str(model.get("name", ""))
    if sample.mixed_pbc and model.get("use_pbc", True) and not model.get("use_pbc_single", False) \
            and "model.use_pbc_single" not in overridden:
        model["use_pbc_single"] = True
        kinds = ", ".join("".join("T" if x else "F" for x in p) for p in sorted(sample.pbc))
        notes.append(f"model.use_pbc_single: True (the data mixes periodic and non-periodic cells, pbc {kinds}, "
                     "which FairChem cannot batch together; graphs are built per structure)")
    if "gemnet_oc" in name and model.get("quad_interaction", False) and "model.qint_tags" not in overridden:
        qint = list(model.get("qint_tags") if model.get("qint_tags") is not None else [0, 1, 2])
        lacking = [tags for tags in sample.tag_sets if not tags & set(qint)]
        if lacking:
            extra = sorted(set().union(*lacking) - set(qint))
            model["qint_tags"] = sorted(set(qint) | set(extra))
            notes.append(f"model.qint_tags: {qint} -> {model['qint_tags']} ({len(lacking)} of {sample.n} sampled "
                         f"structures have no atom tagged {qint}, and GemNet-OC's quadruplets need one)")
    return notes
