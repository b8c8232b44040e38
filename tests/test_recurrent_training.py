"""A standalone training check of the recurrent baseline (not through the trainer): collect from
the memory suite's cue-L4 with a TorchRL Collector and the recurrent actor, store in the sequence
replay, train with SequenceIQNLoss. The cue is shown at step 0 and asked for at step 4, outside a
4-frame stack: only the LSTM state can carry it."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.utils import get_env_transforms_from_module

from tests.helpers import replay_update
from torchrl_rise.envs import make_env
from torchrl_rise.modules import make_q_network, make_recurrent_actor
from torchrl_rise.objectives import HardTargetUpdate, SequenceIQNLoss
from torchrl_rise.replay import SequenceReplayBuffer

E, FRAME, HIDDEN = 16, 16, 32


def train(tmp_path, *, frames: int, seed: int = 0, eval_episodes: int = 64) -> dict:
    torch.manual_seed(seed)
    env = make_env("memory", "cue-L4", num_envs=E, frame_size=FRAME, seed=seed)
    spec = env.action_spec[0]
    net = make_q_network(
        "recurrent_baseline", num_actions=2, in_channels=4, frame_size=(FRAME, FRAME),
        burn_in=2, lstm_hidden=HIDDEN, width_scale=0.25, mlp_hidden=64, num_cosines=32,
        pool_size=2,
    )  # fmt: skip
    actor = make_recurrent_actor(
        net, action_spec=spec, eps_decay_frames=frames // 4, frame_skip=1, eps_end=0.01
    )
    env = env.append_transform(get_env_transforms_from_module(actor))
    steps = 5  # one episode per env per batch
    collector = Collector(env, actor, frames_per_batch=E * steps, total_frames=frames)
    rb = SequenceReplayBuffer(
        E * 400, E, frame_shape=(1, FRAME, FRAME), frame_stack=4, burn_in=2, learning_length=5,
        period=5, n_step=3, state_dim=HIDDEN, batch_size=32, scratch_dir=tmp_path / "rb",
        seed=seed, check_disk=False,
    )  # fmt: skip
    loss = SequenceIQNLoss(net)
    target = HardTargetUpdate(loss, interval=50)
    opt = torch.optim.Adam(loss.value_network_params.values(True, True), lr=1e-3)
    losses, start = [], time.perf_counter()
    for batch in collector:
        rb.extend(batch)
        actor.step(batch.numel())
        if len(rb) < 64:
            continue
        for _ in range(2):
            _, out = replay_update(loss, opt, rb)
            target.step()
            losses.append(out["loss"].item())
    collector.shutdown()
    rb.close()
    # greedy evaluation (noise off, eps 0) on fresh episodes
    eval_env = make_env("memory", "cue-L4", num_envs=eval_episodes, frame_size=FRAME, seed=999)
    eval_env = eval_env.append_transform(get_env_transforms_from_module(actor))
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        rollout = eval_env.rollout(5, actor, break_when_any_done=False)
    success = rollout["next", "success"][:, -1].float().mean().item()
    return {"losses": losses, "success": success, "seconds": time.perf_counter() - start}


def _mean(xs):
    return sum(xs) / len(xs)


def test_training_smoke(tmp_path):
    """A few updates: the loop runs, the loss is finite, priorities flow back."""
    out = train(tmp_path, frames=E * 5 * 8, eval_episodes=8)
    assert out["losses"] and all(math.isfinite(x) for x in out["losses"])
    assert 0.0 <= out["success"] <= 1.0


@pytest.mark.slow
def test_training_learns_the_cue(tmp_path):
    """About a minute on one CPU core: success well above chance (0.5), loss decreasing."""
    out = train(tmp_path, frames=E * 5 * 300)
    losses = out["losses"]
    summary = f"success {out['success']:.2f} in {out['seconds']:.0f} s, {len(losses)} updates"
    logging.getLogger(__name__).info(summary)
    assert _mean(losses[-50:]) < _mean(losses[:50]), summary
    assert out["success"] >= 0.8, summary
