"""The standard run directory, the same for every backend; this module owns its paths and the manifest.

```
run_dir/
  run.yaml                   resolved RunSpec, absolute paths
  artifacts/best_model.pt    weights of the best validation epoch
  artifacts/manifest.json    backend, versions, model config, heads, sha256 of weights and sources
  checkpoints/checkpoint.pt  latest full training state (atomic)
  logs/                      train.log, metrics.jsonl, native backend stdout, plots
  state.json                 run state: running | preempted | finished | failed (written by launcher.job);
                             read through RunLayout.status(), which reports a "running" run whose process
                             is gone as "interrupted"
  .lock                      held (flock) by the job that owns the directory
```

Every path inside a run directory comes from :class:`RunLayout`; no other module joins one by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from launcher.core.atomic import atomic_write_json
from launcher.core.errors import ConfigError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> "RunLayout":
        return cls(Path(run_dir).expanduser().resolve())

    @property
    def run_yaml(self) -> Path:
        return self.root / "run.yaml"

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def best_model(self) -> Path:
        return self.artifacts / "best_model.pt"

    @property
    def model_json(self) -> Path:
        return self.artifacts / "model.json"

    @property
    def manifest(self) -> Path:
        return self.artifacts / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / "checkpoint.pt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def train_log(self) -> Path:
        return self.logs / "train.log"

    @property
    def metrics_jsonl(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def curves_png(self) -> Path:
        """Learning curves drawn from metrics.jsonl after each validation (launcher.core.curves)."""
        return self.logs / "curves.png"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (train.logger=tensorboard), the core trainer's or FairChem's own."""
        return self.logs / "tensorboard"

    @property
    def eval_dir(self) -> Path:
        """evaluate/infer outputs: metrics.json, metrics.csv, predictions.csv, predictions_forces.npz."""
        return self.root / "eval"

    @property
    def lock(self) -> Path:
        """The file a running job holds an exclusive lock on (one job per run directory)."""
        return self.root / ".lock"

    @property
    def best_checkpoint(self) -> Path:
        """Full training state of the best validation epoch (native backends keep one)."""
        return self.checkpoints / "best_checkpoint.pt"

    def artifact(self, name: str) -> Path:
        """A file a backend adds to ``artifacts/`` under its own name (an export in its native format...): the
        backend declares the name, the layout places it."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"artifact name must be a plain file name, got {name!r}")
        return self.artifacts / name

    def file(self, relative: str) -> Path:
        """A path a backend declares relative to the run directory (``trainers.api.BackendBase.model_sources``)."""
        return self.root / relative

    def task_yaml(self, task: str) -> Path:
        """Where evaluate/infer/export record their spec when they add to a finished run."""
        return self.root / f"run.{task}.yaml"

    def indices_json(self, task: Optional[str] = None) -> Path:
        """The indices each split used: ``logs/indices.json`` (training) or ``logs/indices.<task>.json``."""
        return self.logs / ("indices.json" if task is None else f"indices.{task}.json")

    def native(self, name: str) -> Path:
        """The folder a native backend keeps its own tree in, under the name it declares."""
        return self.root / name

    def native_log(self, name: str, run_id: str) -> Path:
        """Console output of one native backend invocation."""
        return self.logs / f"{name}-{run_id}.log"

    def create(self) -> "RunLayout":
        for d in (self.root, self.artifacts, self.checkpoints, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # ---- state.json ----
    def read_state(self) -> Dict[str, Any]:
        """The run's state record; {} when absent or unreadable (a run that never started)."""
        from launcher.core.readers import MAX_JSON_BYTES, read_bytes

        try:  # regular files only: a FIFO in its place must not block the launch
            state = json.loads(read_bytes(self.state_json, key=None, max_bytes=MAX_JSON_BYTES).decode("utf-8"))
        except (ConfigError, OSError, ValueError, RecursionError):
            return {}
        return state if isinstance(state, dict) else {}

    def status(self) -> str:
        """The run's status as it stands now: state.json's, except that a "running" run whose job is
        gone (killed, its node rebooted) is "interrupted". "" when the run never started."""
        return effective_status(self.read_state())

    def write_state(self, **fields: Any) -> Dict[str, Any]:
        """Update state.json with ``fields`` (atomically) and return the new record."""
        state = self.read_state()
        state.update(fields)
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.state_json, state)
        return state


def process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks after boot, from /proc), None where unknown.

    Recorded next to the pid so that a pid reused by another process is not taken for the run's."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def owner_alive(state: Dict[str, Any]) -> Optional[bool]:
    """Whether the job that wrote ``state`` still runs: True/False on its own host, None elsewhere."""
    pid, host = state.get("pid"), state.get("host")
    if not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user has the pid now: alive, but see the start time
    started = state.get("pid_start")
    if started is not None and process_start(pid) not in (None, started):
        return False
    return True


def effective_status(state: Dict[str, Any]) -> str:
    """``state["status"]``, with "running" reported as "interrupted" when its job is known to be dead."""
    status = str(state.get("status") or "")
    if status == "running" and owner_alive(state) is False:
        return "interrupted"
    return status


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files in sorted order (LMDB shard folders)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith("-lock")):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def package_versions(names: Iterable[str]) -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def write_manifest(
    layout: RunLayout,
    *,
    backend: str,
    weights: Path,
    model_config: Dict[str, Any],
    heads: Optional[list] = None,
    data: Optional[Dict[str, Optional[str]]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    versions: Optional[Dict[str, Optional[str]]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Write ``artifacts/manifest.json``: what the weights are and how to rebuild the model.

    ``data`` maps split names to dataset paths; their sha256 is recorded so a result can be
    traced to the exact files it came from.
    """
    from launcher.core.schema import SCHEMA_VERSION

    weights = Path(weights)
    manifest: Dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "versions": versions or package_versions(["mlip-launch"]),   # a backend passes its own packages
        "weights": {
            "path": os.path.relpath(weights, layout.artifacts) if weights.is_relative_to(layout.artifacts) else str(weights),
            "sha256": sha256_file(weights),
        },
        "model": model_config,
        "heads": heads or [],
        "data": {
            split: {"path": p, "sha256": sha256_path(Path(p)) if p and Path(p).exists() else None}
            for split, p in (data or {}).items()
        },
        "metrics": metrics or {},
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(layout.manifest, manifest)
    return manifest


def read_json_file(path: Path, *, key: str, missing_hint: str = "") -> Any:
    """Parse a JSON input file (:func:`launcher.core.readers.load_json`: regular files only, bounded, UTF-8,
    no duplicate keys); a missing or malformed one is a one-line ConfigError naming ``key``."""
    from launcher.core.readers import load_json

    path = Path(path)
    if missing_hint and not path.exists() and not path.is_symlink():
        raise ConfigError(f"{key}: file not found: {path}{missing_hint}")
    return load_json(path, key=key)


def read_manifest(path: Path) -> Dict[str, Any]:
    """A model manifest in either form we read, as its raw mapping.

    - ours (``manifest_version``): ``backend``, ``weights: {path, sha256}``, ``model`` (the model config);
    - the original implementation's bundles (``schema_version: v1``): ``backend``, ``weights`` and
      ``source`` as ``{path, format, sha256}``, ``config`` (the model config), ``io``, ``rebuildable``.

    Read the parts through :func:`manifest_model_config` and :func:`manifest_weights_path`, which
    understand both; :func:`verify_manifest_weights` checks the recorded sha256.
    """
    path = Path(path)
    m = read_json_file(path, key="model.manifest")
    if not isinstance(m, dict) or "backend" not in m or not ("weights" in m or "source" in m):
        raise ConfigError(f"model.manifest: {path} is not a model manifest (needs 'backend' and 'weights')")
    if "schema_version" in m and "manifest_version" not in m and str(m["schema_version"]) != "v1":
        raise ConfigError(f"model.manifest: {path} has schema_version {m['schema_version']!r}; this version "
                          "reads v1 bundles and its own manifests")
    for part in ("weights", "source"):
        entry = m.get(part)
        if entry is not None and not (isinstance(entry, dict) and entry.get("path")):
            raise ConfigError(f"model.manifest: {path}: '{part}' must be a mapping with a 'path'")
    return m


def manifest_form(manifest: Dict[str, Any]) -> str:
    """``mlip-launch`` for our own manifests, ``v1`` for the original implementation's bundles."""
    return "mlip-launch" if "manifest_version" in manifest else "v1"


def manifest_model_config(manifest: Dict[str, Any]) -> Dict[str, Any]:
    """The model configuration a manifest carries (ours: ``model``; v1 bundles: ``config``)."""
    cfg = manifest.get("model") if manifest_form(manifest) == "mlip-launch" else manifest.get("config")
    return dict(cfg) if isinstance(cfg, dict) else {}


def _manifest_file(manifest_path: Path, entry: Dict[str, Any]) -> Path:
    p = Path(str(entry["path"])).expanduser()
    return p if p.is_absolute() else (Path(manifest_path).parent / p).resolve()


def manifest_weights_path(manifest_path: Path, manifest: Dict[str, Any]) -> Path:
    """The weights a manifest names (a relative path is relative to the manifest's folder)."""
    entry = manifest.get("weights") or manifest.get("source")
    return _manifest_file(manifest_path, entry)


def verify_manifest_weights(manifest_path: Path, manifest: Dict[str, Any], weights: Path,
                            key: str = "model.manifest") -> None:
    """Refuse weights whose sha256 differs from the one the manifest records for them.

    Only the file the manifest names is checked (``model.weights`` pointing elsewhere is the user's
    override); a manifest without a sha256 is taken as it is.
    """
    entry = manifest.get("weights") or manifest.get("source") or {}
    want = entry.get("sha256") if isinstance(entry, dict) else None
    if not want or Path(weights).resolve() != manifest_weights_path(manifest_path, manifest).resolve():
        return
    if not Path(weights).is_file():
        raise ConfigError(f"{key}: {manifest_path} names weights {weights}, which do not exist")
    got = sha256_file(Path(weights))
    if got != want:
        raise ConfigError(f"{key}: {weights} has sha256 {got[:12]}..., but {manifest_path} records {want[:12]}... "
                          "(a different or damaged file)")
