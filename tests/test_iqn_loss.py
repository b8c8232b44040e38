"""Tests of IQNLoss: quantile Huber and Munchausen targets against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer
from torchrl.objectives import HardUpdate

from torchrl_rise.modules import make_q_network
from torchrl_rise.modules.networks import IQNNetworkBase
from torchrl_rise.objectives import IQNLoss, iqn_target, quantile_huber_loss
from torchrl_rise.replay import _torchrl_adapter

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

NUM_STATES, NUM_ACTIONS = 5, 3


class TableIQN(IQNNetworkBase):
    """Deterministic IQN network: Z(s, tau, a) = W[s, a] + (tau - 0.5) V[s, a], tau_j = (j+.5)/N.

    The state id is ``pixels[..., 0, 0, 0]``.
    """

    def __init__(self, *, num_taus: int = 2) -> None:
        super().__init__(num_taus=num_taus)
        gen = torch.Generator().manual_seed(3)
        self.W = nn.Parameter(2 * torch.randn(NUM_STATES, NUM_ACTIONS, generator=gen))
        self.V = nn.Parameter(torch.rand(NUM_STATES, NUM_ACTIONS, generator=gen))
        self.quantiles_key, self.taus_key, self.action_value_key = (
            "quantiles",
            "taus",
            "action_value",
        )
        self.in_keys = ["pixels"]
        self.out_keys = ["quantiles", "taus", "action_value"]

    def forward(self, td):
        state = td["pixels"][..., 0, 0, 0].long()
        taus = (torch.arange(self.num_taus) + 0.5) / self.num_taus
        taus = taus.expand(*state.shape, -1)
        z = self.W[state].unsqueeze(-2) + (taus.unsqueeze(-1) - 0.5) * self.V[state].unsqueeze(-2)
        self._write(td, state.shape, z, taus)
        return td


def _pixels(states):
    px = torch.zeros(len(states), 1, 2, 2, dtype=torch.uint8)
    px[:, 0, 0, 0] = torch.tensor(states, dtype=torch.uint8)
    return px


def _batch(*, with_discount=True, with_weight=True):
    data = {
        "pixels": _pixels([0, 1, 2, 4]),
        "action": torch.tensor([0, 2, 1, 1]),
        "steps_to_next_obs": torch.tensor([[3], [3], [2], [1]]),
        "next": {
            "pixels": _pixels([3, 2, 4, 0]),
            "reward": torch.tensor([[1.0], [-0.5], [0.0], [2.0]]),
            "terminated": torch.tensor([[False], [False], [True], [False]]),
        },
    }
    if with_discount:
        data["next"]["discount"] = torch.tensor([[0.99**3], [0.99**3], [0.0], [0.99]])
    if with_weight:
        data["priority_weight"] = torch.tensor([1.0, 0.5, 2.0, 0.25])
    return TensorDict(data, [4])


def _reference(loss, td, *, munchausen, log_policy, kappa, num_target_taus):
    """Loop-by-loop reference of the loss and the per-sample priorities."""
    w_on, v_on = loss.value_network_params["W"], loss.value_network_params["V"]
    w_tg, v_tg = loss.target_value_network_params["W"], loss.target_value_network_params["V"]
    n_on = loss.value_network.num_taus
    tau_m, alpha, l0 = loss.munchausen_tau, loss.munchausen_alpha, loss.munchausen_clip
    taus_on = [(i + 0.5) / n_on for i in range(n_on)]
    taus_tg = [(j + 0.5) / num_target_taus for j in range(num_target_taus)]

    def z(w, v, s, tau, a):
        return float(w[s, a].detach()) + (tau - 0.5) * float(v[s, a].detach())

    def q_mean(w, v, s, taus):
        return [sum(z(w, v, s, t, a) for t in taus) / len(taus) for a in range(NUM_ACTIONS)]

    def log_softmax(q):
        m = max(x / tau_m for x in q)
        lse = m + math.log(sum(math.exp(x / tau_m - m) for x in q))
        return [x / tau_m - lse for x in q]

    total, priorities = 0.0, []
    for b in range(td.shape[0]):
        s, s2 = int(td["pixels"][b, 0, 0, 0]), int(td["next", "pixels"][b, 0, 0, 0])
        a = int(td["action"][b])
        r = float(td["next", "reward"][b])
        if "discount" in td["next"]:
            disc = float(td["next", "discount"][b])
        else:
            disc = loss.gamma ** int(td["steps_to_next_obs"][b]) * (
                1 - float(td["next", "terminated"][b])
            )
        qn = q_mean(w_tg, v_tg, s2, taus_tg)
        targets = []
        for t in taus_tg:
            if munchausen:
                lp = log_softmax(qn)
                pi = [math.exp(x) for x in lp]
                nv = sum(
                    pi[c] * (z(w_tg, v_tg, s2, t, c) - tau_m * lp[c]) for c in range(NUM_ACTIONS)
                )
                if log_policy == "target":
                    qs = q_mean(w_tg, v_tg, s, taus_tg)
                else:
                    qs = q_mean(w_on, v_on, s, taus_on)
                bonus = alpha * min(max(tau_m * log_softmax(qs)[a], l0), 0.0)
            else:
                greedy = max(range(NUM_ACTIONS), key=lambda c: qn[c])
                nv, bonus = z(w_tg, v_tg, s2, t, greedy), 0.0
            targets.append(r + bonus + disc * nv)
        sample, abs_sum = 0.0, 0.0
        for ti in taus_on:
            zi = z(w_on, v_on, s, ti, a)
            row = 0.0
            for tj in targets:
                u = tj - zi
                huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
                row += abs(ti - (1.0 if u < 0 else 0.0)) * huber / kappa
                abs_sum += abs(u)
            sample += row / len(targets)
        weight = float(td["priority_weight"][b]) if "priority_weight" in td else 1.0
        total += weight * sample
        if loss.priority_reduction == "btr_sum_mean":  # sum over online taus, mean over target
            priorities.append(abs_sum / len(targets))
        else:
            priorities.append(abs_sum / (len(taus_on) * len(targets)))
    return total / td.shape[0], priorities


def test_quantile_huber_hand_example():
    # u = target - q: [[0.5 - 1, 3 - 1], [0.5 - 2, 3 - 2]] = [[-0.5, 2], [-1.5, 1]]
    loss, td_abs = quantile_huber_loss(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[0.25, 0.75]]), torch.tensor([[0.5, 3.0]])
    )
    row0 = (0.75 * 0.125 + 0.25 * 1.5) / 2  # tau 0.25: u<0 -> |0.25-1|, u>=0 -> 0.25
    row1 = (0.25 * 1.0 + 0.75 * 0.5) / 2  # tau 0.75: |u|=1.5 -> linear 1.0; u=1 -> 0.5
    assert loss.item() == pytest.approx(row0 + row1)
    assert td_abs.item() == pytest.approx((0.5 + 2 + 1.5 + 1) / 4)
    with pytest.raises(ValueError, match="kappa"):
        quantile_huber_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), kappa=0)


@pytest.mark.parametrize("priority_reduction", ["btr_sum_mean", "mean"])
@pytest.mark.parametrize(
    ("munchausen", "log_policy", "batched", "kappa", "with_discount", "with_weight"),
    [
        (True, "target", True, 1.0, True, True),
        (True, "target", False, 1.0, True, True),
        (True, "online", True, 1.0, True, False),
        (False, "target", True, 1.0, True, True),
        (True, "target", True, 2.0, False, True),
    ],
)
def test_loss_matches_reference(
    munchausen, log_policy, batched, kappa, with_discount, with_weight, priority_reduction
):
    loss = IQNLoss(
        TableIQN(num_taus=2),
        priority_reduction=priority_reduction,
        munchausen=munchausen,
        munchausen_log_policy=log_policy,
        batched_target=batched,
        kappa=kappa,
        num_target_taus=3,
        gamma=0.9,
    )
    with torch.no_grad():  # make the target network differ from the online one
        loss.target_value_network_params["W"].add_(0.7)
        loss.target_value_network_params["V"].mul_(2.0)
    td = _batch(with_discount=with_discount, with_weight=with_weight)
    out = loss(td)
    ref, priorities = _reference(
        loss, td, munchausen=munchausen, log_policy=log_policy, kappa=kappa, num_target_taus=3
    )
    assert out["loss"].item() == pytest.approx(ref, rel=1e-5)
    torch.testing.assert_close(td["td_error"], torch.tensor(priorities), rtol=1e-5, atol=1e-6)
    out["loss"].backward()
    assert loss.value_network_params["W"].grad is not None
    assert loss.target_value_network_params["W"].grad is None


def test_munchausen_bonus_is_clipped_and_nonpositive():
    q = torch.tensor([[0.0, 5.0, 10.0]])
    opts = dict(munchausen_alpha=1.0, munchausen_tau=1e-3, munchausen_clip=-1.0)

    def bonus(action):  # discount 0 and reward 0: the target is the bonus alone
        zero = torch.zeros(1)
        target = iqn_target(
            torch.zeros(1, 1, 3), zero, zero, action=torch.tensor([action]), log_policy_q=q, **opts
        )
        return target.item()

    assert bonus(0) == pytest.approx(-1.0)  # clipped at l0
    assert bonus(2) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="log_policy_q"):
        iqn_target(torch.zeros(1, 1, 3), torch.zeros(1), torch.zeros(1))


def test_hard_update_copies_online_into_target():
    loss = IQNLoss(TableIQN())
    updater = HardUpdate(loss, value_network_update_interval=2)
    with torch.no_grad():
        loss.value_network_params["W"].add_(1.0)
    assert not torch.equal(loss.value_network_params["W"], loss.target_value_network_params["W"])
    for _ in range(2):  # TorchRL's HardUpdate copies on the (interval + 1)-th call
        updater.step()
        assert not torch.equal(
            loss.value_network_params["W"], loss.target_value_network_params["W"]
        )
    updater.step()
    torch.testing.assert_close(
        loss.value_network_params["W"].data, loss.target_value_network_params["W"].data
    )


@pytest.mark.skipif(
    _torchrl_adapter.native_trees() is None,
    reason="TorchRL's own PER buffer needs its C++ segment trees, and this torchrl's extension did "
    "not load (built for another torch); the replay's pure-torch tree is tested in "
    "tests/test_replay_sum_tree.py",
)
def test_priorities_round_trip_through_torchrl_per():
    rb = TensorDictPrioritizedReplayBuffer(
        alpha=0.2, beta=0.4, storage=LazyTensorStorage(16), batch_size=4, priority_key="td_error"
    )
    rb.extend(_batch(with_weight=False))
    rb.update_priority(torch.arange(4), torch.tensor([0.01, 1.0, 5.0, 100.0]))
    sample = rb.sample()
    # TorchRL's own PER buffer names the weights "priority_weight"; the loss reads either
    assert "priority_weight" in sample and "index" in sample
    loss = IQNLoss(TableIQN())
    out = loss(sample)
    unweighted = loss(sample.exclude("priority_weight"))["loss"]
    weighted = loss(sample.exclude("priority_weight").set("_weight", sample["priority_weight"]))
    assert out["loss"].item() == pytest.approx(weighted["loss"].item())
    assert out["loss"].item() != pytest.approx(unweighted.item())
    assert sample["td_error"].shape == (4,) and (sample["td_error"] > 0).all()
    rb.update_tensordict_priority(sample)
    stored = rb.sampler._sum_tree[sample["index"].tolist()]
    expected = (sample["td_error"].double() + rb.sampler._eps) ** 0.2
    torch.testing.assert_close(
        torch.as_tensor(stored).double(), expected.double(), rtol=1e-4, atol=0
    )


def _small_rise_batch(b=6, k=4, d=8):
    def obs():
        return {
            "pixels": torch.randint(0, 256, (b, 4, 36, 36), dtype=torch.uint8),
            "rise_context": torch.randn(b, k, d).half(),
            "rise_context_mask": torch.ones(b, k, dtype=torch.bool),
        }

    return TensorDict(
        {
            **obs(),
            "action": torch.randint(0, 3, (b,)),
            "next": {**obs(), "reward": torch.randn(b, 1), "discount": torch.full((b, 1), 0.97)},
        },
        [b],
    )


SMALL = dict(frame_size=(36, 36), width_scale=0.5, mlp_hidden=32, embedding_dim=8, lstm_hidden=8)


def test_noise_is_active_in_the_loss_and_resampled():
    net = make_q_network("rise", num_actions=3, in_channels=4, **SMALL)
    td = _small_rise_batch()
    loss = IQNLoss(net)
    eps_online = loss.value_network_params["head", "advantage", "0", "weight_epsilon"].clone()
    eps_target = loss.target_value_network_params[
        "head", "advantage", "0", "weight_epsilon"
    ].clone()
    loss(td)["loss"].backward()
    sigma = loss.value_network_params["head", "advantage", "0", "weight_sigma"]
    assert sigma.grad is not None and sigma.grad.abs().sum() > 0
    online_now = loss.value_network_params["head", "advantage", "0", "weight_epsilon"]
    target_now = loss.target_value_network_params["head", "advantage", "0", "weight_epsilon"]
    assert not torch.equal(online_now, eps_online) and not torch.equal(target_now, eps_target)
    assert not torch.equal(online_now, target_now)
    # TorchRL's default (deterministic mode) would leave the noise off: sigma gets no gradient
    quiet = IQNLoss(
        make_q_network("rise", num_actions=3, in_channels=4, **SMALL), noisy_in_loss=False
    )
    quiet(td)["loss"].backward()
    grad = quiet.value_network_params["head", "advantage", "0", "weight_sigma"].grad
    assert grad is None or grad.abs().sum() == 0


def test_target_uses_the_next_states_context_window():
    # the paper's start: a context projection that is not zero, so the stream matters at init
    net = make_q_network("rise", num_actions=3, in_channels=4, fusion_init="paper", **SMALL)
    with torch.no_grad():
        net.context.proj.weight.mul_(100.0)
    # "target" log-policy: the target network runs once over the batched [s_t; s_{t+n}]
    loss = IQNLoss(net, resample_noise=False, munchausen_log_policy="target").eval()
    td = _small_rise_batch()

    def priorities(batch):
        torch.manual_seed(0)
        loss(batch)
        return batch["td_error"].clone()

    base = priorities(td)
    torch.testing.assert_close(priorities(td.clone()), base, atol=1e-4, rtol=1e-3)
    changed = td.clone()
    changed["next", "rise_context"] = torch.randn_like(
        changed["next", "rise_context"].float()
    ).half()
    assert (priorities(changed) - base).abs().max() > 1e-3  # 10x the repeat noise above
    # the windows the LSTM reads: online s_t, then the target's batched [s_t; s_{t+n}]
    seen = []
    hook = net.context.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    loss(td)
    hook.remove()
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], td["rise_context"].reshape(6, 4, 8))
    torch.testing.assert_close(seen[1][6:], td["next", "rise_context"].reshape(6, 4, 8))
    # default "online" log-policy: the target network reads s_{t+n} alone
    seen.clear()
    hook = net.context.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    IQNLoss(net, resample_noise=False).eval()(td)
    hook.remove()
    assert len(seen) == 2
    torch.testing.assert_close(seen[1], td["next", "rise_context"].reshape(6, 4, 8))
    with pytest.raises(KeyError, match="s_\\{t\\+n\\}"):
        loss(td.exclude(("next", "rise_context")))
    assert ("next", "rise_context") in loss.in_keys


def test_autocast_bf16_loss_is_finite():
    net = make_q_network("rise", num_actions=3, in_channels=4, channels_last=True, **SMALL)
    loss = IQNLoss(net, autocast_dtype=torch.bfloat16)
    out = loss(_small_rise_batch())
    out["loss"].backward()
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="autocast_dtype"):
        IQNLoss(net, autocast_dtype=torch.int8)


def test_sequence_loss_masks_steps_without_bootstrap():
    net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, burn_in=2, **SMALL)
    b, t = 2, 6
    td = TensorDict(
        {
            "pixels": torch.randint(0, 256, (b, t, 4, 36, 36), dtype=torch.uint8),
            "action": torch.randint(0, 3, (b, t)),
            "steps_to_next_obs": torch.full((b, t, 1), 2),
            "priority_weight": torch.ones(b),
            "next": {"reward": torch.randn(b, t, 1), "discount": torch.full((b, t, 1), 0.9)},
        },
        [b],
    )
    loss = IQNLoss(net, resample_noise=False)
    torch.manual_seed(0)
    out = loss(td)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and td["td_error"].shape == (b,)
    # trained steps are 2..5; bootstrap j + 2 must stay inside: steps 4, 5 are masked out
    poisoned = td.clone()
    poisoned["next", "reward"][:, 4:] = 1e6
    torch.manual_seed(0)
    assert loss(poisoned)["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-5)
    poisoned["next", "reward"][:, 3] = 1e6
    torch.manual_seed(0)
    assert loss(poisoned)["loss"].item() > 1e3
    # [B, T] layout (TorchRL slice samplers): same loss, priority broadcast along T
    per_step = td.exclude("priority_weight", "td_error").clone(False)
    per_step.batch_size = [b, t]
    per_step["priority_weight"] = td["priority_weight"].unsqueeze(-1).expand(b, t).clone()
    torch.manual_seed(0)
    assert loss(per_step)["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-5)
    torch.testing.assert_close(  # spectral norm's power step moved a little in between
        per_step["td_error"], td["td_error"].unsqueeze(-1).expand(b, t), rtol=1e-3, atol=1e-4
    )


def test_bad_inputs_are_rejected_clearly():
    loss = IQNLoss(TableIQN())
    td = _batch()
    with pytest.raises(TypeError, match="integer index"):
        loss(td.clone().set("action", td["action"].float()))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss(td.clone().set("action", torch.tensor([0, 1, 2, 3])))
    with pytest.raises(KeyError, match="discount"):
        loss(td.exclude(("next", "discount"), "steps_to_next_obs"))
    with pytest.raises(ValueError, match="munchausen_log_policy"):
        IQNLoss(TableIQN(), munchausen_log_policy="both")
    with pytest.raises(TypeError, match="make_q_network"):
        IQNLoss(nn.Linear(2, 2))
    with pytest.raises(NotImplementedError, match="n-step return"):
        loss.make_value_estimator()


def test_the_weight_key_is_torchrl_s_priority_weight_and_the_legacy_key_still_reads():
    from torchrl_rise import keys

    assert keys.WEIGHT == "priority_weight"  # what TorchRL's PrioritizedSampler writes (>= 0.4)
    loss = IQNLoss(TableIQN(), munchausen=False)
    assert loss.tensor_keys.priority_weight == "priority_weight"
    td = _batch(with_weight=False)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    new = loss(td.clone().set("priority_weight", w))["loss"]
    old = loss(td.clone().set("_weight", w))["loss"]
    unweighted = loss(td.clone())["loss"]
    torch.testing.assert_close(new, old)
    assert not torch.allclose(new, unweighted)
