"""The globals a pickle names, read without unpickling it: the allow-list check of model files.

Unpickling runs code only through the callables and classes the pickle names (``GLOBAL``,
``STACK_GLOBAL``, ``INST``; extension codes). Listing those names needs no torch and no import of
what they name, so preflight and dry runs check a model file (a torch zip's ``data.pkl``, a legacy
torch file's pickles, a bare pickle) against a backend's allow-list quickly. The job's real load then
goes through torch's weights-only unpickler with the same names (``trainers/*/safe_load``), which
enforces it again. No torch here.
"""
from __future__ import annotations

import io
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Iterable, List, Optional

#: What torch's weights-only unpickler allows by itself (tensors, storages, dtypes, plain containers).
TORCH_DEFAULT_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter", "torch.serialization._get_layout",
    "torch.Size", "torch.Tensor", "torch.device", "_codecs.encode", "builtins.bytearray", "builtins.set",
    "builtins.complex", "torch._tensor._rebuild_from_type_v2", "torch.storage.TypedStorage",
    "torch.storage.UntypedStorage",
})
_TORCH_DEFAULT_RE = re.compile(
    r"torch\._utils\._rebuild_[a-z0-9_]+"                                       # tensor/parameter rebuild functions
    r"|torch\.(cuda\.)?[A-Z][A-Za-z0-9]*(Storage|Tensor)"                    # storage and tensor classes
    r"|torch\.(u?int\d+|float\d+(_[a-z0-9]+)?|bfloat16|complex\d+|bool|half|double|cfloat|cdouble|long|short|int"
    r"|q(u)?int\d+(x\d+)?|bits\w+|per_tensor_\w+|per_channel_\w+)")           # dtypes, quantization schemes

TRUST_HINT = "if you trust this file, set data.trust_pickles=true"
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, storage keys (torch's legacy format)


class NotAPickle(ValueError):
    """The bytes are not a pickle stream (or are cut short)."""


def torch_default(name: str) -> bool:
    """Whether torch's weights-only unpickler allows ``name`` without being told."""
    return name in TORCH_DEFAULT_GLOBALS or _TORCH_DEFAULT_RE.fullmatch(name) is not None


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 (and torch's unpickler) resolves it: protocol 2 writes ``__builtin__``."""
    module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
    return f"{module}.{name}"


def _scan_stream(fh: io.BufferedIOBase) -> List[str]:
    """The global names one pickle stream (read from ``fh`` up to its STOP) refers to, in order.

    A ``STACK_GLOBAL`` whose two names are not plain strings pushed just before (directly or from the
    memo) is reported as ``<unresolved STACK_GLOBAL>``, which no allow-list holds.
    """
    names: List[str] = []
    recent: List[Optional[str]] = []
    memo: dict = {}
    try:
        for op, arg, _pos in pickletools.genops(fh):
            kind = op.name
            if kind in ("GLOBAL", "INST"):
                names.append(_python3_name(*str(arg).split(" ", 1)))
                recent.append(None)
            elif kind == "STACK_GLOBAL":
                mod, name = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                names.append(_python3_name(mod, name) if isinstance(mod, str) and isinstance(name, str)
                             else "<unresolved STACK_GLOBAL>")
                recent.append(None)
            elif kind in ("EXT1", "EXT2", "EXT4"):
                names.append(f"<extension code {arg}>")
                recent.append(None)
            elif kind in _MEMO_PUT:
                memo[arg] = recent[-1] if recent else None
            elif kind == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif kind in _MEMO_GET:
                recent.append(memo.get(arg))
            elif kind in _STRINGS:
                recent.append(arg if isinstance(arg, str) else None)
            elif kind not in ("PROTO", "FRAME", "STOP"):
                recent.append(None)
            del recent[:-2]
    except (ValueError, EOFError) as e:      # genops: truncated or not a pickle opcode
        raise NotAPickle(str(e)) from None
    return names


def file_globals(path: Path) -> List[str]:
    """Every global a torch file's pickles refer to (zip format: each ``*.pkl``; legacy format: its
    leading pickles; otherwise the file as one pickle). Raises :class:`NotAPickle` when unreadable.

    A TorchScript archive (``code/`` or ``constants.pkl``) is compiled code, not data: it is reported as
    ``<TorchScript archive>``.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                members = zf.namelist()
                if any(n.endswith("constants.pkl") or "/code/" in n for n in members):
                    return ["<TorchScript archive>"]
                names: List[str] = []
                for member in (n for n in members if n.endswith(".pkl")):
                    with zf.open(member) as fh:
                        names += _scan_stream(io.BufferedReader(fh))
                return names
        except zipfile.BadZipFile as e:
            raise NotAPickle(str(e)) from None
    names = []
    with open(path, "rb") as fh:
        for i in range(_LEGACY_PICKLES):
            if not fh.peek(1)[:1]:
                break
            try:
                names += _scan_stream(fh)
            except NotAPickle:
                if i == 0:
                    raise
                break    # past the legacy format's pickles: raw storage bytes follow
    return names


def refused_globals(path: Path, allowed: Iterable[str]) -> List[str]:
    """The globals of ``path`` that are neither in ``allowed`` nor allowed by torch itself (first seen first)."""
    allowed = frozenset(allowed)
    out: List[str] = []
    for name in file_globals(path):
        if name not in allowed and not torch_default(name) and name not in out:
            out.append(name)
    return out


def refusal(key: str, path: Path, refused: List[str]) -> str:
    """The one-line problem for a model file holding globals off the allow-list."""
    more = f" (and {len(refused) - 1} more: {', '.join(refused[1:4])}{'...' if len(refused) > 4 else ''})" \
        if len(refused) > 1 else ""
    return (f"{key}: {path} refers to {refused[0]}{more}, which is not on the allow-list of model classes "
            f"(loading it could run code); {TRUST_HINT}")


def model_file_problem(key: str, path: Path, allowed: Iterable[str]) -> Optional[str]:
    """None when every global ``path`` names is allowed; else the one-line problem naming ``key`` and the class."""
    try:
        refused = refused_globals(path, allowed)
    except NotAPickle as e:
        return f"{key}: {path} is not a readable PyTorch file ({' '.join(str(e).split())})"
    except OSError as e:
        return f"{key}: cannot read {path} ({e.strerror or e})"
    return refusal(key, path, refused) if refused else None


def unpickler_reason(text: str) -> str:
    """torch's reason for refusing a file, without the preamble and the pointer to its docs (one line)."""
    text = text.split("WeightsUnpickler error:", 1)[-1]
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    keep = [p for p in paras if not p.startswith(("Weights only load failed", "Check the documentation"))]
    return (keep or paras or ["unreadable"])[0][:300]
