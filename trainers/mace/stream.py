"""The graphs a training run reads: streamed from the LMDB per batch, or kept in memory once built.

At our users' sizes (millions of structures, runs sampling 500k) building every neighbour graph
before the first step takes a long serial phase and tens of GB per process; so by default the
trainer streams: :class:`SplitGraphs` is a map-style dataset over the run's selected indices whose
DataLoader workers (``train.num_workers``) read, unpickle and build graphs per batch, and each rank
reads only the positions of its own batches. ``data.cache=memory`` (or ``auto`` when the estimate
fits ``data.cache_budget_gb``) keeps the graphs the first epoch builds (:mod:`trainers.mace.graph_cache`):
that epoch streams as above, later epochs read the kept graphs.

Both modes index the same positions, so the same seed gives the same batches and the same losses.
The statistics a new model needs (E0s, scale/shift, avg_num_neighbors) come from a bounded,
seeded sample of the training split (``data.stats_samples``), never from a pass over all of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from launcher.core.errors import ConfigError


class SplitGraphs:
    """Position ``j`` -> the ``AtomicData`` of entry ``indices[j]`` of one split's LMDB.

    Picklable (DataLoader workers get a copy without the open dataset and open their own), and
    reads nothing at construction beyond the shards' lengths.
    """

    def __init__(self, path: str, indices: np.ndarray, zs: Sequence[int], r_max: float, heads: Sequence[str],
                 head: str, *, what: str, trust_pickles: bool = False) -> None:
        self.path, self.what = str(path), what
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.zs = [int(z) for z in zs]
        self.r_max, self.heads, self.head = float(r_max), list(heads), head
        self.trust_pickles = bool(trust_pickles)
        self._known = set(self.zs)
        self._ds: Any = None
        self._table: Any = None
        self._pid = -1

    def __getstate__(self) -> Dict[str, Any]:
        st = dict(self.__dict__)
        st["_ds"], st["_table"], st["_pid"] = None, None, -1
        return st

    def __len__(self) -> int:
        return int(self.indices.size)

    def _dataset(self) -> Any:
        if self._ds is None or self._pid != os.getpid():
            self._ds = open_lmdb(self.path, self.trust_pickles)
            self._pid = os.getpid()
        return self._ds

    def structure(self, j: int) -> Any:
        return self._dataset()[int(self.indices[j])]

    def __getitem__(self, j: int) -> Any:
        return self.graph(j, self.structure(j))

    def graph(self, j: int, s: Any) -> Any:
        """The graph of structure ``s`` read at position ``j``."""
        from trainers.mace.graphs import atomic_table, to_graph

        if not self._known.issuperset(int(z) for z in s.numbers):
            from trainers.mace.graphs import check_elements

            check_elements([s], self.zs, what=f"{self.what}: entry {int(self.indices[j])}")
        if self._table is None:
            self._table = atomic_table(self.zs)
        return to_graph(s, self._table, self.r_max, self.heads, self.head)


def open_lmdb(path: str, trust_pickles: bool = False) -> Any:
    """The project's LMDB reader; ``trust_pickles`` (``data.trust_pickles``) lifts its allow-list."""
    from data.lmdb_dataset import LmdbDataset

    return LmdbDataset(path, trust_pickles=trust_pickles)


def split_indices(spec: Any, split: str, *, active: bool) -> np.ndarray:
    """The indices of ``split`` the run uses; reads only the shards' lengths."""
    from trainers.mace.graphs import split_indices as select

    path = getattr(spec.data, split)
    if not path:
        raise ConfigError(f"data.{split}: required here (an LMDB file or folder of shards)")
    ds = open_lmdb(path, trust_pickles(spec))
    try:
        return select(spec, split, len(ds), active=active)
    finally:
        ds.close()


def trust_pickles(spec: Any) -> bool:
    return bool(spec.data.trust_pickles)


def stats_positions(n: int, k: int, seed: int) -> np.ndarray:
    """At most ``k`` of ``n`` positions: all when ``n <= k``, else a seeded sample in ascending order
    (ascending keeps LMDB reads local)."""
    if n <= k:
        return np.arange(n, dtype=np.int64)
    pick = np.random.Generator(np.random.PCG64([int(seed), 0x5747])).choice(n, size=k, replace=False)
    return np.sort(pick).astype(np.int64)


class _SampleReader:
    """Position ``j`` of a sample -> (Structure, its edge count within ``r_max``, or -1 when not wanted)."""

    def __init__(self, path: str, indices: np.ndarray, r_max: Optional[float], trust: bool) -> None:
        self.path, self.indices, self.r_max, self.trust = path, indices, r_max, trust
        self._ds: Any = None

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_ds": None}

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, j: int) -> tuple:
        if self._ds is None:
            self._ds = open_lmdb(self.path, self.trust)
        s = self._ds[int(self.indices[j])]
        if self.r_max is None:
            return s, -1
        from mace.data.neighborhood import get_neighborhood

        ei, *_ = get_neighborhood(positions=s.positions, cutoff=float(self.r_max),
                                  pbc=tuple(bool(p) for p in s.pbc), cell=np.array(s.cell))
        return s, int(ei.shape[1])


def stats_sample(spec: Any, indices: Optional[np.ndarray] = None, *, r_max: Optional[float] = None,
                 num_workers: int = 0, progress: bool = False) -> tuple:
    """(structures, positions, n, avg_num_neighbors or None) of the bounded sample of the training split
    that statistics use; read (and, given ``r_max``, neighbour-counted) by ``num_workers`` processes."""
    if indices is None:
        indices = split_indices(spec, "train", active=True)
    pos = stats_positions(len(indices), int(spec.data.stats_samples), spec.effective_seed)
    reader = _SampleReader(str(spec.data.train), indices[pos], r_max, trust_pickles(spec))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pos), desc="statistics sample", unit="struct",
                   mininterval=spec.train.progress_mininterval, leave=False)
    structures: List[Any] = []
    edges = 0
    try:
        for chunk in loader(reader, [list(r) for r in _chunks(len(pos), 64)], num_workers=num_workers,
                            collate=list):
            for s, e in chunk:
                structures.append(s)
                edges += e
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    atoms = sum(int(s.natoms) for s in structures)
    avg = float(edges / max(atoms, 1)) if r_max is not None else None
    return structures, pos, len(indices), avg


@dataclass
class CacheDecision:
    cache: bool
    estimate_gb: float
    reason: str


def decide_cache(setting: str, budget_gb: float, per_graph_bytes: float, n_graphs: int) -> CacheDecision:
    """``data.cache`` -> whether to keep the graphs in memory as they are built; ``auto`` compares the estimate
    (:func:`trainers.mace.graph_cache.estimate_bytes` per graph) with the budget."""
    est = per_graph_bytes * n_graphs / 1e9
    if setting == "memory":
        return CacheDecision(True, est, f"data.cache=memory: estimate {est:.3g} GB")
    if setting == "none":
        return CacheDecision(False, est, "data.cache=none")
    fits = est <= budget_gb
    return CacheDecision(fits, est, f"data.cache=auto: estimate {est:.3g} GB "
                                    f"{'<=' if fits else '>'} data.cache_budget_gb {budget_gb:g}")


def _chunks(n: int, size: int) -> List[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def loader(data: Any, batches: Sequence[Sequence[int]], *, num_workers: int, collate: Any = None) -> Iterator[Any]:
    """Collated batches of ``data`` at the given positions, in order; with workers, built ahead in other
    processes. A worker's ConfigError comes back as the same one-line ConfigError. A graph cache serves what
    it holds and has the rest built this way."""
    if collate is None:
        from trainers.mace.graphs import collate as collate_fn

        collate = collate_fn
    if hasattr(data, "cached_batches"):
        yield from data.cached_batches(batches, num_workers=num_workers, collate=collate)
        return
    if num_workers <= 0:
        for b in batches:
            yield collate([data[i] for i in b])
        return
    import torch

    # its own generator: starting workers must not draw from the global RNG (model init, exact resume)
    dl = torch.utils.data.DataLoader(data, batch_sampler=[list(b) for b in batches], collate_fn=collate,
                                     num_workers=num_workers, prefetch_factor=4, persistent_workers=False,
                                     generator=torch.Generator().manual_seed(0))
    it = iter(dl)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ConfigError as exc:
            raise ConfigError(_worker_message(str(exc))) from None
        yield batch


def _worker_message(text: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker."""
    prefix = "launcher.core.errors.ConfigError: "
    for line in reversed(text.strip().splitlines()):
        if line.startswith(prefix):
            return line[len(prefix):]
    return text.strip().splitlines()[-1] if text.strip() else text
