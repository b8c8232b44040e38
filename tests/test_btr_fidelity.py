"""The data side follows BTR's published code (VIPTankz/BTR, BTR.py): brute-force references.

Exploration schedule, PER sampling (stratified), importance weights, new-item priority, the
priority reduction and the target-network copy; each against a small reference written out by
hand, and each old behaviour kept as a named option. docs/loss.md has the table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrl.data import Categorical, LazyTensorStorage
from torchrl.objectives import HardUpdate

from torchrl_rise.modules import make_q_network
from torchrl_rise.modules.actor import BTREGreedyModule, make_actor
from torchrl_rise.objectives import HardTargetUpdate, IQNLoss, quantile_huber_loss
from torchrl_rise.replay import ReadinessSampler
from torchrl_rise.training import ConfigError, TrainConfig, load_config
from torchrl_rise.training.builders import build_loss

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"
TINY_NET = dict(width_scale=0.25, mlp_hidden=16, num_cosines=8, frame_size=(36, 36))


# ---------------------------------------------------------------------------- exploration
def _btr_eps_loop(transitions: int, n: int, eps: float = 1.0, final: float = 0.01) -> float:
    """BTR's code: ``eps -= (eps - final) / n`` once per stored transition."""
    for _ in range(transitions):
        eps -= (eps - final) / n
    return eps


def test_exponential_eps_matches_the_per_transition_loop_for_vector_steps():
    # N = 1000 transitions (4000 frames at frame skip 4); 64 envs store 64 transitions per step
    module = BTREGreedyModule(
        Categorical(4), eps_decay_frames=4000, frame_skip=4, eps_off_after_frames=None
    )
    assert module.schedule == "btr_exponential" and module.eps.item() == 1.0
    eps, done = 1.0, 0
    for vector_steps in (1, 3, 10, 50):
        module.step(vector_steps * 64 * 4)
        for _ in range(vector_steps * 64):
            eps -= (eps - 0.01) / 1000
        done += vector_steps * 64
        assert module.eps.item() == pytest.approx(eps, rel=1e-6, abs=1e-7), done
    assert module.eps.item() == pytest.approx(_btr_eps_loop(done, 1000), rel=1e-6)


def test_exponential_eps_at_btr_scale_and_switch_off():
    module = BTREGreedyModule(Categorical(4))  # BTR: N = 2M transitions = 8M frames, off at 100M
    # the closed form at BTR's scale (a 10M-iteration loop would take too long here)
    for frames, expected in ((8_000_000, 0.374), (20_000_000, 0.0913), (40_000_000, 0.0167)):
        assert module.eps_at(frames) == pytest.approx(expected, abs=5e-4)
        k = frames / 8_000_000
        assert module.eps_at(frames) == pytest.approx(0.01 + 0.99 * math.exp(-k), rel=1e-5)
    assert module.eps_at(100_000_000 - 4) > 0.01
    assert module.eps_at(100_000_000) == 0.0
    linear = BTREGreedyModule(Categorical(4), schedule="linear")
    assert linear.eps_at(4_000_000) == pytest.approx(0.505)
    assert linear.eps_at(8_000_000) == pytest.approx(0.01)


def test_exponential_eps_resumes_from_the_frame_counter():
    a = BTREGreedyModule(Categorical(4), eps_decay_frames=400, frame_skip=4)
    a.step(1000)
    b = BTREGreedyModule(Categorical(4), eps_decay_frames=400, frame_skip=4)
    b.load_state_dict(a.state_dict())
    assert b.eps.item() == a.eps.item() and int(b.frames) == 1000
    a.step(256)
    b.step(256)
    assert b.eps.item() == pytest.approx(a.eps.item())
    assert a.eps.item() == pytest.approx(_btr_eps_loop(314, 100), rel=1e-6)


def test_exploration_schedule_errors():
    with pytest.raises(ValueError, match="schedule must be one of"):
        BTREGreedyModule(Categorical(4), schedule="cosine")
    with pytest.raises(ValueError, match="frame_skip"):
        BTREGreedyModule(Categorical(4), frame_skip=0)
    with pytest.raises(ValueError, match="shorter than one transition"):
        BTREGreedyModule(Categorical(4), eps_decay_frames=2, frame_skip=4)
    net = make_q_network("btr", num_actions=4, in_channels=4, **TINY_NET)
    actor = make_actor(net, action_spec=Categorical(4), eps_decay_frames=40, frame_skip=1)
    actor.step(40)
    assert actor.module[-1].eps.item() == pytest.approx(_btr_eps_loop(40, 40), rel=1e-6)


# ---------------------------------------------------------------------------- PER sampling
def _sampler(priorities, *, ready=None, capacity=None, seed=0, **kwargs):
    """A sampler over ``capacity`` slots; ``priorities[i]`` set on slot ``ready[i]``."""
    ready = torch.arange(len(priorities)) if ready is None else torch.as_tensor(ready)
    capacity = capacity or int(ready.max()) + 1
    storage = LazyTensorStorage(capacity)
    storage.set(torch.arange(capacity), torch.zeros(capacity))
    sampler = ReadinessSampler(
        capacity, kwargs.pop("alpha", 0.2), kwargs.pop("beta", 0.4), **kwargs
    )
    sampler._rng = torch.Generator().manual_seed(seed)
    sampler.update_priority(ready, torch.as_tensor(priorities, dtype=torch.float32))
    return sampler, storage


def test_stratified_draws_land_one_per_segment():
    # 40 slots, every 3rd one not ready (zero mass), priorities 1..k
    ready = torch.tensor([i for i in range(40) if i % 3])
    prio = torch.arange(1, len(ready) + 1, dtype=torch.float32)
    sampler, storage = _sampler(prio, ready=ready, capacity=40, alpha=0.7)
    unready = torch.tensor([i for i in range(40) if i % 3 == 0])
    sampler.mark_unready(unready)
    mass = np.zeros(40)
    mass[ready.numpy()] = (prio.double().numpy() + 1e-6) ** 0.7
    cum = np.cumsum(mass)
    lo, hi = cum - mass, cum  # slot k covers [lo_k, hi_k) of the total mass
    batch = 16
    seg = cum[-1] / batch
    for _ in range(50):
        index, _ = sampler.sample(storage, batch)
        index = index.numpy()
        assert mass[index].min() > 0  # never an unready slot
        for i, k in enumerate(index):  # draw i lies in segment [i seg, (i + 1) seg)
            assert lo[k] <= (i + 1) * seg * (1 + 1e-6) and hi[k] >= i * seg * (1 - 1e-6)


def test_stratified_equal_mass_hits_every_slot_once_independent_does_not():
    sampler, storage = _sampler(torch.ones(8), alpha=1.0)
    for _ in range(20):
        index, _ = sampler.sample(storage, 8)
        assert index.tolist() == list(range(8))
    independent, storage = _sampler(torch.ones(8), alpha=1.0, stratified=False)
    repeats = [len(set(independent.sample(storage, 8)[0].tolist())) < 8 for _ in range(20)]
    assert any(repeats)  # 8 independent draws over 8 slots repeat one with prob. 1 - 8!/8^8


@pytest.mark.parametrize("stratified", [True, False])
def test_sampling_frequencies_match_the_priorities(stratified):
    prio = torch.tensor([0.1, 5.0, 1.0, 2.0, 0.0, 3.0, 0.5, 8.0])
    sampler, storage = _sampler(prio, alpha=0.6, stratified=stratified, seed=3)
    counts = torch.zeros(8, dtype=torch.float64)
    draws = 0
    for _ in range(200):
        index, _ = sampler.sample(storage, 64)
        counts += torch.bincount(index, minlength=8).double()
        draws += 64
    p = (prio.double() + 1e-6) ** 0.6
    expected = p / p.sum()
    # 12.8k draws: standard error < 0.0045 per cell (less when stratified)
    torch.testing.assert_close(counts / draws, expected, atol=0.015, rtol=0)


def test_btr_importance_weights_equal_a_numpy_reference():
    capacity, alpha = 64, 0.2  # the buffer is not full: 10 of 64 slots hold transitions
    ready = np.array([0, 3, 4, 9, 10, 11, 20, 33, 50, 63])
    prio = np.array([0.5, 2.0, 7.0, 0.01, 1.0, 3.0, 0.2, 9.0, 4.0, 1.5], dtype=np.float32)
    sampler, storage = _sampler(prio, ready=ready, capacity=capacity, alpha=alpha, beta=0.9)
    tree = np.zeros(capacity)
    tree[ready] = (prio.astype(np.float64) + 1e-6) ** alpha
    for _ in range(5):
        index, info = sampler.sample(storage, 12)
        p = tree[index.numpy()] / tree.sum()
        w = (capacity * p) ** -alpha  # BTR: the fixed capacity, not the number stored
        np.testing.assert_allclose(info["priority_weight"].numpy(), w / w.max(), rtol=1e-5)
        # the capacity constant cancels in the batch-max normalisation
        w_stored = (len(ready) * p) ** -alpha
        np.testing.assert_allclose(w / w.max(), w_stored / w_stored.max(), rtol=1e-12)
        assert info["priority_weight"].max() == 1.0


def test_unready_slots_never_normalise_a_weight_in_either_mode():
    for mode in ("btr", "torchrl"):
        sampler, storage = _sampler(
            torch.tensor([1.0, 4.0, 1e-4, 2.0]), alpha=1.0, beta=0.5, importance_weights=mode
        )
        sampler.mark_unready(torch.tensor([2]))  # the smallest priority goes
        index, info = sampler.sample(storage, 300)
        assert 2 not in index.tolist()
        p = np.array([1.0, 4.0, 0.0, 2.0]) + 1e-6
        if mode == "btr":
            w = p[index.numpy()] ** -1.0
            want = w / w.max()
        else:  # TorchRL's: (p / min over ready slots) ** -beta
            want = (p[index.numpy()] / p[[0, 1, 3]].min()) ** -0.5
        np.testing.assert_allclose(info["priority_weight"].numpy(), want, rtol=1e-5)


def test_new_items_enter_at_max_of_one_and_the_largest_priority():
    sampler, _ = _sampler(torch.tensor([0.3, 0.1]), alpha=0.5)
    assert sampler.default_priority == 1.0  # every priority so far < 1: the floor
    sampler.mark_ready(torch.tensor([1]))
    assert sampler.tree_values(torch.tensor([1])).item() == pytest.approx((1.0 + 1e-6) ** 0.5)
    sampler.update_priority(torch.tensor([0]), torch.tensor([5.0]))
    sampler.update_priority(torch.tensor([0]), torch.tensor([0.2]))  # the maximum never drops
    assert sampler.default_priority == pytest.approx(5.0)
    torchrl_rule, _ = _sampler(torch.tensor([0.3, 0.1]), alpha=0.5, max_priority_floor=0.0)
    assert torchrl_rule.default_priority == pytest.approx(0.3)
    with pytest.raises(ValueError, match="importance_weights"):
        ReadinessSampler(4, 0.2, 0.4, importance_weights="per")


def test_sampling_from_a_buffer_of_unready_slots_is_explained():
    sampler, storage = _sampler(torch.ones(4))
    sampler.mark_unready(torch.arange(4))
    with pytest.raises(RuntimeError, match="no slot has a positive priority"):
        sampler.sample(storage, 4)


# ---------------------------------------------------------------------------- priorities
def test_btr_priority_is_the_sum_over_online_taus_of_the_mean_over_target_taus():
    g = torch.Generator().manual_seed(0)
    quantiles, taus = torch.randn(5, 8, generator=g), torch.rand(5, 8, generator=g)
    target = torch.randn(5, 6, generator=g)
    _, mean_abs = quantile_huber_loss(quantiles, taus, target)
    for b in range(5):  # loop reference of BTR's `loss_v`
        total = sum(
            sum(abs(float(target[b, j] - quantiles[b, i])) for j in range(6)) / 6 for i in range(8)
        )
        assert 8 * mean_abs[b].item() == pytest.approx(total, rel=1e-5)
    net = make_q_network("btr", num_actions=3, in_channels=4, **TINY_NET)
    assert IQNLoss(net).priority_reduction == "btr_sum_mean"
    with pytest.raises(ValueError, match="priority_reduction"):
        IQNLoss(net, priority_reduction="max")


# ---------------------------------------------------------------------------- target network
def _perturb(loss: IQNLoss, step: int) -> None:
    """Change one parameter and one spectral-norm buffer of the online network."""
    params = loss.value_network_params
    with torch.no_grad():
        params.get(("head", "value", "0", "weight_mu")).add_(0.01 * step)
        params.get(_SPECTRAL_U).add_(0.001 * step)


_SPECTRAL_U = ("cnn", "stages", "0", "res_0", "conv_0", "parametrizations", "weight", "0", "_u")


def _equal(loss: IQNLoss) -> bool:
    source, target = loss.value_network_params, loss.target_value_network_params
    return all(torch.equal(v, target.get(k)) for k, v in source.items(True, True))


def test_target_is_copied_with_buffers_exactly_at_updates_500_and_1000():
    net = make_q_network("btr", num_actions=3, in_channels=4, **TINY_NET)
    loss = IQNLoss(net)
    updater = HardTargetUpdate(loss, interval=500)
    assert _equal(loss)  # copied at construction
    copied_at = []
    for update in range(1, 1001):
        _perturb(loss, update)
        updater.step()
        if _equal(loss):
            copied_at.append(update)
    assert copied_at == [500, 1000]
    assert updater.state_dict()["counter"] == 0
    params_only = HardTargetUpdate(loss, interval=1, copy_buffers=False)
    _perturb(loss, 1)
    params_only.step()
    target = loss.target_value_network_params
    assert not torch.equal(loss.value_network_params.get(_SPECTRAL_U), target.get(_SPECTRAL_U))


def test_torchrl_hard_update_copies_every_interval_plus_one_without_buffers():
    """Why HardTargetUpdate exists: TorchRL's counter runs 0..interval and skips buffers."""
    net = make_q_network("btr", num_actions=3, in_channels=4, **TINY_NET)
    loss = IQNLoss(net)
    updater = HardUpdate(loss, value_network_update_interval=5)
    w = ("head", "value", "0", "weight_mu")
    copied_at = []
    for update in range(1, 13):
        _perturb(loss, update)
        updater.step()
        if torch.equal(loss.value_network_params.get(w), loss.target_value_network_params.get(w)):
            copied_at.append(update)
    assert copied_at == [6, 12]
    u_source = loss.value_network_params.get(_SPECTRAL_U)
    assert not torch.equal(u_source, loss.target_value_network_params.get(_SPECTRAL_U))


def test_build_loss_uses_the_btr_target_update(tmp_path):
    cfg = TrainConfig(method="btr")
    cfg.loss.target_update_interval = 3
    net = make_q_network("btr", num_actions=3, in_channels=4, **TINY_NET)
    loss, updater = build_loss(cfg, net)
    assert isinstance(updater, HardTargetUpdate) and updater.interval == 3
    assert loss.priority_reduction == "btr_sum_mean"
    cfg.loss.kwargs = {"delay_value": False}
    with pytest.raises(ConfigError, match="target"):
        build_loss(cfg, net)


# ---------------------------------------------------------------------------- configuration
def test_config_defaults_are_btr_code_and_old_behaviour_is_an_option():
    cfg = load_config()
    assert cfg.exploration.schedule == "btr_exponential"
    assert (cfg.replay.importance_weights, cfg.replay.stratified) == ("btr", True)
    assert cfg.replay.max_priority_floor == 1.0
    assert cfg.loss.priority_reduction == "btr_sum_mean"
    old = load_config(
        {
            "exploration": {"schedule": "linear"},
            "replay": {"importance_weights": "torchrl", "stratified": False},
            "loss": {"priority_reduction": "mean"},
        }
    )
    assert old.exploration.schedule == "linear" and not old.replay.stratified
    from hydra import compose, initialize_config_dir

    from torchrl_rise.training import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        recipe = load_config(compose(config_name="atari"))  # BTR's Atari run: no overrides
    for section in ("exploration", "replay", "loss"):
        assert getattr(recipe, section) == getattr(cfg, section), section


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"exploration": {"schedule": "cosine"}}, "exploration.schedule must be one of"),
        ({"replay": {"importance_weights": "per"}}, "replay.importance_weights must be one of"),
        ({"replay": {"max_priority_floor": -1.0}}, "replay.max_priority_floor must be >= 0"),
        ({"loss": {"priority_reduction": "max"}}, "loss.priority_reduction must be one of"),
    ],
)
def test_invalid_btr_options_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(override)


def test_replay_buffer_passes_the_sampling_options(tmp_path):
    from torchrl_rise.replay import RiseReplayBuffer

    rb = RiseReplayBuffer(
        64,
        2,
        frame_shape=(1, 3, 3),
        frame_stack=2,
        context_length=0,
        n_step=2,
        scratch_dir=tmp_path,
        importance_weights="torchrl",
        stratified=False,
        max_priority_floor=0.5,
    )
    s = rb.sampler
    assert (s.importance_weights, s.stratified, s.max_priority_floor) == ("torchrl", False, 0.5)
    default = RiseReplayBuffer(
        64, 2, frame_shape=(1, 3, 3), frame_stack=2, context_length=0, scratch_dir=tmp_path / "d"
    )
    d = default.sampler
    assert (d.importance_weights, d.stratified, d.max_priority_floor) == ("btr", True, 1.0)


def test_build_components_wires_the_env_frame_skip_into_the_schedule(tmp_path):
    from torchrl_rise.training.builders import build_components

    small = {
        "method": "btr",
        "env": {"num_envs": 2},
        "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16, "num_cosines": 8}},
        "replay": {"capacity": 1024, "batch_size": 16, "learning_starts": 256},
    }
    comps = build_components(load_config(small), scratch_dir=tmp_path / "a")
    explore = comps.actor.module[-1]
    assert (explore.schedule, explore.frame_skip) == ("btr_exponential", 4)  # Atari: frame skip 4
    assert comps.env_info.frame_skip == 4
    assert (comps.replay.sampler.importance_weights, comps.replay.sampler.stratified) == (
        "btr",
        True,
    )
    assert isinstance(comps.target_updater, HardTargetUpdate)
    too_short = {**small, "exploration": {"eps_decay_frames": 2}}
    with pytest.raises(ConfigError, match="shorter than one transition"):
        build_components(load_config(too_short), scratch_dir=tmp_path / "b")


def test_a_draw_landing_on_a_slot_without_mass_is_redrawn():
    # A mass of exactly 0 walks the tree to slot 0, which is not ready here; TorchRL's sampler
    # then steps back past slot 0 and raises. The draw is redrawn instead.
    sampler, storage = _sampler(torch.tensor([1.0, 2.0, 3.0]), ready=[1, 2, 3], capacity=4)
    sampler.mark_unready(torch.tensor([0]))
    calls = []
    draw = sampler._mass

    def zero_first(p_sum, rows, batch_size):
        calls.append(rows.numel())
        mass = draw(p_sum, rows, batch_size)
        return torch.zeros_like(mass) if len(calls) == 1 else mass

    sampler._mass = zero_first
    index, info = sampler.sample(storage, 4)
    assert calls == [4, 4] and (index > 0).all() and info["priority_weight"].max() == 1.0
