"""``eval.heads``: each head of a multi-head model on its own data, and the base model it was fine-tuned from.

Every head streams its data as evaluate streams ``data.<eval.split>`` (``trainers.mace.predict.stream_into`` into
a ``launcher.core.metrics.EvalStream``), so the files under ``eval/heads/<head>/`` are those a
``task=evaluate`` with ``train.head_key=<head>`` and ``data.<eval.split>=<its data>`` writes, and the rows of
``eval/metrics_by_head.csv`` are their metrics. A fine-tune's manifest records its base model
(:func:`base_model_record`); evaluate loads it again, checks its weights are the recorded ones, and evaluates it on
the heads it has (``eval/base/heads/<head>/``), for ``eval/compare_base_by_head.csv``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from launcher.core.errors import ConfigError

Note = Callable[[str], None]


def _folder(head: str) -> str:
    """A head's name as a folder name (as ``RunLayout.mace_head_model`` spells it in a file name)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in head)


def head_indices(spec: Any, path: str) -> np.ndarray:
    """The entries of a head's data that evaluate reads: the sampling block of ``data.<eval.split>_indices``
    (``max_samples``, ``shuffle``, ``seed``) applied to that file; reads only the shards' lengths."""
    from data.indices import select_indices
    from trainers.mace.stream import open_lmdb, trust_pickles

    sampling = getattr(spec.data, f"{spec.eval.split}_indices")
    ds = open_lmdb(path, trust_pickles(spec))
    try:
        n = len(ds)
    finally:
        ds.close()
    return select_indices(n, max_samples=sampling.max_samples, shuffle=sampling.shuffle, seed=sampling.seed,
                          split=spec.eval.split)


def evaluate_head(spec: Any, loaded: Any, model: Any, device: Any, head: str, path: str, out_dir: Path,
                  note: Note) -> Dict[str, Any]:
    """``head`` of ``model`` on ``path`` into ``out_dir`` (the eval files); its metrics."""
    from launcher.core.metrics import EvalStream
    from trainers.mace import stream
    from trainers.mace.loop import progress_enabled
    from trainers.mace.model_config import heads_of
    from trainers.mace.predict import EvalGraphs, stream_into

    cfg = loaded.config
    heads = heads_of(cfg)
    if head not in heads:
        raise ConfigError(f"eval.heads: '{head}' is not a head of this model; its heads: {', '.join(heads)}")
    idx = head_indices(spec, path)
    key = f"eval.heads.{head}"
    source = EvalGraphs(stream.SplitGraphs(path, idx, cfg["atomic_numbers"], cfg["r_max"], heads, head,
                                           what=f"{key} ({path})", trust_pickles=stream.trust_pickles(spec)),
                        group_by=spec.eval.group_by)
    out = EvalStream(out_dir, with_metrics=True, with_forces=not spec.eval.energy_only, group_by=spec.eval.group_by)
    try:
        stream_into(out, model, source, spec=spec, device=device, with_metrics=True, key=key,
                    progress=progress_enabled(spec.train.progress_bar, True))
        metrics = out.finish(extra={"head": head, "model": loaded.source, "dataset": path}, note=note)
    except BaseException:
        out.discard()
        raise
    assert metrics is not None
    return metrics


def evaluate_heads(ctx: Any, loaded: Any, model: Any, device: Any, note: Note) -> Dict[str, Dict[str, Any]]:
    """Every head ``eval.heads`` names on its data (``eval/heads/<head>/``), then ``eval/metrics_by_head.csv``
    and one console line per head; head -> its metrics."""
    from launcher.core.head_tables import write_metrics_by_head
    from launcher.core.metrics import metrics_line

    spec = ctx.spec
    by_head: Dict[str, Dict[str, Any]] = {}
    for head, path in spec.eval.heads.items():
        by_head[head] = evaluate_head(spec, loaded, model, device, head, path,
                                      ctx.layout.eval_dir / "heads" / _folder(head), note)
        note(f"evaluate head {head} ({path}): {metrics_line(by_head[head])}")
    write_metrics_by_head(ctx.layout.eval_dir / "metrics_by_head.csv", by_head)
    return by_head


# ---------------------------------------------------------------- the base model of a fine-tune
def base_model_record(spec: Any, source: str) -> Optional[Dict[str, Any]]:
    """What a fine-tune's manifest records of the model it started from (``base_model``): the run keys that name
    it (``model_in``, ``model.manifest``, ``model.weights``), the weights file read and its sha256; None when the
    run did not start from a model file (a train, or a resume that cannot tell)."""
    from launcher.core.layout import sha256_file

    weights = Path(str(source))
    if spec.task not in ("finetune", "resume") or not weights.is_file():
        return None
    return {"model_in": spec.model_in, "manifest": spec.model.manifest, "weights_key": spec.model.weights,
            "weights": str(weights), "sha256": sha256_file(weights)}


def evaluated_manifest(spec: Any) -> Optional[Path]:
    """The manifest of the model an evaluate reads: ``model.manifest``, a manifest or run directory as
    ``model_in``, or the run directory a ``model_in`` file sits in (its artifacts/ or checkpoints/)."""
    from launcher.core.layout import RunLayout

    if spec.model.manifest:
        return Path(spec.model.manifest)
    if not spec.model_in:
        return None
    p = Path(spec.model_in)
    if p.name.endswith(".json"):
        return p
    if p.is_dir():
        return RunLayout.of(p).manifest
    if p.parent.name in ("artifacts", "checkpoints"):
        cand = RunLayout.of(p.parent.parent).manifest
        return cand if cand.is_file() else None
    return None


def _load_base(spec: Any, record: Dict[str, Any], note: Note) -> Optional[Any]:
    """The base model as its fine-tune read it, or None (with a note why) when its files are gone or changed."""
    from launcher.core.layout import sha256_file
    from launcher.core.schema import ModelSpec
    from trainers.mace.model_io import load_model

    weights = Path(str(record.get("weights") or ""))
    if not weights.is_file():
        note(f"base model: {weights} is gone; no comparison with the base model")
        return None
    if sha256_file(weights) != record.get("sha256"):
        note(f"base model: {weights} has changed since the fine-tune (sha256); no comparison with the base model")
        return None
    # the model config comes from the recorded files alone: the evaluate's own train.input_json describes no base
    base_spec = dataclasses.replace(spec, model_in=record.get("model_in"),
                                    model=ModelSpec(manifest=record.get("manifest"), weights=record.get("weights_key")),
                                    train=dataclasses.replace(spec.train, input_json=None))
    try:
        loaded = load_model(base_spec, prefer="best")
    except ConfigError as e:
        note(f"base model: cannot load it again ({' '.join(str(e).split())}); no comparison with the base model")
        return None
    if Path(loaded.source).resolve() != weights.resolve():
        note(f"base model: its run keys now name {loaded.source}, not {weights}; no comparison with the base model")
        return None
    return loaded


def compare_with_base(ctx: Any, loaded: Any, after: Dict[str, Dict[str, Any]], device: Any, note: Note,
                      kernels: Callable[[Any, Any], Any]) -> Optional[list]:
    """The base model named by the evaluated model's manifest (``base_model``) on each head of ``after`` it has
    (``eval/base/heads/<head>/``); ``eval/compare_base_by_head.csv`` and its console table; its rows, or None
    when the manifest names no base model (or it cannot be read as it was)."""
    from launcher.core.head_tables import compare_lines, compare_rows, write_compare_csv
    from launcher.core.layout import read_manifest
    from trainers.mace.model_config import heads_of

    spec = ctx.spec
    manifest = evaluated_manifest(spec)
    record = read_manifest(manifest).get("base_model") if manifest is not None and manifest.is_file() else None
    if not isinstance(record, dict):
        return None
    base = _load_base(spec, record, note)
    if base is None:
        return None
    model = kernels(base.model.to(device), device)
    before: Dict[str, Optional[Dict[str, Any]]] = {}
    for head in after:
        before[head] = None
        if head in heads_of(base.config):
            before[head] = evaluate_head(spec, base, model, device, head, spec.eval.heads[head],
                                         ctx.layout.eval_dir / "base" / "heads" / _folder(head), note)
    rows = compare_rows(after, before)
    write_compare_csv(ctx.layout.eval_dir / "compare_base_by_head.csv", rows)
    note(f"base model {base.source} (before) vs {loaded.source} (after), per head:")
    for line in compare_lines(rows):
        note(line)
    return rows
