"""The graph cache: packed graphs read back bit for bit, each position built once, a limit that streams the rest,
and a size estimate that agrees with the resident memory the cache really takes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO

ZS = [28, 29, 46, 47, 78, 79]


@pytest.fixture
def float32():
    import torch

    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(torch.float64)


class Counting:
    """A SplitGraphs that counts the graphs it builds in this process."""

    def __new__(cls, path, n):
        from trainers.mace.stream import SplitGraphs

        class _Counting(SplitGraphs):
            builds = 0

            def __getitem__(self, j):
                type(self).builds += 1
                return super().__getitem__(j)

        return _Counting(str(path), np.arange(n) % 24, ZS, 4.0, ["Default"], "Default", what="data.train (t)")


def _same(a, b):
    import torch

    assert list(a.__dict__) == list(b.__dict__)
    for k, x in a.__dict__.items():
        y = b.__dict__[k]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), k
        else:
            assert x == y, k


def test_packed_graphs_read_back_bit_for_bit(tiny_data, float32):
    from trainers.mace.graph_cache import pack
    from trainers.mace.graphs import collate

    src = Counting(tiny_data["train"], 24)
    graphs = [src[j] for j in range(24)]
    for i in range(0, 24, 5):
        chunk = pack(graphs[i:i + 5])
        back = [chunk.graph(s) for s in range(len(chunk))]
        for g, h in zip(graphs[i:i + 5], back):
            _same(g, h)
        _same(collate(graphs[i:i + 5]), collate(back))
        tensor_bytes = sum(v.element_size() * v.nelement() for g in graphs[i:i + 5] for v in g.__dict__.values()
                           if hasattr(v, "element_size"))
        assert chunk.nbytes < tensor_bytes   # narrowed types: smaller than the tensors as built


def test_narrowing_keeps_every_value_exactly():
    from trainers.mace.graph_cache import _narrow

    assert _narrow(np.array([0, 5, -3], dtype=np.int64)).dtype == np.int8
    assert _narrow(np.array([0, 40000], dtype=np.int64)).dtype == np.int32
    assert _narrow(np.array([1.0, 0.0, -2.0], dtype=np.float32)).dtype == np.int8
    for kept in (np.array([0.5, 1.0], dtype=np.float32), np.array([-0.0, 1.0]), np.array([300.0]),
                 np.array([np.nan, 1.0]), np.array([1 << 40], dtype=np.int64)):
        assert _narrow(kept).dtype == kept.dtype


@pytest.mark.parametrize("workers", [0, 2])
def test_each_position_is_built_once_and_batches_equal_the_stream(tiny_data, float32, workers):
    from trainers.mace.graph_cache import GraphCache
    from trainers.mace.graphs import collate
    from trainers.mace.order import epoch_order
    from trainers.mace.stream import loader

    src = Counting(tiny_data["train"], 48)
    stream_src = Counting(tiny_data["train"], 48)
    cache = GraphCache(src)
    for epoch in range(3):
        batches = [b.tolist() for b in np.array_split(epoch_order(0, epoch, 48), 12)]
        if epoch == 1:
            batches = batches[5:]        # a resumed epoch: only what is left of it
        got = list(loader(cache, batches, num_workers=workers))
        want = list(loader(stream_src, batches, num_workers=0))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _same(a, b)
        assert cache.complete and cache.built == 48, epoch   # the first epoch visited every position
    if workers == 0:
        assert src.builds == 48          # built in this process: counted there
    assert "48 of 48 graphs kept" in cache.status()


def test_a_full_cache_streams_the_rest(tiny_data, float32):
    from trainers.mace.graph_cache import GraphCache
    from trainers.mace.stream import loader

    notes = []
    src = Counting(tiny_data["train"], 24)
    cache = GraphCache(src, limit_bytes=60_000, note=notes.append)
    batches = [list(range(i, i + 4)) for i in range(0, 24, 4)]
    first = list(loader(cache, batches, num_workers=0))
    assert 0 < cache.count < 24 and cache.nbytes <= 60_000 and cache.full
    assert len(notes) == 1 and "limit 6e-05 GB reached" in notes[0] and "the rest stream" in notes[0]
    again = list(loader(cache, batches, num_workers=0))
    for a, b in zip(first, again):
        _same(a, b)
    assert cache.built == 24 + (24 - cache.count)   # the second pass builds only what was not kept


_RSS_CHILD = """
import gc, json, sys
import numpy as np, torch
sys.path.insert(0, {repo!r})
torch.set_default_dtype(torch.float32)
from trainers.mace.heap import hold_freed_memory
hold_freed_memory()
from trainers.mace.graph_cache import ESTIMATE_SAMPLE, GraphCache, estimate_bytes
from trainers.mace.graphs import collate
from trainers.mace.stream import SplitGraphs, loader, stats_positions

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

n = {n}
src = SplitGraphs({path!r}, np.arange(n) % 24, {zs!r}, 5.0, ["Default"], "Default", what="t")
est = estimate_bytes([src[int(j)] for j in stats_positions(n, ESTIMATE_SAMPLE, 0)], 8)
cache = GraphCache(src)
order = np.random.default_rng(0).permutation(n)
batches = [order[i:i + 8].tolist() for i in range(0, n, 8)]
for _ in loader(GraphCache(src, limit_bytes=0), batches[:20], num_workers={workers}):   # warm-up, keeps nothing
    pass
gc.collect()
before = anon()
for _ in loader(cache, batches, num_workers={workers}):
    pass
gc.collect()
print(json.dumps({{"estimate": est * n, "measured": anon() - before, "kept": cache.nbytes}}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("workers", [0, 2])
def test_the_estimate_agrees_with_the_resident_memory_the_cache_takes(tiny_data, workers):
    code = _RSS_CHILD.format(repo=str(REPO), n=2400, path=str(tiny_data["train"]), zs=ZS, workers=workers)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["measured"] > 5e6, r            # the cache is large enough to be seen above the noise
    assert 1 / 1.3 <= r["estimate"] / r["measured"] <= 1.3, r
