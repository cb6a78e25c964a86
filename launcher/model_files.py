"""Preflight of the model files a run would unpickle: each checked against its backend's allow-list.

A backend that loads pickled model files states what they may name (``model_globals``, fully qualified
names beyond what torch's weights-only unpickler allows by itself); a file naming anything else is
refused here, one line naming the key, the file and the global, before anything runs (a dry run
included), unless ``data.trust_pickles=true``. The job's own loader enforces the same list. No torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List, Optional, Tuple

from launcher.core.safe_pickle import NotAPickle, refusal, refused_globals


def _manifest_weights(manifest: Path) -> Optional[Path]:
    from launcher.core.errors import ConfigError
    from launcher.core.layout import manifest_weights_path, read_manifest

    try:
        return manifest_weights_path(manifest, read_manifest(manifest))
    except (ConfigError, OSError, TypeError, KeyError):
        return None     # reported by the manifest checks


def model_files(spec: Any, own: bool = True) -> List[Tuple[str, Path]]:
    """``(key, file)`` for every existing pickled file the job may load from ``model_in``, ``model.manifest``
    (its weights) and ``model.weights``; a run directory as ``model_in`` brings its checkpoint and the
    weights its manifest names. ``own``: also the checkpoints in ``run_dir`` itself that a resume (or an
    evaluate/infer/export naming no model) starts from, keyed ``run_dir``."""
    from launcher.core.layout import RunLayout

    found: List[Tuple[str, Path]] = []
    manifests: List[Tuple[str, Path]] = []
    no_model = not (spec.model_in or spec.model.manifest or spec.model.weights)
    if own and spec.run_dir and (spec.task == "resume" or (no_model and spec.task in ("evaluate", "infer", "export"))):
        mine = RunLayout.of(spec.run_dir)
        found += [("run_dir", mine.checkpoint), ("run_dir", mine.best_checkpoint)]
    if spec.model_in:
        p = Path(spec.model_in)
        if p.is_dir():
            theirs = RunLayout.of(p)
            found.append(("model_in", theirs.checkpoint))
            manifests.append(("model_in", theirs.manifest))
        elif p.suffix == ".json":
            manifests.append(("model_in", p))
        else:
            found.append(("model_in", p))
    if spec.model.manifest and not spec.model.weights:
        manifests.append(("model.manifest", Path(spec.model.manifest)))
    if spec.model.weights:
        found.append(("model.weights", Path(spec.model.weights)))
    for key, manifest in manifests:
        weights = _manifest_weights(manifest) if manifest.is_file() else None
        if weights is not None:
            found.append((key, weights))
    return [(k, p) for k, p in dict.fromkeys(found) if p.is_file()]


def check_files(files: Iterable[Tuple[str, Path]], allowed: Iterable[str]) -> List[str]:
    """One line per file that names a global off ``allowed`` (unreadable files are left to the format checks)."""
    allowed = frozenset(allowed)
    problems: List[str] = []
    for key, path in files:
        try:
            refused = refused_globals(path, allowed)
        except (NotAPickle, OSError):
            continue
        if refused:
            problems.append(refusal(key, path, refused))
    return problems


def model_file_problems(spec: Any) -> List[str]:
    """The allow-list problems of ``spec``'s model files (none with ``data.trust_pickles=true``)."""
    from launcher.backends import REGISTRY, get_backend

    from launcher.core.errors import NotImplementedBackend

    if spec.data.trust_pickles or spec.backend not in REGISTRY:
        return []
    try:
        allowed = get_backend(spec.backend).model_globals
    except NotImplementedBackend:
        return []       # reported by the backend checks
    if allowed is None:
        return []
    return check_files(model_files(spec), allowed)
