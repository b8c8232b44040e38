"""RiseContextStream / RiseContextModule: RISE's context stream around a user's CNN and head."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Categorical
from torchrl.modules import QValueActor
from torchrl.objectives import DQNLoss, SoftUpdate

from torchrl_rise.modules import (
    ContextLSTM,
    DuelingIQNHead,
    ImpalaCNN,
    RiseContextModule,
    RiseContextStream,
    StreamFusion,
    make_q_network,
)

SMALL = dict(width_scale=0.5, mlp_hidden=32, embedding_dim=16, lstm_hidden=8, num_cosines=16)


def _suffix_mask(batch: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    lengths = torch.randint(1, k + 1, (batch,), generator=generator)
    return torch.arange(k) >= (k - lengths).unsqueeze(-1)


def _rise_inputs(batch: int = 3, k: int = 5, d: int = 16):
    pixels = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
    mask = _suffix_mask(batch, k)
    context = torch.randn(batch, k, d) * mask.unsqueeze(-1)
    return pixels, context, mask


# --- make_q_network("rise") is built from RiseContextStream ---------------------------------
@pytest.mark.parametrize(
    "fusion, position", [("gate", "post_pool"), ("concat", "post_pool"), ("gate", "pre_pool")]
)
def test_rise_network_equals_the_blocks_it_was_built_from_before(fusion, position):
    """Same seed -> same parameters (count and values) and outputs as the network assembled from
    ImpalaCNN, ContextLSTM, StreamFusion and DuelingIQNHead in the order it always was."""
    kw = dict(num_actions=5, in_channels=4, fusion=fusion, gate_position=position, **SMALL)
    kw["fusion_init"] = "paper"  # the blocks' own defaults: PyTorch's init, a plain sigmoid
    torch.manual_seed(7)
    net = make_q_network("rise", **kw).eval()
    torch.manual_seed(7)
    cnn = ImpalaCNN(4, width_scale=0.5)
    shape = (cnn.out_features,) if position == "post_pool" else cnn.map_shape
    lstm = ContextLSTM(16, hidden=8, out_features=math.prod(shape))
    fuse = StreamFusion(fusion, shape)
    head = DuelingIQNHead(cnn.out_features * fuse.out_channels_factor, 5, hidden=32, num_cosines=16)
    reference = nn.ModuleList([cnn, lstm, head]).eval()

    assert isinstance(net.stream, RiseContextStream)
    assert net.stream.feature_extractor is net.cnn and net.stream.head is net.head
    assert net.stream.context is net.context and net.stream.fusion is net.fusion
    ours, theirs = list(net.parameters()), list(reference.parameters())
    assert sum(p.numel() for p in ours) == sum(p.numel() for p in theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))

    pixels, context, mask = _rise_inputs()
    td = TensorDict({"pixels": pixels, "rise_context": context, "rise_context_mask": mask}, [3])
    torch.manual_seed(1)
    net(td)
    fmap = cnn.feature_map(pixels)
    if position == "pre_pool":
        fused, gate = fuse(fmap, lstm(context, mask))
        fused = cnn.pool(fused)
    else:
        fused, gate = fuse(cnn.pool(fmap), lstm(context, mask))
    expected = head(fused, td["taus"])
    torch.testing.assert_close(td["quantiles"], expected)
    if fusion == "gate":
        torch.testing.assert_close(td["rise_gate"], gate.flatten(1))
    else:
        assert "rise_gate" not in td


def test_rise_network_state_dict_names_unchanged_and_btr_has_no_stream():
    net = make_q_network("rise", num_actions=3, in_channels=4, **SMALL)
    assert {n.split(".")[0] for n in net.state_dict()} == {"cnn", "context", "head"}
    clone = copy.deepcopy(net)
    assert clone.stream.feature_extractor is clone.cnn  # the copy's stream uses the copy's parts
    btr = make_q_network("btr", num_actions=3, in_channels=4, width_scale=0.5, mlp_hidden=32)
    assert btr.stream is None and btr.context is None and btr.fusion is None


# --- the plain module ------------------------------------------------------------------------
def _user_stream(*, fusion: str = "gate", return_gate: bool = False, actions: int = 3, **options):
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten())  # 12x12 -> 100
    features = 4 * 5 * 5 * (2 if fusion == "concat" else 1)
    return RiseContextStream(
        cnn,
        nn.Linear(features, actions),
        embedding_dim=8,
        feature_shape=100,
        lstm_hidden=16,
        fusion=fusion,
        return_gate=return_gate,
        **options,
    )


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
@pytest.mark.parametrize("fusion", ["gate", "concat", "add"])
def test_stream_accepts_any_leading_batch_dims(batch, fusion):
    stream = _user_stream(fusion=fusion)
    n = math.prod(batch)
    pixels = torch.rand(n, 1, 12, 12)
    context = torch.randn(n, 6, 8)
    mask = _suffix_mask(n, 6)
    flat = stream(pixels, context, mask)
    out = stream(
        pixels.reshape(*batch, 1, 12, 12), context.reshape(*batch, 6, 8), mask.reshape(*batch, 6)
    )
    assert out.shape == (*batch, 3)
    torch.testing.assert_close(out.reshape(n, 3), flat)
    assert stream.fused_shape == ((200,) if fusion == "concat" else (100,))


def test_stream_reads_the_context():
    """Changing only the window changes the output; padding entries do not.

    (From the identity start the context has no effect until the projection has learned, so the
    paper's start is used here.)
    """
    stream = _user_stream(fusion_init="paper").eval()
    pixels = torch.rand(2, 1, 12, 12)
    context = torch.randn(2, 6, 8)
    mask = torch.tensor([[False, False, True, True, True, True]] * 2)
    out = stream(pixels, context, mask)
    padded = context.clone()
    padded[:, :2] = 100.0  # invalid entries
    torch.testing.assert_close(stream(pixels, padded, mask), out)
    assert not torch.allclose(stream(pixels, context.flip(1), mask.flip(1).sort(-1)[0]), out)


def test_stream_returns_the_gate_and_reads_out_features():
    stream = RiseContextStream(
        ImpalaCNN(4, width_scale=0.5),
        nn.Linear(576, 2),
        embedding_dim=8,
        return_gate=True,
        fusion_init="paper",
    )
    assert stream.feature_shape == (576,)  # from ImpalaCNN.out_features
    pixels, context, mask = _rise_inputs(batch=2, d=8)
    out, gate = stream(pixels, context, mask)
    assert out.shape == (2, 2) and gate.shape == (2, 576)
    assert bool(((gate > 0) & (gate < 1)).all())
    # no gate from the other fusions, even if asked
    assert not RiseContextStream(nn.Flatten(), nn.Linear(8, 2), embedding_dim=4, feature_shape=4,
                                 fusion="add", return_gate=True).return_gate  # fmt: skip


def test_stream_head_gets_extra_inputs_flattened():
    class TwoInputHead(nn.Module):
        def forward(self, features, taus):
            return features.sum(-1, keepdim=True) * taus  # [B, N]

    stream = RiseContextStream(
        nn.Flatten(), TwoInputHead(), embedding_dim=4, feature_shape=9, fusion="add"
    )
    out = stream(torch.rand(2, 3, 1, 3, 3), torch.randn(2, 3, 5, 4), torch.ones(2, 3, 5).bool(),
                 torch.rand(2, 3, 7))  # fmt: skip
    assert out.shape == (2, 3, 7)


def test_stream_bad_input_says_what_to_fix():
    with pytest.raises(ValueError, match="embedding_dim"):
        RiseContextStream(nn.Flatten(), nn.Linear(4, 2), feature_shape=4)
    with pytest.raises(ValueError, match="feature_shape"):
        RiseContextStream(nn.Flatten(), nn.Linear(4, 2), embedding_dim=4)  # no out_features
    with pytest.raises(ValueError, match="fusion"):
        RiseContextStream(nn.Flatten(), nn.Linear(4, 2), embedding_dim=4, feature_shape=4,
                          fusion="mul")  # fmt: skip
    with pytest.raises(TypeError, match=r"nn\.Module"):
        RiseContextStream(lambda x: x, nn.Linear(4, 2), embedding_dim=4, feature_shape=4)
    stream = RiseContextStream(nn.Flatten(), nn.Linear(4, 2), embedding_dim=4, feature_shape=4)
    window, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="feature_shape"):
        stream(torch.rand(2, 1, 3, 3), window, mask)  # extractor gives 9 features, not 4
    with pytest.raises(ValueError, match="does not match"):
        stream(torch.rand(2, 1, 2, 2), window, mask[:, :2])
    with pytest.raises(ValueError, match="batch dims"):
        stream(torch.rand(3, 1, 2, 2), window, mask)
    with pytest.raises(ValueError, match="suffix"):
        stream(torch.rand(2, 1, 2, 2), window, torch.tensor([[True, False, True]] * 2))


def test_context_module_keys_and_errors():
    module = RiseContextModule(_user_stream(return_gate=True))
    assert module.in_keys == ["pixels", "rise_context", "rise_context_mask"]
    assert module.out_keys == ["action_value", "rise_gate"]
    td = TensorDict(
        {
            "pixels": torch.rand(4, 1, 12, 12),
            "rise_context": torch.randn(4, 6, 8),
            "rise_context_mask": torch.ones(4, 6, dtype=torch.bool),
        },
        [4],
    )
    module(td)
    assert td["action_value"].shape == (4, 3) and td["rise_gate"].shape == (4, 100)
    custom = RiseContextModule(
        _user_stream(), in_keys=["obs", "ctx", "ctx_mask"], out_keys=[("agent", "q")]
    )
    assert custom.out_keys == [("agent", "q")]
    with pytest.raises(ValueError, match="out_keys needs 1"):
        RiseContextModule(_user_stream(), out_keys=["action_value", "rise_gate"])
    with pytest.raises(ValueError, match="in_keys must name"):
        RiseContextModule(_user_stream(), in_keys=["pixels"])
    with pytest.raises(TypeError, match="RiseContextStream"):
        RiseContextModule(nn.Linear(2, 2))


# --- with TorchRL's own DQN loss ------------------------------------------------------------
def _context_task(batch: int, generator: torch.Generator) -> TensorDict:
    """One-step episodes whose reward only the context tells: +1 for action 1 when the newest
    embedding's first entry is positive, +1 for action 0 otherwise, -1 for the wrong action."""
    k, d = 4, 8
    pixels = 0.5 + 0.01 * torch.randn(batch, 1, 12, 12, generator=generator)
    mask = _suffix_mask(batch, k, generator)
    context = torch.randn(batch, k, d, generator=generator) * mask.unsqueeze(-1)
    action = torch.randint(0, 2, (batch,), generator=generator)
    right = (context[:, -1, 0] > 0).long()
    reward = torch.where(action == right, 1.0, -1.0).unsqueeze(-1)
    done = torch.ones(batch, 1, dtype=torch.bool)
    obs = {"pixels": pixels, "rise_context": context, "rise_context_mask": mask}
    return TensorDict(
        {
            **obs,
            "action": action,
            "next": {**obs, "reward": reward, "done": done, "terminated": done},
        },
        [batch],
    )


def _train_with_dqn_loss(steps: int = 150):
    """A user's CNN + linear head in RiseContextStream, trained by TorchRL's DQNLoss."""
    torch.manual_seed(0)
    stream = _user_stream(actions=2)
    actor = QValueActor(RiseContextModule(stream), spec=Categorical(2))
    loss_fn = DQNLoss(actor, action_space="categorical", delay_value=True)
    loss_fn.make_value_estimator(gamma=0.99)
    updater = SoftUpdate(loss_fn, eps=0.9)
    optim = torch.optim.Adam(loss_fn.parameters(), lr=3e-3)
    gates = []
    stream.fusion.register_forward_hook(lambda m, i, out: gates.append(out[1]))
    generator = torch.Generator().manual_seed(0)
    losses, first_grads = [], {}
    for step in range(steps):
        batch = _context_task(64, generator)
        gates.clear()
        loss = loss_fn(batch)["loss"]
        gates[0].retain_grad()
        optim.zero_grad()
        loss.backward()
        if step == 0:
            first_grads = {
                "proj": stream.context.proj.weight.grad.abs().sum(),
                "gate": gates[0].grad.abs().sum(),
            }
        if step == 1:  # from the identity start the projection is zero until the first step
            first_grads["lstm"] = sum(p.grad.abs().sum() for p in stream.context.lstm.parameters())
        optim.step()
        updater.step()
        losses.append(loss.item())
    test = _context_task(256, generator)
    actor(test)
    accuracy = (test["action"] == (test["rise_context"][:, -1, 0] > 0).long()).float().mean()
    return losses, first_grads, float(accuracy)


def test_torchrl_dqn_loss_trains_a_user_network_through_the_context():
    losses, grads, accuracy = _train_with_dqn_loss()
    assert all(g > 0 for g in grads.values()), f"no gradient reached the context stream: {grads}"
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.3 * first, f"DQNLoss did not learn the context task: {first:.3f} -> {last:.3f}"
    assert accuracy > 0.9, f"the greedy action does not follow the context: {accuracy:.2f}"


def test_dqn_task_needs_the_context_stream(monkeypatch):
    """Negative control: with the context stream's output zeroed the same training fails."""
    monkeypatch.setattr(
        ContextLSTM, "forward", lambda self, w, m: self.proj(self.recurrent_output(w, m)) * 0.0
    )
    losses, _, accuracy = _train_with_dqn_loss()
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last > 0.7 * first and accuracy < 0.7
