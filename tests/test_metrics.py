"""Unit tests of torchrl_rise.training.metrics: recent episodes, train.csv rows, speed, clock."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict

from torchrl_rise.training.counters import Counters
from torchrl_rise.training.metrics import (
    RecentEpisodes,
    Throughput,
    WallClock,
    train_row,
)

INFO = SimpleNamespace(score_key="score", length_key="length", success_key="success")


def _batch(done, score, length, success=None):
    nxt = {
        "done": torch.tensor(done).reshape(2, 2, 1),
        "score": torch.tensor(score).reshape(2, 2, 1),
        "length": torch.tensor(length).reshape(2, 2, 1),
    }
    if success is not None:
        nxt["success"] = torch.tensor(success).reshape(2, 2, 1)
    return TensorDict({"next": TensorDict(nxt, [2, 2, 1])}, [2, 2, 1])


def test_tracks_only_the_episodes_that_end():
    recent = RecentEpisodes()
    batch = _batch(
        [True, False, False, True],
        [1.0, 9.0, 9.0, 3.0],
        [10, 99, 99, 30],
        [True, False, False, False],
    )
    assert recent.track(batch, INFO) == 2
    assert list(recent.scores) == [1.0, 3.0]
    assert list(recent.lengths) == [10.0, 30.0]
    assert list(recent.success) == [1.0, 0.0]
    assert recent.mean_score() == 2.0
    assert recent.track(_batch([False] * 4, [0.0] * 4, [0] * 4), INFO) == 0


def test_keeps_the_last_maxlen_episodes_and_round_trips_its_state():
    recent = RecentEpisodes(maxlen=3)
    for i in range(2):
        recent.track(_batch([True] * 4, [float(i)] * 4, [i] * 4), INFO)
    assert len(recent.scores) == 3 and recent.success == type(recent.success)()
    copy = RecentEpisodes(maxlen=3)
    copy.load_state_dict(recent.state_dict())
    assert copy.state_dict() == recent.state_dict()
    assert math.isnan(RecentEpisodes().mean_score())


def test_train_row_holds_the_counters_stats_and_gate_diagnostics():
    recent = RecentEpisodes()
    recent.track(_batch([True, False, False, False], [2.0] * 4, [5] * 4), INFO)
    stats = {"loss": 1.5, "q_mean": 0.25, "gate_mean": 0.9, "other": 3.0}
    c = Counters(frames=64, updates=3, episodes=1)
    row = train_row(c, recent, stats, walltime_s=2.0, fps=32.0, eps=0.5, replay_size=16)
    assert row["frames"] == 64 and row["updates"] == 3 and row["episodes"] == 1
    assert (row["return_recent"], row["episode_length_recent"]) == (2.0, 5.0)
    assert (row["loss"], row["q_mean"], row["gate_mean"]) == (1.5, 0.25, 0.9)
    assert math.isnan(row["td_error"]) and "other" not in row
    assert row["success_recent"] is None  # no episode reported success
    assert (row["eps"], row["replay_size"], row["fps"]) == (0.5, 16, 32.0)


def test_throughput_leaves_out_paused_time():
    meter = Throughput(frames=0)
    meter.restart(frames=100, now=10.0)
    assert meter.fps(frames=300, now=12.0) == 100.0
    with meter.paused():
        time.sleep(0.05)
    assert meter.since >= 10.05
    assert meter.fps(frames=300, now=meter.since) == pytest.approx(200 / 1e-9)


def test_the_wall_clock_adds_earlier_sessions():
    clock = WallClock()
    assert not clock.started
    clock.start(base_s=100.0)
    assert clock.started and 100.0 <= clock.walltime() < 110.0
