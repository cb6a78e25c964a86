"""What a fine-tune with ``data.replay`` adds to the training loop: the selected replay graphs, their stream,
head and loss weight (selection and order: :mod:`trainers.mace.replay`).

Mixing, precisely: each training micro-batch (``train.batch_size`` fine-tune structures) is joined by
``k = max(1, round(data.replay.ratio x train.batch_size))`` replay structures in a pass of their own; the
micro-batch's loss is ``loss(fine-tune) + data.replay.weight x loss(replay)`` (mace's weighted loss, each over
its own structures), divided by ``train.accum_steps`` as before. The fine-tune data trains ``train.head_key``,
replay trains ``data.replay.head`` (default: the model's first, pretrained head).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from launcher.core.errors import ConfigError
from launcher.core.replay_spec import replay_on, replay_per_batch


@dataclass
class ReplayRun:
    train: Any          # ReplayGraphs of the selected records
    val: Any            # ReplayGraphs of the held-out records (may be empty)
    feed: Any           # ReplayFeed: positions per micro-batch
    head: str
    weight: float
    per_batch: int


class Micro(list):
    """The collated micro-batches of one update; ``replay``: their replay micro-batches (same length) or None."""

    replay: Optional[List[Any]] = None


def replay_head(cfg: dict, wanted: Optional[str]) -> str:
    """``data.replay.head``, or the model's first (pretrained) head; a name the model lacks is refused."""
    from trainers.mace.model_config import heads_of

    heads = heads_of(cfg)
    if wanted is None:
        return heads[0]
    if wanted not in heads:
        raise ConfigError(f"data.replay.head: '{wanted}' is not a head of this model; its heads: {', '.join(heads)}")
    return wanted


def setup_replay(tr: Any, base_model: Any) -> Optional[ReplayRun]:
    """The replay of trainer ``tr`` (None without ``data.replay``); ``base_model``: the model before any update
    (e3nn form, on the device), whose descriptors ``select=fps`` uses."""
    spec = tr.spec
    if not replay_on(spec):
        return None
    if tr.source == "init":   # task=resume of a run that trained a model from scratch
        raise ConfigError(f"data.replay.paths: replay is for fine-tunes; {tr.layout.checkpoint if tr.ctx.resume else spec.model_in} "
                          "continues a model trained from scratch (task=train)")
    from trainers.mace import replay

    r, t = spec.data.replay, spec.train
    head = replay_head(tr.cfg, r.head)
    zs, trust = tr.cfg["atomic_numbers"], bool(spec.data.trust_pickles)

    def graphs(refs: Any) -> Any:
        return replay.ReplayGraphs(r.paths, refs, zs, tr.cfg["r_max"], tr.heads, head, trust)

    def descriptors(rows: Any) -> Any:
        from trainers.mace.replay_fps import structure_descriptors

        tr.log.info(f"replay: descriptors of {len(rows)} candidates for farthest-point sampling")
        return structure_descriptors(base_model, graphs(rows), batch_size=t.batch_size, device=tr.device,
                                     num_workers=t.num_workers)

    sel = None
    if tr.main:   # fps runs the model once, on one process; every rank gets the same selection
        sel = replay.select(spec, zs, tr.layout.root / "replay", descriptors=descriptors,
                            note=tr.log.info, source=str(tr.source), resumed=tr.ckpt is not None)
    sel = tr.dist.broadcast_object(sel)
    k = replay_per_batch(r.ratio, t.batch_size)
    run = ReplayRun(train=graphs(sel["train"]), val=graphs(sel["val"]),
                    feed=replay.ReplayFeed(len(sel["train"]), k, tr.seed, tr.dist.rank, tr.dist.world),
                    head=head, weight=float(r.weight), per_batch=k)
    tr.log.info(f"replay: {len(run.train)} structures selected ({r.select}) from {sel['pool']} candidates of "
                f"{sel['of']} records, {len(run.val)} held out for the replay errors; each micro-batch of "
                f"{t.batch_size} fine-tune structures is joined by {k} replay structures (ratio {r.ratio:g}), "
                f"loss = fine-tune + {r.weight:g} x replay; replay trains head {head}, the fine-tune data {tr.head}")
    return run
