"""Named foundation models: ``model_in=mace-mp-0-medium`` -> a verified file in the model cache.

The registry is ``conf/models.yaml`` (plus the entries of the YAML file ``$MLIP_LAUNCH_MODELS``
names); files live in ``$MLIP_LAUNCH_CACHE/models/NAME/FILE``. The doors resolve names before
preflight, so every backend (and the saved run.yaml) only ever sees a local path.

Downloads stream to a temp file beside the target (progress bar on a terminal), are hashed as they
arrive, fsynced, checked against the registry's sha256 and only then renamed into place: the cache
never holds a partial or unverified file. An entry without a published sha256 is pinned at first
download (or at first use of a file placed by hand) in ``FILE.sha256.json``; later uses are checked
against the pin. No torch here: this runs in the CLI before anything else is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from launcher.core.env import cache_root
from launcher.core.errors import ConfigError, ConfigErrors

CHUNK = 1 << 20


@dataclass
class ModelEntry:
    """One registry entry (conf/models.yaml)."""

    name: str
    backend: str
    url: str
    sha256: Optional[str] = None
    heads: List[str] = field(default_factory=list)
    default_head: Optional[str] = None
    aliases: List[str] = field(default_factory=list)
    license: Optional[str] = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or f"{self.name}.bin"


def registry_files() -> List[Path]:
    """The built-in registry, then ``$MLIP_LAUNCH_MODELS`` (its entries add to or replace the built-in ones)."""
    from launcher.resolvers import conf_dir

    files = [conf_dir() / "models.yaml"]
    extra = os.environ.get("MLIP_LAUNCH_MODELS")
    if extra:
        files.append(Path(extra).expanduser())
    return files


def load_registry() -> Dict[str, ModelEntry]:
    """Lower-cased name or alias -> entry."""
    from launcher.core.readers import load_yaml

    out: Dict[str, ModelEntry] = {}
    for path in registry_files():
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"MLIP_LAUNCH_MODELS: model registry not found: {path}")
        raw = load_yaml(path, key="model registry") or {}
        models = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise ConfigError(f"model registry {path}: expected a 'models:' mapping of name -> entry")
        for name, item in models.items():
            if not isinstance(item, dict) or not item.get("url") or not item.get("backend"):
                raise ConfigError(f"model registry {path}: entry '{name}' needs at least 'backend' and 'url'")
            known = set(ModelEntry.__dataclass_fields__) - {"name"}
            unknown = sorted(set(item) - known)
            if unknown:
                raise ConfigError(f"model registry {path}: entry '{name}' has unknown key(s) {', '.join(unknown)}; "
                                  f"valid: {', '.join(sorted(known))}")
            entry = ModelEntry(name=str(name), **{k: item[k] for k in item if item[k] is not None})
            entry.sha256 = entry.sha256.lower() if entry.sha256 else None
            for key in [entry.name, *entry.aliases]:
                out[key.lower()] = entry
    return out


def known_names(registry: Dict[str, ModelEntry]) -> List[str]:
    return sorted({e.name for e in registry.values()}, key=str.lower)


def cache_file(entry: ModelEntry) -> Path:
    """Where the file of ``entry`` lives (and where to place it by hand with no network)."""
    return cache_root() / "models" / entry.name / entry.filename


def _pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_pin(path: Path) -> Dict[str, Any]:
    try:
        pin = json.loads(_pin_path(path).read_text())
        return pin if isinstance(pin, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_pin(path: Path, digest: str, source: str) -> None:
    from launcher.core.atomic import atomic_write_json

    st = path.stat()
    try:
        atomic_write_json(_pin_path(path), {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                            "source": source})
    except OSError:  # a read-only shared cache: the file is checked (hashed) on every use instead
        pass


def verify_cached(entry: ModelEntry, path: Path, note: Callable[[str], None]) -> None:
    """Check a cached file against the registry's sha256 (or the pin); pin it when neither exists.

    A file already verified at this size and mtime is not hashed again (the stamp in FILE.sha256.json).
    """
    pin = _read_pin(path)
    st = path.stat()
    expected = entry.sha256 or pin.get("sha256")
    if expected and pin.get("sha256") == expected and pin.get("size") == st.st_size \
            and pin.get("mtime_ns") == st.st_mtime_ns:
        return
    digest = sha256_of(path)
    if expected and digest != expected:
        where = "conf/models.yaml" if entry.sha256 else f"the pin in {_pin_path(path)}"
        raise ConfigError(f"model_in: {path} has sha256 {digest}, but {entry.name} must have {expected} ({where}); "
                          f"delete it to download it again, or place the right file there")
    if entry.sha256:
        _write_pin(path, digest, "registry sha256, verified")
    elif not pin:
        _write_pin(path, digest, "pinned at first use (no published sha256)")
        note(f"note: model_in: {entry.name} has no published sha256; pinned {digest} for {path} "
             f"(in {_pin_path(path).name}); later uses are checked against it")


def _offline_message(entry: ModelEntry, dest: Path, reason: str) -> str:
    return (f"model_in: cannot download {entry.name} ({reason}); with no network, download {entry.url} "
            f"elsewhere and place it at {dest}")


def download(entry: ModelEntry, dest: Path, note: Callable[[str], None]) -> Path:
    """Fetch ``entry`` to ``dest``: temp file, sha256 while streaming, fsync, check, rename."""
    import socket
    import urllib.error
    import urllib.request

    if os.environ.get("MLIP_LAUNCH_OFFLINE", "") not in ("", "0"):
        raise ConfigError(_offline_message(entry, dest, "MLIP_LAUNCH_OFFLINE is set"))
    timeout = float(os.environ.get("MLIP_LAUNCH_DOWNLOAD_TIMEOUT_S", "30"))
    try:
        resp = urllib.request.urlopen(urllib.request.Request(entry.url, headers={"User-Agent": "mlip-launch"}),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        raise ConfigError(f"model_in: cannot download {entry.name}: {entry.url} answered HTTP {e.code} "
                          f"({e.reason}); place the file at {dest}") from None
    except (urllib.error.URLError, socket.timeout, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(_offline_message(entry, dest, f"{entry.url}: {' '.join(str(reason).split())}")) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with resp:
            if "text/html" in (resp.headers.get("Content-Type") or ""):
                raise ConfigError(f"model_in: {entry.url} sent a web page, not the model file of {entry.name}; "
                                  f"place the file at {dest}")
            total = int(resp.headers.get("Content-Length") or 0) or None
            h = hashlib.sha256()
            from tqdm import tqdm

            with open(tmp, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=f"download {entry.name}", file=sys.stderr, disable=None) as bar:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    h.update(block)
                    bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        digest = h.hexdigest()
        if total is not None and tmp.stat().st_size != total:
            raise ConfigError(f"model_in: download of {entry.name} ended early ({tmp.stat().st_size} of {total} "
                              f"bytes); nothing was kept; run again, or place the file at {dest}")
        if entry.sha256 and digest != entry.sha256:
            raise ConfigError(f"model_in: download of {entry.name} from {entry.url} has sha256 {digest}, expected "
                              f"{entry.sha256} (conf/models.yaml); nothing was kept")
        os.replace(tmp, dest)
    except (OSError, socket.timeout) as e:
        raise ConfigError(_offline_message(entry, dest, f"{entry.url}: {' '.join(str(e).split())}")) from None
    finally:
        tmp.unlink(missing_ok=True)
    if entry.sha256:
        _write_pin(dest, digest, "registry sha256, verified at download")
    else:
        _write_pin(dest, digest, "pinned at first download (no published sha256)")
        note(f"note: model_in: {entry.name} has no published sha256; pinned {digest} for {dest} "
             f"(in {_pin_path(dest).name}); later uses are checked against it")
    return dest


def fetch(entry: ModelEntry, note: Callable[[str], None]) -> Path:
    """The verified local file of ``entry``, downloaded once."""
    dest = cache_file(entry)
    if dest.is_file():
        verify_cached(entry, dest, note)
        return dest
    return download(entry, dest, note)


def _as_name(value: str, bases: Sequence[Path]) -> Optional[str]:
    """The bare word a model_in was written as (the doors made it absolute against one of ``bases``)."""
    p = Path(value)
    if p.exists():
        return None
    if not p.is_absolute():
        return p.name if len(p.parts) == 1 else None
    folders = {Path(os.path.normpath(os.path.abspath(b))) for b in bases} | {Path(b).resolve() for b in bases}
    return p.name if p.parent in folders else None


def resolve_model_names(specs: Sequence[Any], bases: Sequence[Path],
                        note: Optional[Callable[[str], None]] = None) -> None:
    """Replace each ``model_in`` written as a registry name by its verified cached file (in place).

    ``bases``: the folders relative paths were resolved against (a bare name arrives as BASE/NAME).
    A file of that name wins over the registry. Every problem of every spec is raised together.
    """
    note = note or (lambda line: print(line, file=sys.stderr))
    pending = [(s, _as_name(str(s.model_in), bases)) for s in specs if s.model_in]
    pending = [(s, n) for s, n in pending if n]
    if not pending:
        return
    registry = load_registry()
    problems: List[str] = []
    fetched: Dict[str, Path] = {}
    for spec, word in pending:
        entry = registry.get(word.lower())
        if entry is None:
            problems.append(f"model_in: path not found: {spec.model_in} (not a file, and not a known model name; "
                            f"known names: {', '.join(known_names(registry))})")
            continue
        if entry.backend != spec.backend:
            problems.append(f"model_in: {entry.name} is a {entry.backend} model; backend={spec.backend} cannot use "
                            f"it (use backend={entry.backend})")
            continue
        if entry.heads and spec.task in ("evaluate", "infer", "export") \
                and getattr(spec.train, "head_key", None) not in entry.heads:
            problems.append(f"train.head_key: {spec.train.head_key} is not a head of {entry.name} "
                            f"(heads: {', '.join(entry.heads)})")
            continue
        if entry.name not in fetched:
            try:
                fetched[entry.name] = fetch(entry, note)
            except ConfigError as e:
                problems.append(" ".join(str(e).split()))
                fetched[entry.name] = None  # type: ignore[assignment]  # reported once
                continue
        if fetched[entry.name] is not None:
            spec.model_in = str(fetched[entry.name])
    if problems:
        raise ConfigErrors(list(dict.fromkeys(problems)))
