"""The recurrent actor inside a TorchRL Collector over a batched env: the LSTM state it keeps per env,
its resets at episode start, and the stored state the sequence replay returns."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.modules.utils import get_env_transforms_from_module

from torchrl_rise.envs import make_env
from torchrl_rise.modules import RecurrentQStep, make_q_network, make_recurrent_actor
from torchrl_rise.replay import SequenceReplayBuffer

E, FRAME, HIDDEN = 4, 16, 8
SPEC = make_env("memory", "cue-L6").action_spec[0]  # the per-env spec


def _net(**kw):
    opts = dict(
        num_actions=2, in_channels=4, frame_size=(FRAME, FRAME), lstm_hidden=HIDDEN,
        width_scale=1, mlp_hidden=16, burn_in=2, spectral_norm=False,
    )  # fmt: skip
    # (spectral norm's power iteration moves the CNN weights a little at every training-mode
    # forward, so a reference run would not see the same weights as the collector did)
    opts.update(kw)
    return make_q_network("recurrent_baseline", **opts)


def _collect(actor, *, steps, batches, auto=False):
    env = make_env("memory", "cue-L6", num_envs=E, frame_size=FRAME, seed=0)
    if not auto:
        env = env.append_transform(get_env_transforms_from_module(actor))
    collector = Collector(
        env,
        actor,
        frames_per_batch=E * steps,
        total_frames=E * steps * batches,
        auto_register_policy_transforms=auto,
    )
    out = [batch.clone() for batch in collector]
    collector.shutdown()
    return out


@torch.no_grad()
def _reference_states(net, batches):
    """Step by step: zero at each episode's first step, then the network's next state."""
    h = torch.zeros(E, HIDDEN)
    c = torch.zeros(E, HIDDEN)
    want_h, want_c = [], []
    for batch in batches:
        for t in range(batch.shape[1]):
            init = batch["is_init"][:, t].reshape(E, 1)
            h, c = h.masked_fill(init, 0.0), c.masked_fill(init, 0.0)
            want_h.append(h)
            want_c.append(c)
            td = TensorDict(
                {
                    "pixels": batch["pixels"][:, t].unsqueeze(1),
                    "recurrent_state_h": h,
                    "recurrent_state_c": c,
                },
                [E],
            )
            net(td)
            h, c = td["next", "recurrent_state_h"], td["next", "recurrent_state_c"]
    return torch.stack(want_h, 1), torch.stack(want_c, 1)


@pytest.mark.parametrize("auto", [False, True])
def test_collected_states_equal_a_step_by_step_reference(auto):
    torch.manual_seed(0)
    net = _net()
    actor = make_recurrent_actor(net, action_spec=SPEC)
    batches = _collect(actor, steps=10, batches=2, auto=auto)
    data = torch.cat(batches, 1)
    assert data.batch_size == (E, 20)
    # episodes of 7 steps: each env restarts on its own (partial resets)
    assert data["is_init"][:, 0].all() and data["is_init"][:, 7].all()
    assert not data["is_init"][:, 1:7].any()
    want_h, want_c = _reference_states(net, batches)
    torch.testing.assert_close(data["recurrent_state_h"], want_h)
    torch.testing.assert_close(data["recurrent_state_c"], want_c)
    assert data["recurrent_state_h"][:, 1:7].abs().sum() > 0  # the state is carried
    assert not data["recurrent_state_h"][data["is_init"].squeeze(-1)].any()  # and reset


def test_partial_reset_resets_only_the_restarted_envs():
    net = _net()
    step = RecurrentQStep(net)
    h = torch.randn(3, HIDDEN)
    td = TensorDict(
        {
            "pixels": torch.zeros(3, 4, FRAME, FRAME, dtype=torch.uint8),
            "recurrent_state_h": h.clone(),
            "recurrent_state_c": h.clone(),
            "is_init": torch.tensor([[False], [True], [False]]),
        },
        [3],
    )
    step(td)
    torch.testing.assert_close(td["recurrent_state_h"][[0, 2]], h[[0, 2]])
    assert not td["recurrent_state_h"][1].any()
    with pytest.raises(TypeError, match="recurrent"):
        RecurrentQStep(make_q_network("btr", num_actions=2, in_channels=4, width_scale=1))
    with pytest.raises(ValueError, match="hidden size"):
        step(td.set("recurrent_state_h", torch.zeros(3, HIDDEN + 1)))


def test_replay_returns_the_state_the_actor_acted_from(tmp_path):
    torch.manual_seed(1)
    net = _net()
    actor = make_recurrent_actor(net, action_spec=SPEC)
    batches = _collect(actor, steps=12, batches=2)
    rb = SequenceReplayBuffer(
        E * 100, E, frame_shape=(1, FRAME, FRAME), frame_stack=4, burn_in=3,
        learning_length=4, period=2, n_step=2, state_dim=HIDDEN, state_dtype=torch.float32,
        scratch_dir=tmp_path / "rb", check_disk=False,
    )  # fmt: skip
    for batch in batches:
        rb.extend(batch)
    data = torch.cat(batches, 1)
    # lane step of each collected step: steps plus one final record per finished episode
    done = data["next", "done"].squeeze(-1).long()
    lane_step = torch.arange(data.shape[1]) + done.cumsum(1) - done
    index = rb.sampleable_index()
    sample = rb.gather(index)
    L = rb.lane_capacity
    checked = 0
    for i, slot in enumerate(index.tolist()):
        e, start = divmod(slot, L)  # no wrap: the slot is the lane step
        first = int(sample["sequence_mask"][i].long().argmax())
        t = int((lane_step[e] == start - rb.burn_in + first).nonzero())
        torch.testing.assert_close(sample["recurrent_state_h"][i], data["recurrent_state_h"][e, t])
        torch.testing.assert_close(sample["recurrent_state_c"][i], data["recurrent_state_c"][e, t])
        torch.testing.assert_close(sample["pixels"][i, first], data["pixels"][e, t])
        checked += int(data["recurrent_state_h"][e, t].abs().sum() > 0)
    assert checked > 0  # some sequences start mid-episode from a non-zero stored state
    rb.close()
