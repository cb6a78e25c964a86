"""The in-memory graph cache, filled as the first epoch streams (``data.cache=memory``, or ``auto`` when it fits).

Building every graph before the first step delays it by a serial pass over the split (minutes at 60k
structures); so the cache starts empty, the batches of the first epoch are built as when streaming (by the
``train.num_workers`` DataLoader workers), and each built batch is kept. Later epochs build only what is still
missing (nothing once every position was visited), and collate the rest here.

Kept graphs are packed: one chunk per built batch holds each dtype's tensor data as one flat numpy array, with
the offsets and shapes of every graph's tensors beside it; a graph is rebuilt as views into its chunk when read.
Values are stored in the narrowest type that holds them exactly (edge indices as int16/int32, the integer cell
shifts and one-hot node attributes as int8) and cast back when read, so a graph reads back bit for bit. A chunk
costs about its arrays' own bytes (no Python object per tensor, no allocator slack of thousands of small
tensors), which is what :func:`estimate_bytes` predicts from a bounded sample, and it crosses from a worker to
the training process as a few plain arrays (no shared-memory segment per tensor).

The cache is indexed by position in the split, so shuffling, a resumed epoch, DDP shares (each rank keeps the
graphs of the batches it reads) and validation shards all read the same graphs a stream would build.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

# Graphs built (seeded positions spread over the split) to estimate the cache's size before it exists.
ESTIMATE_SAMPLE = 64
# Resident bytes per packed byte: chunk arrays come from malloc in blocks of one batch, so little is lost
# (measured with scripts/bench_scale --defaults and tests/trainers/mace/test_graph_cache.py).
RSS_PER_PACKED_BYTE = 1.0
# Per chunk (one batch): its Python objects (key names, a dict, array headers) once unpickled from a worker.
CHUNK_OVERHEAD = 1024
# Per position: the two int32 index arrays.
INDEX_BYTES = 8


_NARROW_INTS = (np.int8, np.int16, np.int32)


def _narrow(a: np.ndarray) -> np.ndarray:
    """``a`` in the narrowest type that gives back exactly its values (``a`` itself when none does)."""
    if a.size == 0 or a.dtype == np.bool_:
        return a
    if a.dtype.kind == "i":
        lo, hi = int(a.min()), int(a.max())
        for t in _NARROW_INTS:
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max and np.dtype(t).itemsize < a.dtype.itemsize:
                return a.astype(t)
        return a
    if a.dtype.kind == "f" and np.isfinite(a).all() and np.abs(a).max() <= 127:
        i = a.astype(np.int8)
        if np.array_equal(i.astype(a.dtype), a) and not np.signbit(a[a == 0]).any():   # -0.0 would read as 0.0
            return i
    return a


class Packed:
    """Graphs of one batch, packed. ``buffers[b]``: flat data, one array per stored type; ``where[g, k] =
    (buffer, start, d0, d1, d2, type)`` of tensor key ``tkeys[k]`` of graph ``g`` (dims -1 when absent, buffer
    -1 when that graph holds no tensor there; ``types[type]`` the dtype as built); ``plain[key]``: a
    non-tensor value, one for all graphs, or a list of one per graph when ``key`` is in ``varying``."""

    __slots__ = ("cls", "keys", "tkeys", "buffers", "where", "types", "plain", "varying")

    def __init__(self, cls: type, keys: Tuple[str, ...], tkeys: Tuple[str, ...], buffers: List[np.ndarray],
                 where: np.ndarray, types: List[Any], plain: Dict[str, Any], varying: frozenset) -> None:
        self.cls, self.keys, self.tkeys, self.buffers, self.where = cls, keys, tkeys, buffers, where
        self.types, self.plain, self.varying = types, plain, varying

    def __len__(self) -> int:
        return int(self.where.shape[0])

    @property
    def nbytes(self) -> int:
        return int(sum(b.nbytes for b in self.buffers) + self.where.nbytes)

    def graph(self, i: int) -> Any:
        """Graph ``i`` of the chunk, its tensors read from the chunk's buffers."""
        import torch

        d: Dict[str, Any] = dict.fromkeys(self.keys)   # the attribute order the graph was built with
        d.update((k, v[i] if k in self.varying else v) for k, v in self.plain.items())
        for k, row in zip(self.tkeys, self.where[i].tolist()):
            b, start, d0, d1, d2, t = row
            if b < 0:
                continue
            shape = tuple(x for x in (d0, d1, d2) if x >= 0)
            size = int(np.prod(shape)) if shape else 1
            v = torch.from_numpy(self.buffers[b][start:start + size]).view(shape)
            d[k] = v if v.dtype == self.types[t] else v.to(self.types[t])
        g = self.cls.__new__(self.cls)
        g.__dict__.update(d)
        return g


def pack(graphs: Sequence[Any]) -> Packed:
    """The graphs of one batch as a :class:`Packed` chunk (the DataLoader's collate when the cache fills)."""
    import torch

    dicts = [g.__dict__ for g in graphs]
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    tkeys = tuple(k for k in keys if any(isinstance(d.get(k), torch.Tensor) for d in dicts))
    plain: Dict[str, Any] = {}
    varying = set()
    for k in keys:
        vals = [None if isinstance(d.get(k), torch.Tensor) else d.get(k) for d in dicts]
        if k in tkeys and all(isinstance(d.get(k), torch.Tensor) for d in dicts):
            continue
        if all(v is vals[0] for v in vals):
            plain[k] = vals[0]
        else:
            plain[k] = vals
            varying.add(k)
    where = np.full((len(graphs), len(tkeys), 6), -1, dtype=np.int32)
    types: List[Any] = []
    parts: Dict[Any, List[np.ndarray]] = {}
    fill: Dict[Any, int] = {}
    for g_i, d in enumerate(dicts):
        for k, key in enumerate(tkeys):
            v = d.get(key)
            if not isinstance(v, torch.Tensor):
                continue
            if v.dim() > 3:
                raise ValueError(f"graph cache: tensor {key!r} has {v.dim()} dimensions (at most 3 are kept)")
            if v.dtype not in types:
                types.append(v.dtype)
            a = _narrow(v.detach().contiguous().numpy().reshape(-1))
            b = list(parts).index(a.dtype) if a.dtype in parts else len(parts)
            parts.setdefault(a.dtype, []).append(a)
            where[g_i, k, :2] = (b, fill.get(a.dtype, 0))
            where[g_i, k, 2:2 + v.dim()] = tuple(v.shape)
            where[g_i, k, 5] = types.index(v.dtype)
            fill[a.dtype] = fill.get(a.dtype, 0) + a.size
    buffers = [np.concatenate(p) for p in parts.values()]
    return Packed(type(graphs[0]), tuple(keys), tkeys, buffers, where, types, plain, frozenset(varying))


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
