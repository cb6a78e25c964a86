"""What a dataset holds: counts, elements, sizes, labels and shards (``launch-data info``)."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from launcher.core.errors import ConfigError

from data.datasets import detect_format, open_dataset, shard_lengths
from data.util import progress_bar


def summarize(path: str | os.PathLike, *, progress: bool = True,
              trust_pickles: bool = False) -> dict[str, Any]:
    """Scan every entry once and return a JSON-friendly summary (ConfigError for an empty dataset)."""
    if trust_pickles and detect_format(path) == "aselmdb":
        raise ConfigError(f"--trust-pickles: applies to FairChem LMDB input only ({path} is an "
                          f"ASE-database LMDB, whose rows are JSON, not pickles)",
                          key="--trust-pickles")
    ds = open_dataset(path, trust_pickles=trust_pickles)
    if len(ds) == 0:
        raise ConfigError(f"{path}: dataset holds no entries (every shard's length is 0)")
    elements: Counter = Counter()
    natoms: Counter = Counter()
    labels = Counter()
    config_types: Counter = Counter()
    isolated = 0
    for i in progress_bar(range(len(ds)), progress, desc="scan", unit="struct"):
        s = ds[i]
        elements.update(s.numbers.tolist())
        natoms[s.natoms] += 1
        for label in ("energy", "forces", "stress"):
            labels[label] += getattr(s, label) is not None
        labels["pbc"] += bool(s.pbc.any())
        config_types[s.config_type] += 1
        isolated += s.isolated
    from ase.data import chemical_symbols

    return {
        "path": str(Path(path)),
        "format": detect_format(path),
        "count": len(ds),
        "elements": {chemical_symbols[z]: n for z, n in sorted(elements.items())},
        "natoms": dict(sorted(natoms.items())),
        "labels": {k: int(v) for k, v in labels.items()},
        "config_types": dict(config_types.most_common()),
        "isolated": int(isolated),
        "shards": [{"path": str(p), "count": n} for p, n in shard_lengths(path)],
    }


def _histogram(natoms: dict[int, int], bins: int = 8) -> list[tuple[str, int]]:
    sizes = np.repeat(np.array(list(natoms.keys())), np.array(list(natoms.values())))
    lo, hi = int(sizes.min()), int(sizes.max())
    if hi - lo + 1 <= bins:
        return [(str(k), v) for k, v in natoms.items()]
    edges = np.unique(np.linspace(lo, hi + 1, bins + 1).astype(int))
    counts, _ = np.histogram(sizes, bins=edges)
    return [(f"{a}-{b - 1}", int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)]


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text for the terminal."""
    n = summary["count"]
    lines = [f"{summary['path']}  ({summary['format']})", f"structures: {n}"]
    lines.append("elements:   " + ", ".join(f"{el} ({c} atoms)"
                                            for el, c in summary["elements"].items()))
    lab = summary["labels"]
    lines.append("labels:     " + ", ".join(f"{k} {lab.get(k, 0)}/{n}"
                                            for k in ("energy", "forces", "stress")))
    lines.append(f"periodic:   {lab.get('pbc', 0)}/{n}    isolated atoms: {summary['isolated']}")
    lines.append("config_type: " + ", ".join(f"{k} ({v})"
                                             for k, v in summary["config_types"].items()))
    lines.append("natoms histogram:")
    rows = _histogram(summary["natoms"])
    width = max(c for _, c in rows) or 1
    for label, c in rows:
        lines.append(f"  {label:>9} | {'#' * max(1 if c else 0, round(30 * c / width)):<30} {c}")
    lines.append(f"shards ({len(summary['shards'])}):")
    for sh in summary["shards"]:
        lines.append(f"  {sh['path']}: {sh['count']}")
    return "\n".join(lines)
