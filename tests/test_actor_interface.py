"""The acting policy's interface to the training loop: ``step(frames)`` and ``exploration_eps``."""

from __future__ import annotations

import pytest
from torchrl.data import Categorical

from torchrl_rise.modules import make_actor, make_q_network
from torchrl_rise.modules.recurrent_actor import make_recurrent_actor


def test_step_advances_the_schedule_the_loop_reads_back():
    net = make_q_network("btr", num_actions=3, in_channels=4, width_scale=0.25, mlp_hidden=8)
    actor = make_actor(
        net,
        action_spec=Categorical(3),
        eps_init=1.0,
        eps_end=0.0,
        eps_decay_frames=100,
        eps_schedule="linear",
        frame_skip=1,
    )
    assert actor.exploration_eps == 1.0 and isinstance(actor.exploration_eps, float)
    actor.step(50)
    assert actor.exploration_eps == pytest.approx(0.5)
    actor.step(100)
    assert actor.exploration_eps == 0.0


def test_the_recurrent_actor_has_the_same_interface():
    net = make_q_network(
        "recurrent_baseline",
        num_actions=3,
        in_channels=4,
        lstm_hidden=8,
        frame_size=(16, 16),
        width_scale=1,
        mlp_hidden=16,
    )
    actor = make_recurrent_actor(net, action_spec=Categorical(3), eps_init=0.5, eps_end=0.5)
    actor.step(8)
    assert actor.exploration_eps == 0.5
