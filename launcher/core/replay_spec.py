"""``data.replay``: structures of the pretraining distribution mixed into a fine-tune, so that the base model's
knowledge is kept ("forgetting" of a backbone trained on a narrow set).

Declared here (a section of :class:`launcher.core.schema.DataSpec`) with its own rules, so the schema module
only names it. No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

REPLAY_SELECT = ("random", "fps")
PATH_LIST_KEYS = ("data.replay.paths",)   # keys holding a list of paths, resolved like the schema's PATH_KEYS


def _f(default: Any = None, doc: str = "", factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class ReplaySpec:
    """Replay of pretraining structures during task=finetune (and the resume of one). Off while ``paths`` is empty.

    Nothing is downloaded: the files are the user's own. Selection, in this order, seeded by the run seed:
    ``val_samples`` records held out for the replay errors, a candidate pool of at most ``pool`` of the rest,
    then ``max_samples`` of the pool (``random``, or ``fps``: farthest-point sampling on the base model's
    descriptors). The choice is cached in ``run_dir/replay/selection.json``, keyed by these keys, the seed and
    the files' sizes and times, so a resume reuses it and a changed input recomputes it.
    """

    paths: List[str] = _f(doc="LMDB files or folders of *.lmdb shards of the pretraining distribution, read as one "
                              "set in the given order; empty = no replay. Never downloaded: a missing or unreadable "
                              "file, or one with elements the model lacks, is refused before anything runs",
                          factory=list)
    max_samples: int = _f(1000, "replay structures selected for training (all candidates when fewer)")
    select: str = _f("random", "random: a seeded sample of the pool | fps: farthest-point sampling on the base "
                               "model's own invariant node descriptors, averaged per structure (MACE only; "
                               "computed once, before fine-tuning, over the pool)")
    pool: int = _f(10000, "candidate pool: at most this many records (seeded) are read as candidates; fps holds one "
                          "descriptor vector per candidate in memory (pool x descriptor size floats)")
    val_samples: Optional[int] = _f(None, "null = 64 where the backend reports replay errors (MACE), 0 where it cannot "
                                          "(FairChem). Replay records held out (seeded, never trained on) whose errors are reported at "
                              "every evaluation as split 'replay' (console, train.log, metrics.jsonl, TensorBoard, "
                              "curves.png); 0 = not reported")
    ratio: float = _f(0.5, "mixing ratio: every training micro-batch of train.batch_size fine-tune structures is "
                           "joined by max(1, round(ratio x train.batch_size)) replay structures, taken in a seeded "
                           "order that cycles through the selected set; their loss is computed in its own pass")
    weight: float = _f(1.0, "loss weight of replay: a micro-batch's loss is loss(fine-tune) + weight x "
                            "loss(replay), each mace's weighted loss over its own structures; 0 = replay adds "
                            "nothing to the loss")
    head: Optional[str] = _f(None, "head of a multi-head MACE model the replay structures train (null = the "
                                   "model's first, pretrained head); the fine-tune data trains train.head_key")


def replay_on(spec: Any) -> bool:
    """Whether a spec asks for replay."""
    return bool(spec.data.replay.paths)


def replay_problems(spec: Any) -> List[str]:
    """The rules of ``data.replay`` every backend shares, one line each."""
    r = spec.data.replay
    if not replay_on(spec):
        return []
    p: List[str] = []
    if spec.task not in ("finetune", "resume"):
        p.append(f"data.replay.paths: replay is for task=finetune (or the resume of one), not task={spec.task}")
    for key, value, low in (("max_samples", r.max_samples, 1), ("pool", r.pool, 1), ("val_samples", r.val_samples, 0)):
        if key == "val_samples" and value is None:
            continue
        if value is None or value < low:
            p.append(f"data.replay.{key}: must be >= {low}, got {value}")
    if not (r.ratio > 0 and math.isfinite(r.ratio)):
        p.append(f"data.replay.ratio: must be a number > 0, got {r.ratio}")
    if not (r.weight >= 0 and math.isfinite(r.weight)):
        p.append(f"data.replay.weight: must be a number >= 0, got {r.weight}")
    if r.pool is not None and r.max_samples is not None and r.pool < r.max_samples:
        p.append(f"data.replay.pool: {r.pool} candidates cannot give data.replay.max_samples={r.max_samples}")
    return p


def replay_val_samples(spec: Any, reported: int = 64) -> int:
    """``data.replay.val_samples``, its null read as ``reported`` (the default of a backend that reports them)."""
    v = spec.data.replay.val_samples
    return reported if v is None else int(v)


def replay_per_batch(ratio: float, batch_size: int) -> int:
    """Replay structures joined to each training micro-batch of ``batch_size``."""
    return max(1, int(round(float(ratio) * int(batch_size))))
