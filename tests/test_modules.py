"""Tests of the learnable modules: IMPALA CNN, noisy layers, context stream, network family, actor."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Categorical
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_rise.modules import (
    ContextLSTM,
    ImpalaCNN,
    NoisyLinear,
    StreamFusion,
    gate_statistics,
    left_align_window,
    make_actor,
    make_eval_actor,
    make_q_network,
    resample_noise,
    reset_noise,
)
from torchrl_rise.objectives import IQNLoss

FRAME = (36, 36)
pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

SMALL = dict(frame_size=FRAME, width_scale=0.5, mlp_hidden=32, embedding_dim=16, lstm_hidden=16)


def _rise_td(batch: tuple[int, ...], *, k: int = 5, d: int = 16, actions: int = 4) -> TensorDict:
    def obs() -> dict:
        mask = torch.ones(*batch, k, dtype=torch.bool)
        if batch and k > 2:
            mask[..., : k - 2] = False  # first window has 2 valid entries
        ctx = torch.randn(*batch, k, d).half() * mask.unsqueeze(-1)
        return {
            "pixels": torch.randint(0, 256, (*batch, 4, *FRAME), dtype=torch.uint8),
            "rise_context": ctx,
            "rise_context_mask": mask,
        }

    return TensorDict(
        {
            **obs(),
            "action": torch.randint(0, actions, batch),
            "next": {
                **obs(),
                "reward": torch.randn(*batch, 1),
                "discount": torch.full((*batch, 1), 0.99),
            },
        },
        batch,
    )


# --- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("kind", ["rise", "btr"])
def test_output_shapes_any_batch_dims(kind, batch):
    net = make_q_network(kind, num_actions=4, in_channels=4, num_taus=5, **SMALL)
    td = _rise_td(batch)
    net(td)
    assert td["quantiles"].shape == (*batch, 5, 4)
    assert td["taus"].shape == (*batch, 5)
    assert td["action_value"].shape == (*batch, 4)
    torch.testing.assert_close(td["action_value"], td["quantiles"].mean(-2))
    assert ((td["taus"] >= 0) & (td["taus"] < 1)).all()
    if kind == "rise":
        assert td["rise_gate"].shape == (*batch, net.cnn.out_features)
        assert set(net.in_keys) == {"pixels", "rise_context", "rise_context_mask"}
    else:
        assert "rise_gate" not in td
        assert net.in_keys == ["pixels"]


def test_num_taus_settable():
    net = make_q_network("btr", num_actions=3, in_channels=4, **SMALL)
    net.num_taus = 2
    td = net(_rise_td((2,)))
    assert td["quantiles"].shape == (2, 2, 3)
    with net.taus_override(7):
        assert net(_rise_td((2,)))["taus"].shape == (2, 7)
    assert net.num_taus == 2
    with pytest.raises(ValueError, match="num_taus"):
        net.num_taus = 0


def test_impala_shapes_and_pre_pool_map():
    cnn = ImpalaCNN(4, frame_size=(84, 84), width_scale=2)
    assert cnn.map_shape == (64, 11, 11)
    assert cnn.out_features == 2304
    # spectral norm on the residual convs only
    parametrized = [n for n, m in cnn.named_modules() if hasattr(m, "parametrizations")]
    assert len(parametrized) == 12 and all(".res_" in n for n in parametrized)
    ln = ImpalaCNN(4, frame_size=(84, 84), layer_norm=True)
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 3
    with pytest.raises(ValueError, match="in_channels"):
        cnn(torch.zeros(1, 3, 84, 84, dtype=torch.uint8))


def test_recurrent_baseline_shapes_and_burn_in():
    net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, burn_in=3, **SMALL)
    px = torch.randint(0, 256, (2, 7, 4, *FRAME), dtype=torch.uint8)
    td = net(TensorDict({"pixels": px}, [2]))
    assert td["quantiles"].shape == (2, 4, 8, 3)
    assert td["action_value"].shape == (2, 4, 3)
    assert td["next", "recurrent_state_h"].shape == (2, 16)
    # burn-in runs without gradient: only the 4 trained steps backpropagate into the CNN
    seen = []
    net.cnn.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    net(TensorDict({"pixels": px}, [2]))
    assert seen == [False, True]
    # acting: T = 1 <= burn_in, nothing burnt in; the state is carried through the keys
    step = TensorDict({"pixels": px[:, :1]}, [2])
    net(step)
    assert step["quantiles"].shape == (2, 1, 8, 3)
    step2 = TensorDict(
        {
            "pixels": px[:, 1:2],
            "recurrent_state_h": step["next", "recurrent_state_h"],
            "recurrent_state_c": step["next", "recurrent_state_c"],
        },
        [2],
    )
    torch.manual_seed(0)
    with_state = net(step2)["action_value"].clone()
    torch.manual_seed(0)
    without = net(TensorDict({"pixels": px[:, 1:2]}, [2]))["action_value"]
    assert not torch.allclose(with_state, without)


def test_btr_parameter_count_atari():
    """BTR counts each noisy layer's mean weights once (not sigma): about 2.9M on Atari."""
    net = make_q_network("btr", num_actions=18, in_channels=4)
    count = sum(p.numel() for n, p in net.named_parameters() if "sigma" not in n)

    def conv(cin, cout):
        return cin * cout * 9 + cout

    cnn = conv(4, 32) + 4 * conv(32, 32) + conv(32, 64) + 4 * conv(64, 64) + conv(64, 64)
    cnn += 4 * conv(64, 64)
    head = (64 * 2304 + 2304) + 2 * (2304 * 512 + 512) + (512 + 1) + (512 * 18 + 18)
    assert count == cnn + head == 2_908_851
    minimal = make_q_network("btr", num_actions=6, in_channels=4)
    count6 = sum(p.numel() for n, p in minimal.named_parameters() if "sigma" not in n)
    assert count6 == 2_908_851 - 12 * 513
    assert 2.85e6 < count6 < count < 2.95e6


# --- noisy layers ----------------------------------------------------------------------------
def test_noisy_layer_init_and_modes():
    layer = NoisyLinear(16, 4, sigma0=0.5)
    torch.testing.assert_close(layer.weight_sigma, torch.full((4, 16), 0.125))
    torch.testing.assert_close(layer.bias_sigma, torch.full((4,), 0.125))
    x = torch.randn(3, 16)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.testing.assert_close(layer(x), x @ layer.weight_mu.T + layer.bias_mu)
    with set_exploration_type(ExplorationType.RANDOM):
        noisy = layer(x)
        assert not torch.allclose(noisy, x @ layer.weight_mu.T + layer.bias_mu)
        torch.testing.assert_close(layer(x), noisy)  # noise changes only on reset
        assert resample_noise(nn.Sequential(layer, nn.ReLU(), NoisyLinear(4, 1))) == 2
        assert not torch.allclose(layer(x), noisy)


def test_reset_noise_is_a_deprecated_alias_of_resample_noise():
    net = nn.Sequential(NoisyLinear(3, 3), nn.ReLU(), NoisyLinear(3, 1))
    before = net[0].weight_epsilon.clone()
    with pytest.warns(DeprecationWarning, match="resample_noise"):
        assert reset_noise(net) == 2
    assert not torch.equal(net[0].weight_epsilon, before)


def test_network_noise_on_when_exploring_off_in_evaluation():
    net = make_q_network("btr", num_actions=3, in_channels=4, **SMALL)
    net.eval()  # freeze spectral norm's power iteration: noise is the only thing that may change
    td = _rise_td((2,))

    def run() -> torch.Tensor:
        torch.manual_seed(1)  # same taus for each call
        return net(td.clone())["quantiles"]

    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = run()
        resample_noise(net)
        torch.testing.assert_close(run(), a)
    with set_exploration_type(ExplorationType.RANDOM):
        b = run()
        torch.manual_seed(123)  # run() reseeds: draw the new noise from another stream
        resample_noise(net)
        assert not torch.allclose(run(), b)


# --- context stream --------------------------------------------------------------------------
def test_context_lstm_reads_only_the_valid_suffix():
    torch.manual_seed(0)
    ctx = ContextLSTM(6, hidden=8, out_features=5)
    window = torch.randn(3, 7, 6)
    lengths = [7, 3, 1]
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 7 - n :] = True
    garbage = window.clone()
    garbage[~mask] = 123.0  # padding values must not matter
    out = ctx.recurrent_output(garbage, mask)
    for i, n in enumerate(lengths):
        _, (h, _) = ctx.lstm(window[i : i + 1, 7 - n :])  # zero state, valid entries only
        torch.testing.assert_close(out[i], h[0, 0])
    empty = ctx.recurrent_output(window[:1], torch.zeros(1, 7, dtype=torch.bool))
    assert torch.equal(empty, torch.zeros_like(empty))


def test_left_align_rejects_non_suffix_masks():
    with pytest.raises(ValueError, match="suffix"):
        left_align_window(torch.zeros(1, 3, 2), torch.tensor([[True, False, True]]))
    rolled, lengths = left_align_window(
        torch.arange(4.0).view(1, 4, 1), torch.tensor([[False, False, True, True]])
    )
    assert rolled.flatten().tolist()[:2] == [2.0, 3.0] and lengths.tolist() == [2]


@pytest.mark.parametrize("mode", ["gate", "concat", "add"])
def test_stream_fusion(mode):
    f = torch.randn(2, 3, 4, 4)
    c = torch.randn(2, 48)
    fused, gate = StreamFusion(mode, (3, 4, 4))(f, c)
    c = c.view(2, 3, 4, 4)
    expected = {"gate": f * torch.sigmoid(c), "concat": torch.cat([f, c], 1), "add": f + c}[mode]
    torch.testing.assert_close(fused, expected)
    assert (gate is not None) == (mode == "gate")
    with pytest.raises(ValueError, match="fusion"):
        StreamFusion("mul", (3,))


@pytest.mark.parametrize("mode", ["gate", "concat", "add"])
def test_a_muted_fusion_passes_the_features_through(mode):
    f = torch.randn(2, 3, 4, 4)
    fused, gate = StreamFusion(mode, (3, 4, 4), mute_context=True)(f, None)
    expected = {"gate": f, "concat": torch.cat([f, torch.zeros_like(f)], 1), "add": f}[mode]
    torch.testing.assert_close(fused, expected)
    if mode == "gate":
        assert torch.equal(gate, torch.ones_like(f))
    with pytest.raises(ValueError, match="mute_context"):
        StreamFusion(mode, (3, 4, 4))(f, None)


@pytest.mark.parametrize("fusion", ["gate", "concat", "add"])
def test_mute_context_is_the_rise_network_without_its_context(fusion):
    """The muted network's output is its CNN and head alone: the window changes nothing, and no
    gradient reaches the context stream."""
    net = make_q_network(
        "rise", num_actions=4, in_channels=4, fusion=fusion, mute_context=True, **SMALL
    )
    twin = copy.deepcopy(net)  # a forward in train mode steps spectral norm's power iteration
    td = _rise_td((3,))
    torch.manual_seed(1)
    out = net(td.clone())["quantiles"]
    other = td.clone()
    other["rise_context"] = torch.randn_like(other["rise_context"].float()).half()
    torch.manual_seed(1)
    torch.testing.assert_close(twin(other)["quantiles"], out)
    out.sum().backward()
    assert all(p.grad is None for p in net.context.parameters())
    assert any(p.grad is not None for p in net.cnn.parameters())
    assert any(p.grad is not None for p in net.head.parameters())


def test_gate_bias_init_sets_where_the_gate_starts():
    torch.manual_seed(0)
    plain = make_q_network("rise", num_actions=4, in_channels=4, **SMALL)
    torch.manual_seed(0)
    opened = make_q_network("rise", num_actions=4, in_channels=4, gate_bias_init=3.0, **SMALL)
    # only the projection's bias differs: every weight is drawn as without the option
    differ = [
        name
        for (name, a), (_, b) in zip(plain.state_dict().items(), opened.state_dict().items())
        if not torch.equal(a, b)
    ]
    assert differ == ["context.proj.bias"]
    assert torch.equal(opened.context.proj.bias, torch.full_like(opened.context.proj.bias, 3.0))
    gate = opened(_rise_td((8,)))["rise_gate"]
    assert gate.min() > 0.8 and abs(gate.mean().item() - torch.sigmoid(torch.tensor(3.0))) < 0.05
    # options of the context stream are ignored by btr (like lstm_hidden), refused where invalid
    make_q_network("btr", num_actions=4, in_channels=4, gate_bias_init=3.0, **SMALL)
    with pytest.raises(ValueError, match="has no gate"):
        make_q_network(
            "rise", num_actions=4, in_channels=4, fusion="add", gate_bias_init=1.0, **SMALL
        )
    with pytest.raises(ValueError, match="finite"):
        make_q_network("rise", num_actions=4, in_channels=4, gate_bias_init=float("nan"), **SMALL)


def test_context_proj_zero_init_starts_the_gate_constant_but_trainable():
    paper = dict(fusion_init="paper", **SMALL)
    torch.manual_seed(0)
    plain = make_q_network("rise", num_actions=4, in_channels=4, **paper)
    torch.manual_seed(0)
    zeroed = make_q_network(
        "rise", num_actions=4, in_channels=4, context_proj_zero_init=True, **paper
    )
    differ = [
        name
        for (name, a), (_, b) in zip(plain.state_dict().items(), zeroed.state_dict().items())
        if not torch.equal(a, b)
    ]
    assert differ == ["context.proj.weight"]
    assert not zeroed.context.proj.weight.any()
    td = _rise_td((8,))
    gate = zeroed(td)["rise_gate"]
    # the same gate for every sample: sigmoid(bias), whatever the window holds
    torch.testing.assert_close(gate, torch.sigmoid(zeroed.context.proj.bias).expand_as(gate))
    zeroed(_rise_td((8,)))["quantiles"].sum().backward()
    assert zeroed.context.proj.weight.grad.abs().sum() > 0


def test_gate_scale_two_with_a_zero_projection_starts_as_btr_and_stays_trainable():
    kwargs = dict(gate_scale=2.0, gate_bias_init=0.0, context_proj_zero_init=True, **SMALL)
    torch.manual_seed(0)
    rise = make_q_network("rise", num_actions=4, in_channels=4, **kwargs)
    torch.manual_seed(0)
    muted = make_q_network("rise", num_actions=4, in_channels=4, mute_context=True, **SMALL)
    muted.load_state_dict(rise.state_dict())
    td = _rise_td((8,))
    rise.num_taus = muted.num_taus = 4
    torch.manual_seed(1)
    out = rise(td.clone())
    torch.manual_seed(1)
    ref = muted(td.clone())
    # the gate starts at exactly 1: the same quantiles as the network with the context off
    torch.testing.assert_close(out["quantiles"], ref["quantiles"])
    # the emitted gate is the sigmoid before the scale, so saturation reads as for scale 1
    torch.testing.assert_close(out["rise_gate"], torch.full_like(out["rise_gate"], 0.5))
    out["quantiles"].sum().backward()
    assert rise.context.proj.weight.grad.abs().sum() > 0


def test_the_fusion_starts_as_identity_by_default_and_the_paper_start_is_a_named_option():
    net = make_q_network("rise", num_actions=4, in_channels=4, **SMALL)
    assert net.fusion.gate_scale == 2.0
    assert not net.context.proj.weight.any() and not net.context.proj.bias.any()
    paper = make_q_network("rise", num_actions=4, in_channels=4, fusion_init="paper", **SMALL)
    assert paper.fusion.gate_scale == 1.0 and paper.context.proj.weight.any()
    # add / concat: the identity start is a zero context term
    added = make_q_network("rise", num_actions=4, in_channels=4, fusion="add", **SMALL)
    assert added.fusion.gate_scale == 1.0 and not added.context.proj.weight.any()
    with pytest.raises(ValueError, match="fusion_init must be one of"):
        make_q_network("rise", num_actions=4, in_channels=4, fusion_init="zero", **SMALL)


def test_gate_scale_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="gate_scale must be a positive finite number"):
        make_q_network("rise", num_actions=4, in_channels=4, gate_scale=0.0, **SMALL)
    with pytest.raises(ValueError, match="fusion='concat' has no gate"):
        make_q_network(
            "rise", num_actions=4, in_channels=4, gate_scale=2.0, fusion="concat", **SMALL
        )


def test_context_changes_the_output_and_mismatches_are_rejected():
    net = make_q_network("rise", num_actions=3, in_channels=4, context_length=5, **SMALL)
    td = _rise_td((2,))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        torch.manual_seed(0)
        a = net(td.clone())["quantiles"]
        other = td.clone()
        other["rise_context"] = -other["rise_context"]
        torch.manual_seed(0)
        assert not torch.allclose(net(other)["quantiles"], a)
    with pytest.raises(ValueError, match="context_length"):
        net(_rise_td((2,), k=6))
    with pytest.raises(KeyError, match="rise_context"):
        net(td.exclude("rise_context"))
    wrong_d = _rise_td((2,), d=8)
    with pytest.raises(ValueError, match="embedding_dim"):
        net(wrong_d)
    with pytest.raises(ValueError, match="kind"):
        make_q_network("r2d2", num_actions=3, in_channels=4)
    with pytest.raises(ValueError, match="gate_position"):
        make_q_network("rise", num_actions=3, in_channels=4, gate_position="middle")


# --- training --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fusion", "position"),
    [("gate", "post_pool"), ("gate", "pre_pool"), ("concat", "post_pool"), ("add", "post_pool")],
)
def test_fusion_modes_train_without_nan(fusion, position):
    net = make_q_network(
        "rise", num_actions=4, in_channels=4, fusion=fusion, gate_position=position, **SMALL
    )
    loss = IQNLoss(net)
    opt = torch.optim.Adam(loss.value_network_params.values(True, True), lr=1e-3)
    td = _rise_td((8,))
    before = [p.detach().clone() for p in loss.value_network_params.values(True, True)]
    for _ in range(3):
        out = loss(td)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert torch.isfinite(out["loss"])
    after = list(loss.value_network_params.values(True, True))
    lstm_moved = [
        not torch.equal(b, a.detach())
        for (name, a), b in zip(loss.value_network_params.items(True, True), before)
        if "context" in str(name)
    ]
    assert lstm_moved and all(lstm_moved)
    assert all(torch.isfinite(p).all() for p in after)
    if fusion == "gate":
        assert 0.0 <= out["gate_saturated_frac"].item() <= 1.0


def test_frozen_encoder_gets_no_gradient():
    """Embeddings come from replay: the encoder is not in the network and sees no gradient."""
    torchvision = pytest.importorskip("torchvision")
    encoder = torchvision.models.resnet18(weights=None, num_classes=16).eval().requires_grad_(False)
    net = make_q_network("rise", num_actions=4, in_channels=4, **SMALL)
    td = _rise_td((4,))
    for prefix in ((), ("next",)):
        frames = td[(*prefix, "pixels")][:, -1:].float().div(255).expand(-1, 3, -1, -1)
        with torch.no_grad():
            emb = encoder(frames.repeat_interleave(5, 0)).view(4, 5, 16).half()
        assert emb.grad_fn is None
        td[(*prefix, "rise_context")] = emb
        td[(*prefix, "rise_context_mask")] = torch.ones(4, 5, dtype=torch.bool)
    loss = IQNLoss(net)
    loss(td)["loss"].backward()
    assert all(p.grad is None for p in encoder.parameters())
    encoder_ptrs = {p.data_ptr() for p in encoder.parameters()}
    assert not encoder_ptrs & {p.data_ptr() for p in loss.value_network_params.values(True, True)}
    assert {n.split(".")[0] for n, _ in net.named_parameters()} == {"cnn", "context", "head"}


# --- gate statistics -------------------------------------------------------------------------
def test_gate_statistics_hand_values():
    gate = torch.tensor([0.0, 0.04, 0.5, 0.96, 1.0, 0.5, 0.5, 0.5])
    stats = gate_statistics(TensorDict({"rise_gate": gate.view(2, 4)}, [2]))
    assert stats["gate_mean"] == pytest.approx(gate.mean().item())
    assert stats["gate_std"] == pytest.approx(gate.std().item())
    assert stats["gate_saturated_frac"] == pytest.approx(4 / 8)
    assert stats["gate_low_frac"] == pytest.approx(2 / 8)
    with pytest.raises(KeyError, match="rise_gate"):
        gate_statistics(TensorDict({}, []))


# --- actor -----------------------------------------------------------------------------------
def test_actor_schedule_and_actions():
    net = make_q_network("rise", num_actions=4, in_channels=4, **SMALL)
    actor = make_actor(
        net,
        action_spec=Categorical(4),
        eps_schedule="linear",
        eps_decay_frames=100,
        eps_off_after_frames=1000,
    )
    explore = actor.module[-1]
    assert explore.eps.item() == 1.0
    actor.step(50)
    assert explore.eps.item() == pytest.approx(1.0 - 0.99 * 0.5)
    actor.step(150)
    assert explore.eps.item() == pytest.approx(0.01)
    actor.step(800)
    assert explore.eps.item() == 0.0
    # eps = 0, deterministic: greedy on the mean over taus, same context as learning
    single = _rise_td(())
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = actor(single.exclude("action", "next"))
    assert out["action"].dtype == torch.int64 and out["action"].shape == ()
    assert out["action"] == out["action_value"].argmax()
    batch = _rise_td((6,)).exclude("action", "next")
    fresh = make_actor(net, action_spec=Categorical(4))  # eps = 1: uniform random actions
    with set_exploration_type(ExplorationType.RANDOM):
        acts = fresh(batch)["action"]
    assert acts.shape == (6,) and ((acts >= 0) & (acts < 4)).all()
    with pytest.raises(TypeError, match="Categorical"):
        make_actor(net, action_spec=torch.zeros(3))
    with pytest.raises(ValueError, match="eps_end"):
        make_actor(net, action_spec=Categorical(4), eps_end=0.5, eps_init=0.1)


def test_eval_actor_noise_off_eps_on():
    net = make_q_network("btr", num_actions=4, in_channels=4, **SMALL)
    batch = _rise_td((200,)).exclude("action", "next")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        greedy = make_eval_actor(net, action_spec=Categorical(4), eps=0.0)(batch.clone())
        assert torch.equal(greedy["action"], greedy["action_value"].argmax(-1))
        noisy = make_eval_actor(net, action_spec=Categorical(4), eps=0.5)(batch.clone())
    differs = (noisy["action"] != noisy["action_value"].argmax(-1)).float().mean().item()
    assert 0.2 < differs < 0.55  # eps 0.5 over 4 actions: 3/8 expected
    with pytest.raises(ValueError, match="eps"):
        make_eval_actor(net, action_spec=Categorical(4), eps=2.0)
