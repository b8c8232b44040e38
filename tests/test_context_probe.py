"""The linear probe of RISE's context stream (torchrl_rise.evaluation.context_probe)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_NET, mortar_mayhem_with_cue
from torchrl_rise.evaluation.context_probe import (
    _steps_since_reset,
    collect_context_samples,
    linear_probe,
    probe_context_stream,
)


def test_linear_probe_separates_what_is_linear_and_not_what_is_noise():
    groups = torch.arange(60).repeat_interleave(4)
    labels = groups % 3
    noise = torch.randn(240, 6, generator=torch.Generator().manual_seed(0))
    signal = noise + 8 * torch.nn.functional.one_hot(labels, 6).float()
    good = linear_probe(signal, labels, groups)
    assert good.accuracy == 1.0 and good.classes == 3
    assert good.n_train + good.n_test == 240 and good.n_train % 4 == 0  # whole episodes
    bad = linear_probe(noise, labels, groups)
    assert bad.accuracy < 0.6 and 0.2 < bad.chance < 0.5
    with pytest.raises(ValueError, match="two groups"):
        linear_probe(signal, labels, torch.zeros(240, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        linear_probe(signal[0], labels, groups)


def test_steps_since_reset():
    done = torch.tensor([[False, True, False, False, True, False]])
    step, episode = _steps_since_reset(done)
    assert step.tolist() == [[0, 1, 0, 1, 2, 0]]
    assert episode.tolist() == [[0, 0, 1, 1, 1, 2]]


@pytest.mark.memorygym
def test_collect_and_probe_a_rise_network_on_mortar_mayhem():
    pytest.importorskip("memory_gym")
    from torchrl_rise.encoders import make_encoder
    from torchrl_rise.modules import make_q_network
    from torchrl_rise.transforms import RiseContextTransform

    params = {
        "command_count": [1],
        "command_show_duration": [1],
        "command_show_delay": [2],
        "arena_size": 2,
        "allowed_commands": 4,
        "reward_command_success": 1.0,
    }
    env = mortar_mayhem_with_cue(4, 14, params)
    encoder = make_encoder("downsample", size=7, frame_channels=1)
    env.append_transform(RiseContextTransform(encoder, context_length=8))
    torch.manual_seed(0)
    net = make_q_network(
        "rise",
        num_actions=4,
        in_channels=4,
        frame_size=(14, 14),
        embedding_dim=encoder.embedding_dim,
        width_scale=0.25,
        mlp_hidden=16,
        lstm_hidden=8,
        num_cosines=8,
    )
    samples = collect_context_samples(net, env, steps=30)
    m = samples["cue"].shape[0]
    assert samples["hidden"].shape == (m, 8) and samples["gate"].shape[0] == m
    assert ((samples["gate"] > 0) & (samples["gate"] < 1)).all()
    assert samples["episode"].unique().numel() >= 8
    result = probe_context_stream(net, env, steps=30)
    assert 0.0 <= result["hidden"]["accuracy"] <= 1.0 and result["gate"]["n_test"] > 0
    btr = make_q_network("btr", num_actions=4, frame_size=(14, 14), num_cosines=8, **TINY_NET)
    with pytest.raises(TypeError, match="no context stream"):
        collect_context_samples(btr, env, steps=2)
    env.close()
