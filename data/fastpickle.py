"""Fast loading of pickled PyG records, with the standard unpickler as the fallback.

A tensor inside a pickled ``Data`` is stored as a small legacy ``torch.save`` blob that
``pickle.loads`` hands to ``torch.load``, which dominates a record's read time (see
``scripts/bench_data``). The blob layout has been stable since torch 0.4: four pickles (magic
number, protocol 1001, sys info, the storage as a persistent id) then the list of storage keys,
an int64 element count and the raw little-endian bytes. Records that use only plain CPU
storages and ``_rebuild_tensor_v2`` are decoded here straight into numpy (or tensors over
numpy); anything else (other torch globals, views, big-endian data, unknown dtypes, a
malformed blob, any error) makes the whole record go through ``pickle.loads`` unchanged, so
the result, or the error, never depends on which path ran. The files are untouched: FairChem
reads them as before.
"""
from __future__ import annotations

import io
import math
import pickle
import struct
import sys
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"), "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}
STATS = {"fast": 0, "fallback": 0}


class _Fallback(Exception):
    """The record needs the standard unpickler."""


class _StorageType(str):
    """Marker for ``torch.<Name>Storage`` inside a storage blob."""


class _RawStorage:
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _StorageUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise _Fallback

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or pid[3] != "cpu" or pid[5] is not None):
            raise _Fallback
        return pid


def _load_storage(blob: bytes) -> _RawStorage:
    if sys.byteorder != "little":
        raise _Fallback
    f = io.BytesIO(blob)
    try:
        if pickle.load(f) != MAGIC_NUMBER or pickle.load(f) != LEGACY_PROTOCOL:
            raise _Fallback
        info = pickle.load(f)
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise _Fallback
        pid = _StorageUnpickler(f).load()
        if pickle.load(f) != [pid[2]]:
            raise _Fallback
        (count,) = struct.unpack("<q", f.read(8))
    except (pickle.UnpicklingError, EOFError, struct.error, TypeError, ValueError,
            AttributeError, IndexError):
        raise _Fallback from None
    dtype = STORAGE_DTYPES[pid[1]]
    if count != pid[4] or count < 0:
        raise _Fallback
    data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise _Fallback
    return _RawStorage(np.frombuffer(data, dtype=dtype))


def _array(storage: Any, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    if not isinstance(storage, _RawStorage):
        raise _Fallback
    flat = storage.array
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0:
        raise _Fallback
    if any(n == 0 for n in size):
        return np.empty(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if any(s < 0 for s in stride) or last >= flat.size:
        raise _Fallback
    numel = math.prod(size)
    contiguous, expect = True, 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != expect:
            contiguous = False
            break
        expect *= n
    if contiguous:
        return flat[offset:offset + numel].reshape(size).copy()
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))
    return np.array(view, copy=True)


class _RecordUnpickler(pickle.Unpickler):
    tensors = True

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild
        if module == "torch" or module.startswith("torch."):
            raise _Fallback
        return super().find_class(module, name)

    def _rebuild(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                 metadata=None):
        if requires_grad or metadata or backward_hooks:
            raise _Fallback
        arr = _array(storage, storage_offset, size, stride)
        if not self.tensors:
            return arr
        import torch

        return torch.from_numpy(arr)


class _NumpyRecordUnpickler(_RecordUnpickler):
    tensors = False


def loads_record(raw: bytes, *, tensors: bool = True) -> Any:
    """``pickle.loads(raw)``, faster; with ``tensors=False`` tensors come back as numpy arrays."""
    cls = _RecordUnpickler if tensors else _NumpyRecordUnpickler
    try:
        obj = cls(io.BytesIO(raw)).load()
        STATS["fast"] += 1
        return obj
    except Exception:  # noqa: BLE001 - anything unusual: the standard path decides
        STATS["fallback"] += 1
    obj = pickle.loads(raw)
    if not tensors:
        obj = _tensors_to_numpy(obj)
    return obj


def _tensors_to_numpy(obj: Any) -> Any:
    """After a fallback in numpy mode: the same value types the fast path gives."""
    store = getattr(obj, "_store", None)
    mapping = getattr(store, "_mapping", None)
    if isinstance(mapping, dict):
        for k, v in list(mapping.items()):
            if hasattr(v, "detach") and hasattr(v, "numpy"):
                try:
                    mapping[k] = v.detach().cpu().numpy()
                except TypeError:  # no numpy dtype (bfloat16): stays a tensor
                    pass
    return obj
