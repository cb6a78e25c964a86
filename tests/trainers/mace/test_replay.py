"""data.replay in the core trainer, the parts without training: the replay stream, farthest-point sampling,
the TensorBoard scalars of replay records, the per-batch count."""
from __future__ import annotations

import numpy as np


def test_feed_cycles_seeded_passes_and_splits_ranks():
    from trainers.mace.replay import ReplayFeed

    one = ReplayFeed(n=10, per_batch=3, seed=1, rank=0, world=1)
    taken = [p for c in range(10) for p in one.batch(c)]       # 30 positions = 3 passes over 10
    for p in range(3):
        assert sorted(taken[10 * p:10 * p + 10]) == list(range(10))
    assert taken[:10] != taken[10:20]                           # each pass its own order
    assert taken == [p for c in range(10) for p in ReplayFeed(10, 3, 1, 0, 1).batch(c)]
    r0, r1 = ReplayFeed(10, 2, 1, 0, 2), ReplayFeed(10, 2, 1, 1, 2)
    both = [p for c in range(5) for p in r0.batch(c) + r1.batch(c)]
    assert sorted(both[:10]) == list(range(10))                  # two ranks share a pass without overlap


def test_farthest_points_reaches_every_cluster():
    from trainers.mace.replay_fps import farthest_points

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((50, 2)) for c in centres])
    order = rng.permutation(len(x))
    xs = x[order]
    picked = farthest_points(xs, 4)
    assert {int(np.argmin(((centres - xs[i]) ** 2).sum(1))) for i in picked} == {0, 1, 2, 3}


def test_replay_records_are_their_own_tensorboard_scalars():
    from trainers.mace.runlog import scalars_of

    out = scalars_of({"epoch": 2, "step": 12, "split": "replay", "loss": 0.5, "energy_rmse_per_atom": 0.01,
                      "force_rmse": 0.2})
    assert out == {"replay/loss": 0.5, "replay/energy_rmse_per_atom": 0.01, "replay/force_rmse": 0.2}


def test_per_batch_count_follows_the_ratio():
    from launcher.core.replay_spec import replay_per_batch

    assert replay_per_batch(0.5, 8) == 4 and replay_per_batch(0.01, 8) == 1 and replay_per_batch(2.0, 3) == 6
