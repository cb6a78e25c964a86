"""Replay (``data.replay``) in the core trainer: which pretraining records are replayed, and in what order.

Selection (:func:`select`), seeded by the run seed: ``val_samples`` records of all the replay files are held
out for the replay errors, at most ``pool`` of the rest are candidates, and ``max_samples`` candidates are
selected (``random``, or ``fps`` on the base model's descriptors, :mod:`trainers.mace.replay_fps`). Only
these records are ever read. The result is cached in ``run_dir/replay/selection.json`` under a key of the
replay keys, the seed and the files' sizes and times: a resume reuses it, a changed input recomputes it.

Order (:class:`ReplayFeed`): the selected set is an endless stream of seeded passes (pass ``p`` is a
permutation seeded by ``(seed, p)``); micro-batch ``c`` of rank ``r`` of ``world`` takes stream positions
``(c * world + r) * k ...`` (``k`` replay structures per micro-batch). So the only state is ``c``, the
micro-batches done, which the checkpoint keeps with the loop state: a resume continues exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from data.replay import draw, locate, sizes_of
from launcher.core.errors import ConfigError
from launcher.core.replay_spec import replay_val_samples

SELECTION_VERSION = 1


def file_key(i: int, path: str) -> str:
    return f"data.replay.paths[{i}] ({path})"


def fingerprint(spec: Any) -> str:
    """The key of a selection: the replay keys, the seed, and each file's (shards') size and modification time."""
    from dataclasses import asdict

    files = []
    for p in spec.data.replay.paths:
        for shard in sorted(q for q in Path(p).iterdir() if q.is_file()) if Path(p).is_dir() else [Path(p)]:
            st = os.stat(shard)
            files.append([str(shard), st.st_size, st.st_mtime_ns])
    conf = {k: v for k, v in asdict(spec.data.replay).items() if k not in ("weight", "ratio")}
    raw = json.dumps({"v": SELECTION_VERSION, "replay": conf, "seed": int(spec.effective_seed), "files": files},
                     sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def check_elements(paths: Sequence[str], refs: np.ndarray, zs: Sequence[int], trust: bool) -> None:
    """ConfigError naming ``data.replay.paths[i]`` and the entry when a selected record holds an element the model
    lacks. Reads only the selected records (atomic numbers, decoded without building tensors where possible)."""
    from data.datasets import open_dataset
    from data.fastpickle import record_fields

    known = {int(z) for z in zs}
    for k, path in enumerate(paths):
        rows = refs[refs[:, 0] == k, 1]
        if not len(rows):
            continue
        ds = open_dataset(path, trust_pickles=trust)
        try:
            for i in np.sort(rows):
                numbers = None
                if hasattr(ds, "get_bytes"):
                    try:
                        numbers = (record_fields(ds.get_bytes(int(i))) or {}).get("atomic_numbers")
                    except Exception:  # noqa: BLE001 - a record only the full reader decodes
                        numbers = None
                if numbers is None:
                    numbers = ds[int(i)].numbers
                extra = sorted({int(z) for z in np.asarray(numbers).reshape(-1)} - known)
                if extra:
                    from ase.data import chemical_symbols

                    raise ConfigError(f"{file_key(k, path)}: entry {int(i)} holds {', '.join(chemical_symbols[z] for z in extra)}, "
                                      f"which the model lacks (its elements: {', '.join(chemical_symbols[z] for z in sorted(known))})")
        finally:
            ds.close()


def select(spec: Any, zs: Sequence[int], folder: Path, *, descriptors: Callable[[np.ndarray], np.ndarray],
           note: Callable[[str], None], source: str, resumed: bool = False) -> Dict[str, Any]:
    """The selection (cached in ``folder/selection.json``): ``train`` and ``val`` rows (file, index), ``pool``,
    ``of``. ``descriptors(candidate rows) -> [n, d]`` is called only for ``select=fps`` without a cache; a cached
    fps selection is reused when made from the same base model (``source``), or on a resume."""
    from launcher.core.atomic import atomic_write_json

    r = spec.data.replay
    key = fingerprint(spec)
    cache = folder / "selection.json"
    if cache.is_file():
        try:
            old = json.loads(cache.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key") == key and (r.select != "fps" or old.get("model") == source or resumed):
            note(f"replay: selection reused from {cache} ({len(old['train'])} train, {len(old['val'])} held out)")
            return {**old, "train": np.asarray(old["train"], dtype=np.int64).reshape(-1, 2),
                    "val": np.asarray(old["val"], dtype=np.int64).reshape(-1, 2)}
        note(f"replay: {cache} was made for other inputs; selecting again")
    sizes = sizes_of(r.paths)
    n_total = sum(sizes)
    if n_total < 1:
        raise ConfigError(f"data.replay.paths: the replay files hold no records ({', '.join(r.paths)})")
    val, cand = draw(n_total, replay_val_samples(spec), r.pool, spec.effective_seed)
    cand_rows = locate(cand, sizes)
    if r.select == "fps" and len(cand) > r.max_samples:
        from trainers.mace.replay_fps import farthest_points

        chosen = cand_rows[farthest_points(descriptors(cand_rows), r.max_samples)]
    else:
        chosen = cand_rows[: r.max_samples]
    sel = {"key": key, "model": source, "select": r.select, "pool": int(len(cand)), "of": int(n_total),
           "train": chosen, "val": locate(val, sizes)}
    check_elements(r.paths, np.concatenate([sel["train"], sel["val"]]), zs, bool(spec.data.trust_pickles))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, {**sel, "train": sel["train"].tolist(), "val": sel["val"].tolist()})
    return sel


class ReplayGraphs:
    """Position ``j`` -> the graph of selected record ``refs[j]`` (file, index), labelled for the replay head.
    Picklable: one streamed :class:`trainers.mace.stream.SplitGraphs` per file."""

    def __init__(self, paths: Sequence[str], refs: np.ndarray, zs: Sequence[int], r_max: float,
                 heads: Sequence[str], head: str, trust: bool) -> None:
        from trainers.mace.stream import SplitGraphs

        self.refs = np.asarray(refs, dtype=np.int64).reshape(-1, 2)
        self.parts, self.where = [], np.zeros(len(self.refs), dtype=np.int64)
        for k, path in enumerate(paths):
            mine = np.flatnonzero(self.refs[:, 0] == k)
            self.where[mine] = np.arange(len(mine))
            self.parts.append(SplitGraphs(path, self.refs[mine, 1], zs, r_max, heads, head, what=file_key(k, path),
                                          trust_pickles=trust))

    def __len__(self) -> int:
        return int(len(self.refs))

    def __getitem__(self, j: int) -> Any:
        return self.parts[int(self.refs[j, 0])][int(self.where[j])]


class ReplayFeed:
    """Stream positions of the replay micro-batches (see the module's docstring)."""

    def __init__(self, n: int, per_batch: int, seed: int, rank: int, world: int) -> None:
        self.n, self.k, self.seed, self.rank, self.world = int(n), int(per_batch), int(seed), int(rank), int(world)
        self._orders: Dict[int, np.ndarray] = {}

    def _order(self, p: int) -> np.ndarray:
        if p not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[p] = np.random.Generator(np.random.PCG64([self.seed, 0x7E91, p])).permutation(self.n)
        return self._orders[p]

    def batch(self, c: int) -> List[int]:
        """Positions in the selected set of this rank's replay structures for its micro-batch ``c``."""
        start = (int(c) * self.world + self.rank) * self.k
        return [int(self._order(q // self.n)[q % self.n]) for q in range(start, start + self.k)]
