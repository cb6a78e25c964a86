"""The in-memory graph cache, filled as the first epoch streams (``data.cache=memory``, or ``auto`` when it fits).

Building every graph before the first step delays it by a serial pass over the split (minutes at 60k
structures); so the cache starts empty, the batches of the first epoch are built as when streaming (by the
``train.num_workers`` DataLoader workers), and each built batch is kept. Later epochs build only what is still
missing (nothing once every position was visited), and collate the rest here.

Kept graphs are packed: one chunk per built batch holds each dtype's tensor data as one flat numpy array, with
the offsets and shapes of every graph's tensors beside it; a graph is rebuilt as views into its chunk when read.
That costs about the tensors' own bytes (no Python object per tensor, no allocator slack of thousands of small
tensors), which is what :func:`estimate_bytes` predicts from a bounded sample, and it crosses from a worker to
the training process as a few plain arrays (no shared-memory segment per tensor).

The cache is indexed by position in the split, so shuffling, a resumed epoch, DDP shares (each rank keeps the
graphs of the batches it reads) and validation shards all read the same graphs a stream would build.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

# Resident bytes per packed byte: chunk arrays come from malloc in blocks of one batch, so little is lost
# (measured with scripts/bench_scale --defaults and tests/trainers/mace/test_graph_cache.py).
RSS_PER_PACKED_BYTE = 1.05
# Per chunk (one batch): its Python objects and numpy array headers.
CHUNK_OVERHEAD = 2048
# Per position: the two int32 index arrays.
INDEX_BYTES = 8


class Packed:
    """Graphs of one batch, packed: ``buffers[dtype]`` flat data, ``where[g, k] = (buffer, start, d0, d1, d2)``
    of tensor key ``k`` of graph ``g`` (dims -1 when absent), ``plain[k]`` a non-tensor value per graph."""

    __slots__ = ("cls", "keys", "buffers", "where", "plain")

    def __init__(self, cls: type, keys: Tuple[str, ...], buffers: List[np.ndarray], where: np.ndarray,
                 plain: Dict[str, list]) -> None:
        self.cls, self.keys, self.buffers, self.where, self.plain = cls, keys, buffers, where, plain

    def __len__(self) -> int:
        return int(self.where.shape[0])

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.buffers) + self.where.nbytes)

    def graph(self, i: int) -> Any:
        """Graph ``i`` of the chunk: its tensors are views into the chunk's buffers."""
        import torch

        d: Dict[str, Any] = {}
        row = self.where[i]
        for k, key in enumerate(self.keys):
            b, start, d0, d1, d2 = (int(x) for x in row[k])
            if b < 0:
                d[key] = self.plain[key][i]
                continue
            shape = tuple(x for x in (d0, d1, d2) if x >= 0)
            size = int(np.prod(shape)) if shape else 1
            d[key] = torch.from_numpy(self.buffers[b][start:start + size]).view(shape)
        g = self.cls.__new__(self.cls)
        g.__dict__.update(d)
        return g


def pack(graphs: Sequence[Any]) -> Packed:
    """The graphs of one batch as a :class:`Packed` chunk (the DataLoader's collate when the cache fills)."""
    import torch

    first = graphs[0]
    keys = tuple(first.__dict__.keys())
    where = np.full((len(graphs), len(keys), 5), -1, dtype=np.int64)
    parts: Dict[Any, List[np.ndarray]] = {}
    fill: Dict[Any, int] = {}
    slot: Dict[Any, int] = {}
    plain: Dict[str, list] = {}
    for g_i, g in enumerate(graphs):
        for k, key in enumerate(keys):
            v = g.__dict__.get(key)
            if not isinstance(v, torch.Tensor):
                plain.setdefault(key, [None] * len(graphs))[g_i] = v
                continue
            if v.dim() > 3:
                raise ValueError(f"graph cache: tensor {key!r} has {v.dim()} dimensions (at most 3 are kept)")
            a = v.detach().contiguous().numpy().reshape(-1)
            b = slot.setdefault(a.dtype, len(slot))
            parts.setdefault(a.dtype, []).append(a)
            where[g_i, k, 0], where[g_i, k, 1] = b, fill.get(a.dtype, 0)
            where[g_i, k, 2:2 + v.dim()] = tuple(v.shape)
            fill[a.dtype] = fill.get(a.dtype, 0) + a.size
    buffers = [np.concatenate(parts[dt]) for dt in sorted(slot, key=slot.get)]
    return Packed(type(first), keys, buffers, where, plain)


def estimate_bytes(sample: Sequence[Any], batch_size: int) -> float:
    """Resident bytes one cached graph costs, from a sample of graphs packed in batches as the cache packs them."""
    if not sample:
        return 0.0
    total = 0.0
    for i in range(0, len(sample), max(batch_size, 1)):
        chunk = pack(sample[i:i + batch_size])
        total += chunk.nbytes * RSS_PER_PACKED_BYTE + CHUNK_OVERHEAD
    return total / len(sample) + INDEX_BYTES


class GraphCache:
    """Position ``j`` of ``source`` (a :class:`trainers.mace.stream.SplitGraphs`) -> its graph, kept once built.

    ``limit_bytes`` (None: no limit) stops keeping new chunks once the packed size reaches it: the rest stream.
    """

    def __init__(self, source: Any, *, limit_bytes: Optional[float] = None,
                 note: Optional[Callable[[str], None]] = None) -> None:
        self.source, self.limit_bytes, self._note = source, limit_bytes, note
        n = len(source)
        self._chunk_of = np.full(n, -1, dtype=np.int32)
        self._slot_of = np.zeros(n, dtype=np.int32)
        self._chunks: List[Packed] = []
        self.count, self.nbytes, self.built, self.full = 0, 0, 0, False

    def __len__(self) -> int:
        return len(self.source)

    @property
    def complete(self) -> bool:
        return self.count == len(self)

    def __getitem__(self, j: int) -> Any:
        c = int(self._chunk_of[j])
        if c < 0:
            self.built += 1
            return self.source[j]
        return self._chunks[c].graph(int(self._slot_of[j]))

    def add(self, positions: Sequence[int], chunk: Packed) -> None:
        """Keep ``chunk`` (the graphs at ``positions``, in order) unless the limit is reached."""
        if self.full:
            return
        cost = chunk.nbytes * RSS_PER_PACKED_BYTE + CHUNK_OVERHEAD
        if self.limit_bytes is not None and (self.nbytes + cost) > self.limit_bytes:
            self.full = True
            if self._note is not None:
                self._note(f"graph cache: limit {self.limit_bytes / 1e9:.3g} GB reached at {self.count} of {len(self)} "
                           f"graphs of {self.source.what}; the rest stream")
            return
        c = len(self._chunks)
        self._chunks.append(chunk)
        pos = np.asarray(positions, dtype=np.int64)
        self._chunk_of[pos] = c
        self._slot_of[pos] = np.arange(len(pos), dtype=np.int32)
        self.count += len(pos)
        self.nbytes += cost

    def cached_batches(self, batches: Sequence[Sequence[int]], *, num_workers: int, collate: Any) -> Iterator[Any]:
        """Collated batches at ``batches``: the positions not cached yet are built by ``num_workers`` processes
        (as when streaming) and kept; the rest come from the cache. Same graphs, same order either way."""
        from trainers.mace.stream import loader

        missing = [[int(i) for i in b if self._chunk_of[i] < 0] for b in batches]
        todo = [m for m in missing if m]
        built = loader(self.source, todo, num_workers=num_workers, collate=pack) if todo else iter(())
        try:
            for b, m in zip(batches, missing):
                fresh: Dict[int, Any] = {}
                if m:
                    chunk = next(built)
                    self.built += len(m)
                    self.add(m, chunk)
                    if self._chunk_of[m[0]] < 0:   # not kept (limit reached): use the graphs just built
                        fresh = {i: chunk.graph(s) for s, i in enumerate(m)}
                yield collate([fresh[i] if i in fresh else self[int(i)] for i in b])
        finally:
            if hasattr(built, "close"):
                built.close()

    def status(self) -> str:
        """One line for train.log: what is kept, its size, and how many graphs were built."""
        return (f"graph cache ({self.source.what}): {self.count} of {len(self)} graphs kept, "
                f"{self.nbytes / 1e9:.3g} GB, {self.built} built so far")
