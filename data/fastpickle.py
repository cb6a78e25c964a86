"""Loading pickled PyG records: only data classes, and fast.

LMDB values are pickles, and FairChem datasets come from the internet: an unrestricted
``pickle.loads`` runs whatever callable a file names. Every global a record names is therefore
checked against :data:`ALLOWED` (what FairChem v1's and our own writers store: PyG 1.x/2.x
``Data`` and its storages, torch tensors with their rebuild functions, numpy arrays, dtypes and
scalars, a few builtins); anything else raises :class:`RefusedGlobal` naming ``module.qualname``.
``trust=True`` (``data.trust_pickles`` / ``--trust-pickles``) turns the check off.

A tensor inside a pickled ``Data`` is stored as a small legacy ``torch.save`` blob that
``pickle.loads`` hands to ``torch.load(weights_only=False)``, which both dominates a record's
read time (see ``scripts/bench_data``) and is a second unrestricted unpickler. The blob layout
has been stable since torch 0.4: four pickles (magic number, protocol 1001, sys info, the
storage as a persistent id) then the list of storage keys, an int64 element count and the raw
little-endian bytes. Records that use only plain CPU storages and ``_rebuild_tensor_v2`` are
decoded here straight into numpy (or tensors over numpy), with no global resolved outside the
allow-list; anything else (other torch globals, views, big-endian data, a malformed blob) makes
the whole record go through :class:`SafeUnpickler` (real torch objects, storage blobs through
``torch.load(weights_only=True)``), so the result, or the error, never depends on which path
ran. The files are untouched: FairChem reads them as before.
"""
from __future__ import annotations

import importlib
import io
import math
import pickle
import struct
import sys
import zipfile
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

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x spell the same module both ways
_TORCH_STORAGES = (*STORAGE_DTYPES, "BFloat16Storage", "ComplexFloatStorage",
                   "ComplexDoubleStorage")
_TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "complex128", "complex64",
                 "complex32", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
                 "uint8", "bool", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                 "float8_e5m2fnuz", "double", "float", "half", "long", "int", "short",
                 "cfloat", "cdouble")
#: Every global a record may name, as ``(module, qualname)``.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    *(("builtins", n) for n in ("set", "frozenset", "slice", "complex", "bytearray", "bytes",
                                "int", "float", "str", "bool", "tuple", "list", "dict", "range",
                                "object")),
    ("copyreg", "_reconstructor"), ("collections", "OrderedDict"), ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((f"{core}.multiarray", n) for core in _NUMPY_CORE for n in ("_reconstruct", "scalar")),
    *((f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE),
    *(("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                    "_rebuild_parameter", "_rebuild_parameter_with_state",
                                    "_rebuild_device_tensor_from_numpy",
                                    "_rebuild_device_tensor_from_cpu_tensor")),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch.storage", "_load_from_bytes"),
    ("torch", "Tensor"), ("torch", "Size"), ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.storage", "TypedStorage"), ("torch.storage", "UntypedStorage"),
    *(("torch", n) for n in _TORCH_STORAGES), *(("torch", n) for n in _TORCH_DTYPES),
    *(("torch_geometric.data.data", n) for n in ("Data", "DataEdgeAttr", "DataTensorAttr")),
    *(("torch_geometric.data.storage", n) for n in ("BaseStorage", "GlobalStorage",
                                                    "NodeStorage", "EdgeStorage")),
})
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # Python 2 pickles
_RESOLVED: dict[tuple[str, str], Any] = {}
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; ``name`` is its ``module.qualname``."""

    def __init__(self, module: str, name: str) -> None:
        self.name = f"{module}.{name}"
        super().__init__(f"refusing to unpickle {self.name}: not a class FairChem LMDB records "
                         f"store")


def resolve(module: str, name: str) -> Any:
    """The allow-listed global ``module.name``; :class:`RefusedGlobal` for anything else."""
    module = _MODULE_ALIASES.get(module, module)
    key = (module, name)
    obj = _RESOLVED.get(key)
    if obj is not None:
        return obj
    if key not in ALLOWED:
        raise RefusedGlobal(module, name)
    if module.startswith("numpy.core.") and _NUMPY2:  # numpy 2 warns about the old name
        module = "numpy._core." + module[len("numpy.core."):]
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise pickle.UnpicklingError(f"cannot find {module}.{name} ({exc})") from None
    _RESOLVED[key] = obj
    return obj


class _Fallback(Exception):
    """The record needs the general (still allow-listed) unpickler."""


class _StorageType(str):
    """Marker for ``torch.<Name>Storage`` inside a storage blob."""


class _RawStorage:
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _PlainUnpickler(pickle.Unpickler):
    """Plain values only: any global at all is refused (headers of storage blobs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise RefusedGlobal(module, name)


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


_HEADERS: list[bytes] = []  # blob headers (magic, protocol, sys info pickles) already vetted


def _skip_header(blob: bytes, f: io.BytesIO) -> None:
    """Position ``f`` after the three header pickles, checked once per distinct header.

    Every blob written by one torch build starts with the same bytes, so after the first
    parse a prefix comparison replaces three unpicklings.
    """
    for header in _HEADERS:
        if blob.startswith(header):
            f.seek(len(header))
            return
    if (_PlainUnpickler(f).load() != MAGIC_NUMBER
            or _PlainUnpickler(f).load() != LEGACY_PROTOCOL):
        raise _Fallback
    info = _PlainUnpickler(f).load()
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise _Fallback
    if len(_HEADERS) < 8:
        _HEADERS.append(bytes(blob[:f.tell()]))


def _check_keys(f: io.BytesIO, key: Any) -> None:
    """The storage-keys pickle must be ``[key]`` (bytes compared when torch's protocol 2)."""
    expected = pickle.dumps([key], protocol=2)
    start = f.tell()
    if f.read(len(expected)) == expected:
        return
    f.seek(start)
    if _PlainUnpickler(f).load() != [key]:
        raise _Fallback


def _load_storage(blob: bytes) -> _RawStorage:
    if sys.byteorder != "little" or not isinstance(blob, (bytes, bytearray)):
        raise _Fallback
    f = io.BytesIO(blob)
    try:
        _skip_header(blob, f)
        pid = _StorageUnpickler(f).load()
        _check_keys(f, pid[2])
        (count,) = struct.unpack("<q", f.read(8))
    except RefusedGlobal:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, TypeError, ValueError,
            AttributeError, IndexError, KeyError):
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
    """The fast path: plain CPU tensors decoded here; other torch globals -> :class:`_Fallback`."""

    tensors = True
    trust = False

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild
        if module == "torch" or module.startswith("torch."):
            raise _Fallback
        if self.trust:
            return super().find_class(module, name)
        return resolve(module, name)

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


class _TrustedRecordUnpickler(_RecordUnpickler):
    trust = True


class _TrustedNumpyRecordUnpickler(_RecordUnpickler):
    tensors = False
    trust = True


def _safe_load_from_bytes(blob: bytes) -> Any:
    """A tensor's storage blob through torch's own restricted (``weights_only``) loader."""
    import torch

    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch.storage._load_from_bytes: expected bytes")
    try:
        return torch.load(io.BytesIO(blob), weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0] or text
        raise pickle.UnpicklingError("tensor storage refused by torch.load(weights_only=True): "
                                     + " ".join(reason.split())[:200]) from None


class SafeUnpickler(pickle.Unpickler):
    """The general path: real torch / PyG / numpy objects, globals from :data:`ALLOWED` only."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.storage" and name == "_load_from_bytes":
            return _safe_load_from_bytes
        return resolve(module, name)


def loads_record(raw: bytes, *, tensors: bool = True, trust: bool = False) -> Any:
    """``pickle.loads(raw)`` restricted to :data:`ALLOWED` (unless ``trust``), and faster.

    With ``tensors=False`` tensors come back as numpy arrays. Raises :class:`RefusedGlobal`
    for a record that names anything else.
    """
    if trust:
        cls = _TrustedRecordUnpickler if tensors else _TrustedNumpyRecordUnpickler
    else:
        cls = _RecordUnpickler if tensors else _NumpyRecordUnpickler
    try:
        obj = cls(io.BytesIO(raw)).load()
        STATS["fast"] += 1
        return obj
    except RefusedGlobal:
        raise
    except Exception:  # noqa: BLE001 - anything unusual: the general path decides
        STATS["fallback"] += 1
    obj = pickle.loads(raw) if trust else SafeUnpickler(io.BytesIO(raw)).load()
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


# ------------------------------------------------------------------ values without torch
class _Fields:
    """Stands in for PyG's ``Data`` and its storages: keeps the pickled state, runs nothing."""


class _FieldsUnpickler(_NumpyRecordUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch_geometric.") and (module, name) in ALLOWED:
            return _Fields
        return super().find_class(module, name)


def record_fields(raw: bytes) -> dict[str, Any] | None:
    """A FairChem-layout record's fields (tensors as numpy arrays) read without torch, for preflight's value
    checks; None when the record needs the general unpickler (torch) to be read. Refuses what
    :func:`check_record` refuses."""
    try:
        obj = _FieldsUnpickler(io.BytesIO(raw)).load()
    except RefusedGlobal:
        raise
    except Exception:  # noqa: BLE001 - unusual content: the job's reader decides
        return None
    state = getattr(obj, "__dict__", None)
    if not isinstance(state, dict):
        return None
    store = state.get("_store")
    if store is not None:  # PyG 2.x: the fields live in the global storage's mapping
        state = getattr(store, "__dict__", {}).get("_mapping")
    return dict(state) if isinstance(state, dict) else None


# ------------------------------------------------------------------ checking without loading
class _Inert:
    """Stands in for every allowed global while checking: accepts anything, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    # list / dict opcodes applied to a stand-in (APPENDS, SETITEMS on a reduced object)
    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


class _CheckUnpickler(pickle.Unpickler):
    """Allow-listed names become :class:`_Inert`, except the bytes builders (a storage blob
    arrives as bytes, spelled ``_codecs.encode(text, "latin1")`` in protocol 2)."""

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _check_storage_blob
        if (module, name) not in ALLOWED:
            raise RefusedGlobal(module, name)
        return _CHECK_REAL.get((module, name), _Inert)

    def persistent_load(self, pid: Any) -> Any:
        return _Inert()


def _check_storage_blob(blob: Any) -> _Inert:
    """The pickles inside a storage blob (legacy or zip ``torch.save``), checked the same way."""
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch.storage._load_from_bytes: expected bytes")
    if blob[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            for name in zf.namelist():
                if name.endswith(".pkl"):
                    _CheckUnpickler(io.BytesIO(zf.read(name))).load()
        return _Inert()
    f = io.BytesIO(blob)
    for _ in range(5):  # magic, protocol, sys info, storage, storage keys; then raw bytes
        _CheckUnpickler(f).load()
    return _Inert()


def check_record(raw: bytes) -> None:
    """Raise :class:`RefusedGlobal` if ``raw`` names a global outside :data:`ALLOWED`.

    Nothing is resolved, imported or run (no torch needed): every allowed global is an inert
    stand-in. Used where a record is checked but another reader will load it (FairChem's).
    """
    _CheckUnpickler(io.BytesIO(raw)).load()


# ------------------------------------------------------------------ plain integers
def _int_dtype(code: Any, align: Any = False, copy: Any = True) -> np.dtype:
    if code not in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"):
        raise pickle.UnpicklingError(f"numpy.dtype({code!r}): expected an integer dtype")
    return np.dtype(code)


def _int_scalar(dtype: Any, data: Any = b"") -> int:
    if (not isinstance(dtype, np.dtype) or dtype.kind not in "iu"
            or not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize):
        raise pickle.UnpicklingError("numpy scalar: expected an integer")
    return int(np.frombuffer(bytes(data), dtype=dtype)[0])


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode: expected latin1 text")
    return text.encode("latin1")


class _IntUnpickler(pickle.Unpickler):
    """No globals: the few a pickled numpy integer names map to local integer-only builders."""

    _STANDINS = {("numpy", "dtype"): _int_dtype, ("_codecs", "encode"): _latin1,
                 **{(f"{core}.multiarray", "scalar"): _int_scalar for core in _NUMPY_CORE}}

    def find_class(self, module: str, name: str) -> Any:
        standin = self._STANDINS.get((module, name))
        if standin is None:
            raise RefusedGlobal(module, name)
        return standin


def loads_int(raw: bytes) -> Any:
    """Unpickle a value that should be an integer (FairChem's ``length``) without running anything.

    Python ints and numpy integer scalars (any protocol) come back as ``int``; other plain
    values come back as they are for the caller to reject; any other global is refused.
    """
    value = _IntUnpickler(io.BytesIO(raw)).load()
    return int(value) if isinstance(value, np.integer) else value


_CHECK_REAL = {("_codecs", "encode"): _latin1, ("builtins", "bytes"): bytes,
               ("builtins", "bytearray"): bytearray}
