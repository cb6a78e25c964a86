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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


# ---------------------------------------------------------------------------------------------
# The model a run starts from (model_in / model.manifest / model.weights), checked as the job reads it
# ---------------------------------------------------------------------------------------------
# Every refusal the job would make on these inputs is made here, before anything is queued, so a dry run and
# the launch give the same verdict in well under a second: the job only learns of them after importing torch.

_SHA_MEMO: Dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: a sweep's points share their model


def _sha256_once(path: Path) -> str:
    st = path.stat()
    ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if ident not in _SHA_MEMO:
        _SHA_MEMO[ident] = sha256_of(path)
    return _SHA_MEMO[ident]


def torch_file_problem(key: str, path: Path) -> Optional[str]:
    """``path`` must be a file ``torch.save`` wrote (zip archive with a data.pkl, or a legacy pickle):
    anything else fails the job's ``torch.load``. Reads the header only (no torch)."""
    import zipfile

    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if any(n.endswith("data.pkl") for n in zf.namelist()):
                    return None
        elif head[:1] == b"\x80" and head[1:2] and head[1] <= 5:  # pickle protocol 2..5 (torch's legacy format)
            return None
    except (OSError, zipfile.BadZipFile) as e:
        return f"{key}: cannot read {path} ({getattr(e, 'strerror', None) or ' '.join(str(e).split())})"
    what = "empty" if path.stat().st_size == 0 else "not a PyTorch file"
    return (f"{key}: {path} is {what}; expected a torch.save archive (checkpoint, .model or weights), "
            "a manifest.json or a run directory")


def _registered_other(name: Any, spec: Any) -> bool:
    """``name`` is another registered backend than the spec's (an unknown word is the backend's to judge)."""
    from launcher.core.plugins import backend_names

    return isinstance(name, str) and name != spec.backend and name in backend_names()


def _recorded_backend(run_dir: Path) -> Optional[str]:
    """The backend an earlier run dir was made by: its run.yaml, else its manifest; None when neither says."""
    import yaml

    from launcher.core.layout import RunLayout

    layout = RunLayout.of(run_dir)
    for path, load in ((layout.run_yaml, yaml.safe_load), (layout.manifest, json.loads)):
        try:
            obj = load(path.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("backend"), str):
            return obj["backend"]
    return None


def _model_sources(spec: Any) -> tuple:
    """The files beyond checkpoint and manifest that ``spec``'s backend starts from (its ``model_sources``)."""
    from launcher.backends import REGISTRY, get_backend
    from launcher.core.errors import NotImplementedBackend

    try:
        return get_backend(spec.backend).model_sources if spec.backend in REGISTRY else ()
    except NotImplementedBackend:
        return ()


def _run_dir_problems(spec: Any, run_dir: Path) -> Tuple[List[str], Optional[Path]]:
    """A run directory as ``model_in``: made by this backend, holding a model; (problems, its manifest)."""
    from launcher.core.layout import RunLayout

    theirs = RunLayout.of(run_dir)
    backend = _recorded_backend(run_dir)
    if _registered_other(backend, spec):
        return [f"model_in: {run_dir} is a run of backend={backend}; backend={spec.backend} cannot use it "
                f"(use backend={backend}, or a model of backend={spec.backend})"], None
    held = [p for p in (theirs.checkpoint, theirs.manifest, *map(theirs.file, _model_sources(spec))) if p.is_file()]
    if not held:
        what = "is empty" if not any(run_dir.iterdir()) else "holds no model"
        return [f"model_in: {run_dir} {what}: expected a run directory holding checkpoints/checkpoint.pt or "
                f"artifacts/manifest.json, or a model file"], None
    problems = [p for p in (torch_file_problem("model_in", c) for c in held if c.suffix == ".pt") if p]
    from launcher.core.schema import TRAINING_TASKS

    # training tasks start from the checkpoint when there is one (the manifest is then not read)
    used = theirs.manifest.is_file() and not (spec.task in TRAINING_TASKS and theirs.checkpoint.is_file())
    return problems, theirs.manifest if used else None


def _weights_escape(manifest_path: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """A relative ``weights.path`` must stay inside the manifest's folder (a bundle is a folder; ``..`` out of
    it reaches files the bundle does not own). Absolute paths are taken as written."""
    entry = manifest.get("weights")
    raw = str(entry.get("path")) if isinstance(entry, dict) else None
    if not raw or os.path.isabs(os.path.expanduser(raw)):
        return None
    folder = os.path.normpath(os.path.abspath(manifest_path.parent))
    target = os.path.normpath(os.path.join(folder, raw))
    if os.path.commonpath([folder, target]) != folder:
        return f"weights.path '{raw}' leaves the manifest's folder {folder}"
    return None


def _manifest_problems(spec: Any, key: str, path: Path, weights: Optional[Path]) -> List[str]:
    """A manifest (``model.manifest``, or a ``*.json`` / run dir as ``model_in``): its shape, backend, the
    weights it names (inside its folder, present, a torch file, the sha256 it records); ``weights``:
    ``model.weights``, which replaces the manifest's own."""
    from launcher.core.layout import manifest_weights_path, read_manifest

    if not path.is_file():
        return [f"{key}: expected a manifest.json file, got a directory: {path}"]
    try:
        m = read_manifest(path)
    except ConfigError as e:
        msg = " ".join(str(e).split())
        return [msg if msg.startswith(f"{key}:") else f"{key}: {msg.split(': ', 1)[-1]}"]
    if _registered_other(m.get("backend"), spec):
        return [f"{key}: {path} is a {m['backend']} model; backend={spec.backend} cannot use it "
                f"(use backend={m['backend']})"]
    from launcher.core.layout import manifest_model_config
    from launcher.core.numbers import nonfinite_number

    bad = nonfinite_number(manifest_model_config(m))
    if bad:
        return [f"{key}: {path}: the model's {bad[0]} is {bad[1]}; expected a finite number"]
    escape = _weights_escape(path, m)
    if escape:
        return [f"{key}: {path}: {escape}; expected a file in that folder (or an absolute path)"]
    named = manifest_weights_path(path, m)
    problems = _head_problems(spec, key, path, m)
    if weights is not None and weights.resolve() != named.resolve():
        return problems  # the user's own weights (model.weights is checked by itself)
    fairchem = m.get("fairchem") if isinstance(m.get("fairchem"), dict) else {}
    if fairchem.get("checkpoint") and (path.parent / str(fairchem["checkpoint"])).is_file():
        return problems  # a FairChem run's manifest: its backend starts from the checkpoint beside it
    if not named.is_file():
        return problems + [f"{key}: {path} names weights {named}, which do not exist"]
    bad = torch_file_problem(key, named)
    if bad:
        return problems + [bad]
    entry = m.get("weights") or m.get("source") or {}
    want = str(entry.get("sha256") or "").lower()
    if want and _sha256_once(named) != want:
        return problems + [f"{key}: {named} has sha256 {_sha256_once(named)[:12]}..., but {path} records "
                           f"{want[:12]}... (a different or damaged file)"]
    return problems


def _head_problems(spec: Any, key: str, path: Path, manifest: Dict[str, Any]) -> List[str]:
    """``train.head_key`` of a task that uses the model's own heads must be one of a multi-head model's, and so
    must every ``eval.heads`` name."""
    from launcher.core.layout import manifest_model_config

    if spec.task == "train" or (spec.task == "finetune" and spec.train.input_json):
        return []  # train builds its model; a finetune with a model.json may add heads
    from launcher.core.heads import head_problems

    cfg = manifest_model_config(manifest)
    heads = cfg.get("heads") or manifest.get("heads") or []
    return head_problems(spec, heads, str(path)) if isinstance(heads, list) else []


def model_input_problems(spec: Any) -> List[str]:
    """Every problem of the model a spec starts from, one line each naming the key and file (no torch)."""
    problems: List[str] = []
    weights = Path(spec.model.weights) if spec.model.weights else None
    if spec.model_in:
        p = Path(spec.model_in)
        if not p.exists():
            problems.append(f"model_in: path not found: {p}")
        elif p.is_dir():
            found, manifest = _run_dir_problems(spec, p)
            problems += found
            if manifest is not None and not found:
                problems += _manifest_problems(spec, "model_in", manifest, weights)
        elif p.name.endswith(".json"):
            problems += _manifest_problems(spec, "model_in", p, weights)
        else:
            problems += [x for x in [torch_file_problem("model_in", p)] if x]
    if spec.model.manifest:
        p = Path(spec.model.manifest)
        if not p.exists():
            problems.append(f"model.manifest: file not found: {p}")
        else:
            problems += _manifest_problems(spec, "model.manifest", p, weights)
    if weights is not None:
        if not weights.exists():
            problems.append(f"model.weights: file not found: {weights}")
        elif not weights.is_file():
            problems.append(f"model.weights: expected a file, got a directory: {weights}")
        else:
            problems += [x for x in [torch_file_problem("model.weights", weights)] if x]
    return list(dict.fromkeys(problems))
