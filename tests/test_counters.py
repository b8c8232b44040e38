"""Unit tests of torchrl_rise.training.counters: counting batches and the update credit."""

from __future__ import annotations

import pytest

from torchrl_rise.training.config import ConfigError
from torchrl_rise.training.counters import (
    STATE_FORMAT,
    Counters,
    Schedule,
    next_multiple,
    state_counters,
)


def test_a_batch_counts_transitions_frames_and_iterations():
    c = Counters()
    c.count_batch(steps=8, frame_skip=4)
    c.count_batch(steps=8, frame_skip=4)
    assert (c.env_steps, c.frames, c.iterations, c.updates) == (16, 64, 2, 0)


def test_a_restart_counts_the_lost_batch_only_when_one_was_lost():
    c = Counters()
    c.count_restart(lost_batch=True)
    c.count_restart(lost_batch=False)
    assert (c.worker_restarts, c.lost_batches) == (2, 1)


def test_the_update_credit_keeps_the_fraction():
    s = Schedule()
    # BTR: 1 update per vector step of 4 envs at 0.25 updates per step: one update every 4 steps
    due = [s.updates_due(steps=4, num_envs=4, updates_per_vector_step=0.25) for _ in range(8)]
    assert due == [0, 0, 0, 1, 0, 0, 0, 1]
    assert s.update_credit == 0.0
    assert s.updates_due(steps=12, num_envs=4, updates_per_vector_step=1.5) == 4
    assert s.update_credit == pytest.approx(0.5)


def test_start_schedules_only_a_new_run():
    s = Schedule()
    s.start(eval_every=100, checkpoint_every=200, log_every=50)
    assert (s.next_eval, s.next_checkpoint, s.next_log) == (100, 200, 50)
    resumed = Schedule(next_eval=300, next_checkpoint=400, next_log=350)
    resumed.start(eval_every=100, checkpoint_every=200, log_every=50)
    assert (resumed.next_eval, resumed.next_checkpoint, resumed.next_log) == (300, 400, 350)


@pytest.mark.parametrize(
    ("frames", "interval", "expected"), [(0, 10, 10), (9, 10, 10), (10, 10, 20)]
)
def test_next_multiple_is_strictly_after(frames, interval, expected):
    assert next_multiple(frames, interval) == expected


def test_state_counters_reads_both_formats_and_refuses_newer_ones():
    c, s = state_counters(
        {"format": STATE_FORMAT, "counters": {"frames": 4}, "schedule": {"next_log": 8}}
    )
    assert (c.frames, s.next_log) == (4, 8)
    with pytest.raises(ConfigError, match="newer"):
        state_counters({"format": STATE_FORMAT + 1})
    with pytest.raises(ConfigError, match="does not know"):
        state_counters({"format": STATE_FORMAT, "counters": {"bogus": 1}})
