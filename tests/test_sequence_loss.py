"""SequenceIQNLoss against a loop-by-loop reference, the masked burn-in of the recurrent network,
and the trainer's update step (sample -> loss -> backward -> step -> priorities) on the replay."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from tests.helpers import replay_update
from torchrl_rise.modules import make_q_network
from torchrl_rise.objectives import IQNLoss, SequenceIQNLoss, sequence_bootstrap
from torchrl_rise.replay import SequenceReplayBuffer

FRAME, HIDDEN, A = 12, 8, 3


def _net(burn_in=2, **kw):
    opts = dict(
        num_actions=A, in_channels=2, frame_size=(FRAME, FRAME), lstm_hidden=HIDDEN,
        width_scale=1, mlp_hidden=16, burn_in=burn_in, spectral_norm=False, num_taus=3,
    )  # fmt: skip
    opts.update(kw)
    return make_q_network("recurrent_baseline", **opts)


def _batch(B=3, burn=2, learn=4, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    T = burn + learn + n
    seq_mask = torch.ones(B, T, dtype=torch.bool)
    seq_mask[0, :burn] = False  # a sequence at its episode's start: no burn-in
    seq_mask[1, burn + 3 :] = False  # its episode ended: right padding
    learn_mask = seq_mask.clone()
    learn_mask[:, :burn] = False
    learn_mask[:, burn + learn :] = False
    learn_mask[1, burn + 2] = False  # the final record
    m = torch.randint(1, n + 1, (B, T, 1), generator=gen)
    m[1, burn + 1] = 1  # the step before the final record bootstraps from it
    return TensorDict(
        {
            "pixels": torch.randint(
                0, 256, (B, T, 2, FRAME, FRAME), dtype=torch.uint8, generator=gen
            ),
            "action": torch.randint(0, A, (B, T), generator=gen),
            "recurrent_state_h": torch.randn(B, HIDDEN, generator=gen),
            "recurrent_state_c": torch.randn(B, HIDDEN, generator=gen),
            "sequence_mask": seq_mask,
            "learn_mask": learn_mask,
            "steps_to_next_obs": m,
            "priority_weight": torch.rand(B, generator=gen) + 0.5,
            "next": {
                "reward": torch.randn(B, T, 1, generator=gen),
                "discount": torch.rand(B, T, 1, generator=gen),
            },
        },
        [B],
    )


def _rho(u, tau, kappa=1.0):
    huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
    return abs(tau - float(u < 0)) * huber / kappa


def _reference(loss, td, *, eta=0.9):
    """Loops over sequences, trained steps, online and target taus."""
    net = loss.value_network
    obs = td.select("pixels", "recurrent_state_h", "recurrent_state_c", "sequence_mask")
    with set_exploration_type(ExplorationType.RANDOM):  # noise on, as the loss runs
        with loss.value_network_params.to_module(net):
            on = net(obs.copy())
        target = loss.target_value_network_params
        with target.to_module(net), net.taus_override(loss.num_target_taus):
            tg = net(obs.copy())
    z, taus, zt = on["quantiles"].detach(), on["taus"], tg["quantiles"]
    steps = z.shape[1]
    burn = td["learn_mask"].shape[1] - steps
    tau_m, alpha, l0 = loss.munchausen_tau, loss.munchausen_alpha, loss.munchausen_clip
    total, priorities = 0.0, []
    for b in range(td.shape[0]):
        losses, errors = [], []
        for j in range(steps):
            p = burn + j
            if not td["learn_mask"][b, p]:
                continue
            a = int(td["action"][b, p])
            boot = j + int(td["steps_to_next_obs"][b, p])
            q_next = zt[b, boot].mean(0)
            pi = torch.softmax(q_next / tau_m, -1)
            log_pi = tau_m * torch.log_softmax(q_next / tau_m, -1)
            q_now = z[b, j].mean(0)
            bonus = alpha * min(max(float(tau_m * torch.log_softmax(q_now / tau_m, -1)[a]), l0), 0)
            r, g = float(td["next", "reward"][b, p]), float(td["next", "discount"][b, p])
            targets = [
                r + bonus + g * float((pi * (zt[b, boot, k] - log_pi)).sum())
                for k in range(zt.shape[2])
            ]
            step_loss, step_err = 0.0, 0.0
            for i in range(z.shape[2]):
                row = [_rho(t - float(z[b, j, i, a]), float(taus[b, j, i])) for t in targets]
                step_loss += sum(row) / len(row)
                step_err += sum(abs(t - float(z[b, j, i, a])) for t in targets)
            losses.append(step_loss)
            errors.append(step_err / (z.shape[2] * len(targets)))
        total += float(td["priority_weight"][b]) * sum(losses) / len(losses)
        mixed = eta * max(errors) + (1 - eta) * sum(errors) / len(errors)
        priorities.append(mixed * z.shape[2])  # BTR: sum over online taus, mean over target taus
    return total / td.shape[0], torch.tensor(priorities)


def test_loss_equals_loop_by_loop_reference():
    torch.manual_seed(0)
    loss = SequenceIQNLoss(_net(), resample_noise=False, num_target_taus=4)
    td = _batch()
    torch.manual_seed(1)
    out = loss(td)
    torch.manual_seed(1)
    want_loss, want_priority = _reference(loss, td)
    assert out["loss"].item() == pytest.approx(want_loss, rel=1e-4)
    torch.testing.assert_close(td["td_error"], want_priority.float(), rtol=1e-4, atol=1e-5)
    assert set(out.keys()) >= {"loss", "td_error_mean", "q_value_mean", "target_mean"}
    out["loss"].backward()
    assert all(
        p.grad is not None for n, p in loss.value_network_params.items(True, True) if "lstm" in n
    )


def test_untrained_positions_do_not_matter():
    torch.manual_seed(0)
    loss = SequenceIQNLoss(_net(), resample_noise=False)
    td = _batch()
    torch.manual_seed(1)
    base = loss(td)["loss"].item()
    poisoned = td.clone()
    untrained = ~td["learn_mask"]
    poisoned["next", "reward"][untrained] = 1e6
    poisoned["action"][untrained] = A - 1
    torch.manual_seed(1)
    assert loss(poisoned)["loss"].item() == pytest.approx(base, rel=1e-5)
    poisoned["next", "reward"][0, 3] = 1e6  # a trained position
    torch.manual_seed(1)
    assert loss(poisoned)["loss"].item() > 1e3


def test_masked_burn_in_starts_from_the_state_at_the_first_valid_position():
    """Left-padded burn-in == the same sequence without the padding, from the same state."""
    torch.manual_seed(0)
    net = _net(burn_in=3)
    td = _batch(B=2, burn=3)
    td["sequence_mask"][:, :3] = torch.tensor([[False, False, True], [False, False, False]])
    padded = net(td.select("pixels", "recurrent_state_h", "recurrent_state_c", "sequence_mask"))
    for b, skip in ((0, 2), (1, 3)):
        short = _net(burn_in=3 - skip)
        short.load_state_dict(net.state_dict())
        one = td[b : b + 1].select("pixels", "recurrent_state_h", "recurrent_state_c")
        one["pixels"] = one["pixels"][:, skip:]
        short(one)
        for key in ("recurrent_state_h", "recurrent_state_c"):  # the state after the sequence
            torch.testing.assert_close(one["next", key][0], padded["next", key][b])
    # without the mask the padding would be read: the state differs
    plain = net(td.select("pixels", "recurrent_state_h", "recurrent_state_c"))
    assert not torch.allclose(
        plain["next", "recurrent_state_h"], padded["next", "recurrent_state_h"]
    )


def test_bad_inputs_are_rejected():
    with pytest.raises(TypeError, match="sequence network"):
        SequenceIQNLoss(make_q_network("btr", num_actions=3, in_channels=2, width_scale=1))
    loss = SequenceIQNLoss(_net(burn_in=3))
    with pytest.raises(ValueError, match="burn_in"):
        loss(_batch(burn=2))  # trained positions would be burnt in
    with pytest.raises(KeyError, match="learn_mask"):
        SequenceIQNLoss(_net())(_batch().exclude("learn_mask"))


def test_update_step_on_the_replay_lowers_the_loss_on_a_fixed_batch(tmp_path):
    """The trainer's contract: sample -> loss -> backward -> step -> update priorities."""
    torch.manual_seed(0)
    E, T = 2, 30
    rb = SequenceReplayBuffer(
        E * 60, E, frame_shape=(1, FRAME, FRAME), frame_stack=2, burn_in=2, learning_length=4,
        period=2, n_step=2, state_dim=HIDDEN, batch_size=6, scratch_dir=tmp_path / "rb", seed=0,
        check_disk=False,
    )  # fmt: skip
    end = torch.zeros(E, T, 1, dtype=torch.bool)
    end[:, 9::10] = True
    rb.extend(
        TensorDict(
            {
                "pixels": torch.randint(0, 256, (E, T, 2, FRAME, FRAME), dtype=torch.uint8),
                "action": torch.randint(0, A, (E, T)),
                "recurrent_state_h": torch.randn(E, T, HIDDEN) * 0.1,
                "recurrent_state_c": torch.randn(E, T, HIDDEN) * 0.1,
                ("next", "pixels"): torch.randint(
                    0, 256, (E, T, 2, FRAME, FRAME), dtype=torch.uint8
                ),
                ("next", "reward"): end.float(),
                ("next", "terminated"): end,
            },
            [E, T],
        )
    )
    loss = SequenceIQNLoss(_net(), delay_value=False)
    opt = torch.optim.Adam(loss.parameters(), lr=3e-3)
    fixed = rb.sample()
    first = loss(fixed.clone())["loss"].item()
    for _ in range(40):
        batch, out = replay_update(loss, opt, rb)
        assert batch["td_error"].shape == (6,) and math.isfinite(out["loss"].item())
    assert loss(fixed.clone())["loss"].item() < first
    tree = rb.sampler.tree_values(rb.sampleable_index())
    assert tree.unique().numel() > 1  # per-sequence priorities were written back
    rb.close()


def test_iqn_loss_sequence_path_is_unchanged():
    """IQNLoss still trains the recurrent network on its own [B, T] layout."""
    loss = IQNLoss(_net())
    td = _batch().exclude("learn_mask", "sequence_mask")
    out = loss(td)
    assert torch.isfinite(out["loss"]) and td["td_error"].shape == (3,)


def test_iqn_loss_sequence_path_is_sequence_iqn_loss_training_every_position():
    """One sequence path: IQNLoss == SequenceIQNLoss with every position after the burn-in
    trained, bit for bit (loss, priorities and outputs, whose names mean the same in both)."""
    torch.manual_seed(0)
    net = _net()
    td = _batch().exclude("sequence_mask")
    td["learn_mask"][:] = True
    td["learn_mask"][:, :2] = False
    results = []
    for cls in (IQNLoss, SequenceIQNLoss):
        batch = td.clone()
        torch.manual_seed(1)
        out = cls(net, resample_noise=False)(batch)
        results.append((out, batch["td_error"]))
    (out_a, prio_a), (out_b, prio_b) = results
    assert torch.equal(prio_a, prio_b)
    assert set(out_a.keys()) == set(out_b.keys())
    for key, value in out_a.items():
        assert torch.equal(value, out_b[key]), key


def test_sequence_bootstrap_reads_j_plus_m_and_drops_bootstraps_past_the_end():
    z = torch.arange(8.0).view(2, 4, 1, 1)  # [B=2, L=4, N'=1, A=1]: the position's own index
    m = torch.tensor([[1, 2, 1, 1], [3, 1, 2, 1]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    boot, trained = sequence_bootstrap(z, m, mask=mask)
    assert boot.flatten().tolist() == [1, 3, 3, 3, 7, 6, 7, 7]  # clamped at the last position
    assert trained.tolist() == [[True, True, True, False], [False, True, False, False]]
    assert sequence_bootstrap(z, m)[1].tolist() == [
        [True, True, True, False],
        [True, True, False, False],
    ]
