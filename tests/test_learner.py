"""The Learner: same numbers as the update loop it replaces, device-side stats, device checks."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from torchrl_rise.modules import make_q_network
from torchrl_rise.objectives import HardTargetUpdate, IQNLoss
from torchrl_rise.replay import RiseReplayBuffer
from torchrl_rise.training.learner import DeviceMismatchError, Learner, build_learner_optimizer

K, D, A, HW = 4, 8, 3, 16


def _net(kind: str):
    return make_q_network(
        kind,
        num_actions=A,
        in_channels=4,
        frame_size=(HW, HW),
        embedding_dim=D,
        context_length=K if kind == "rise" else None,
        width_scale=0.25,
        mlp_hidden=16,
        spectral_norm=kind == "btr",
        lstm_hidden=8 if kind == "rise" else None,
    )


def _replay(kind: str, tmp_path, name: str) -> RiseReplayBuffer:
    rb = RiseReplayBuffer(
        128,
        2,
        frame_shape=(1, HW, HW),
        embedding_dim=D,
        context_length=K if kind == "rise" else 0,
        batch_size=8,
        seed=3,
        scratch_dir=tmp_path / name,
    )
    g = torch.Generator().manual_seed(1)
    T = 30
    td = {
        "pixels": torch.randint(0, 255, (2, T, 4, HW, HW), dtype=torch.uint8, generator=g),
        "action": torch.randint(0, A, (2, T), generator=g),
        ("next", "reward"): torch.randn(2, T, 1, generator=g),
        ("next", "terminated"): torch.rand(2, T, 1, generator=g) < 0.05,
        ("next", "truncated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ("next", "pixels"): torch.randint(
            0, 255, (2, T, 4, HW, HW), dtype=torch.uint8, generator=g
        ),
    }
    if kind == "rise":
        td["rise_embedding"] = torch.randn(2, T, D, generator=g).half()
        td[("next", "rise_embedding")] = torch.randn(2, T, D, generator=g).half()
    rb.extend(TensorDict(td, batch_size=[2, T]))
    return rb


def _parts(kind: str, tmp_path, name: str):
    torch.manual_seed(0)
    net = _net(kind)
    loss = IQNLoss(net)
    updater = HardTargetUpdate(loss, interval=3)
    opt = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad], lr=1e-3, eps=1e-5)
    return loss, opt, _replay(kind, tmp_path, name), updater


def _reference_learn(loss, optimizer, replay, updater, n_updates, grad_clip, stats):
    """Trainer._learn as it was before the Learner (torchrl_rise/training/loop.py)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for _ in range(n_updates):
        batch = replay.sample().to("cpu")
        losses = loss(batch)
        total = losses.get("loss")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        replay.update_tensordict_priority(batch)
        updater.step()
        stats["loss"].append(float(total.detach()))
        stats["grad_norm"].append(float(grad_norm))
        stats["td_error"].append(float(losses.get("td_error_mean")))
        stats["q_mean"].append(float(losses.get("q_value_mean")))
        for k, v in losses.items():
            if k.startswith("gate_"):
                stats.setdefault(k, []).append(float(v))


@pytest.mark.parametrize("kind", ["btr", "rise"])
def test_learner_matches_the_reference_update_loop(kind, tmp_path):
    n = 4
    ref = _parts(kind, tmp_path, "ref")
    torch.manual_seed(5)
    stats = {"loss": [], "grad_norm": [], "td_error": [], "q_mean": []}
    _reference_learn(*ref, n, 1.0, stats)
    parts = _parts(kind, tmp_path, "new")
    torch.manual_seed(5)
    learner = Learner(*parts, device="cpu", grad_clip=1.0)
    learner.update(n)
    for a, b in zip(ref[0].state_dict().values(), parts[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        ref[1].state_dict()["state"].values(), parts[1].state_dict()["state"].values(), strict=True
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert ref[3].counter == parts[3].counter == n % 3
    # the same priorities were written: the next draws are the same slots
    assert torch.equal(ref[2].sample()["index"], parts[2].sample()["index"])
    got = learner.stats()
    assert got["updates"] == n
    assert set(got) == {*stats, "updates"}
    for key, values in stats.items():
        assert got[key] == pytest.approx(sum(values) / n, rel=1e-5, abs=1e-6), key
    if kind == "rise":
        assert "gate_mean" in got
    for part in (ref, parts):
        part[2].close()


def test_stats_are_means_since_the_last_call(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0)
    assert learner.stats() == {}
    seen = []
    original = loss.forward

    def spy(td):
        out = original(td)
        seen.append(float(out["loss"]))
        return out

    loss.forward = spy
    learner._forward = spy
    learner.update(2)
    first = learner.stats()
    assert first["updates"] == 2 and first["loss"] == pytest.approx(sum(seen) / 2, rel=1e-6)
    learner.update(3)
    second = learner.stats()
    assert second["updates"] == 3 and second["loss"] == pytest.approx(sum(seen[2:]) / 3, rel=1e-6)
    assert learner.stats() == {} and learner.updates == 5
    learner.update(0)
    assert learner.stats() == {}
    with pytest.raises(ValueError, match="n_updates"):
        learner.update(-1)
    rb.close()


def test_log_every_logs_the_running_means(tmp_path, caplog):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0, log_every=2)
    with caplog.at_level("INFO", logger="torchrl_rise.training.learner"):
        learner.update(3)
    lines = [r.getMessage() for r in caplog.records if "update" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("update 2: loss ")
    assert learner.stats()["updates"] == 3  # logging does not reset the means
    rb.close()


def test_network_on_another_device_is_named(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    with pytest.raises(DeviceMismatchError, match=r"runs on meta.*on cpu: loss parameter"):
        Learner(loss, opt, rb, updater, device="meta", grad_clip=10.0)
    rb.close()


def test_optimizer_state_on_another_device_is_named(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0)
    learner.update(1)
    state = next(iter(opt.state.values()))
    state["exp_avg"] = state["exp_avg"].to("meta")
    with pytest.raises(DeviceMismatchError, match=r"on meta: optimizer state 'exp_avg'"):
        learner.update(1)
    rb.close()


def test_batch_on_another_device_is_named(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0)
    batch = rb.sample()
    batch = TensorDict({"pixels": batch["pixels"], "action": batch["action"].to("meta")}, [8])
    with pytest.raises(DeviceMismatchError, match=r"on meta: batch entry 'action'"):
        learner.check_devices(batch)
    learner.check_devices(rb.sample())
    rb.close()


def test_bad_arguments(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    with pytest.raises(ValueError, match="grad_clip"):
        Learner(loss, opt, rb, updater, device="cpu", grad_clip=0.0)
    with pytest.raises(ValueError, match="log_every"):
        Learner(loss, opt, rb, updater, device="cpu", grad_clip=1.0, log_every=-1)
    with pytest.raises(TypeError, match="sample"):
        Learner(loss, opt, object(), updater, device="cpu", grad_clip=1.0)
    with pytest.raises(TypeError, match="step"):
        Learner(loss, opt, rb, object(), device="cpu", grad_clip=1.0)
    rb.close()


def test_bf16_option(tmp_path):
    loss, opt, rb, updater = _parts("btr", tmp_path, "rb")
    assert Learner(loss, opt, rb, updater, device="cpu", grad_clip=1.0).bf16 is False
    assert loss.autocast_dtype is None  # CPU: only if asked
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=1.0, bf16=True)
    assert learner.bf16 and loss.autocast_dtype is torch.bfloat16
    learner.update(1)
    assert math.isfinite(learner.stats()["loss"])
    assert Learner(loss, opt, rb, updater, device="cpu", grad_clip=1.0).bf16  # kept as set
    Learner(loss, opt, rb, updater, device="cpu", grad_clip=1.0, bf16=False)
    assert loss.autocast_dtype is None
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="autocast_dtype"):
        Learner(
            plain,
            torch.optim.Adam(plain.parameters()),
            rb,
            None,
            device="cpu",
            grad_clip=1.0,
            bf16=True,
        )
    rb.close()


def test_build_learner_optimizer_is_fused_on_cuda_only():
    net = torch.nn.Linear(2, 2)
    assert not build_learner_optimizer(net, lr=1e-4, eps=1e-5).defaults["fused"]
    assert build_learner_optimizer(net, lr=1e-4, eps=1e-5, device="cuda:0").defaults["fused"]
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_learner_optimizer(frozen, lr=1e-4, eps=1e-5)


def test_loss_forward_on_fake_cuda_tensors(tmp_path):
    """The forward pass on (fake) CUDA tensors: no tensor of the loss or network lands elsewhere.

    ``FakeTensorMode`` propagates devices without a GPU, so a tensor made without ``device=``
    inside the loss would meet the CUDA ones and raise here, and a host read of a device tensor
    (``.item()``, ``torch.equal``...) raises ``DataDependentOutputException``. The backward pass
    and the LSTM of ``rise`` need a real CUDA runtime, so they are checked by tests/test_gpu.py
    (the rise window's host check: the test below).
    """
    kind = "btr"
    from torch._subclasses.fake_tensor import FakeTensorMode

    rb = _replay(kind, tmp_path, "rb")
    batch = rb.sample()
    rb.close()
    cuda = torch.device("cuda", 0)
    net = _net(kind)
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = net.to(cuda)
        loss = IQNLoss(net)
        td = batch.to(cuda)
        out = loss(td)
        assert out["loss"].device == cuda and td["td_error"].device == cuda
        # torch's wording changes ("...on the same device..." in 2.15, "Unhandled FakeTensor
        # Device Propagation ... found two different devices cpu, cuda:0" in 2.11): both name them
        with pytest.raises(RuntimeError, match=r"cpu.*cuda:0|cuda:0.*cpu"):
            loss(batch.clone())  # a batch left on the CPU


def test_rise_window_check_reads_no_device_tensor():
    """The rise window's suffix check runs on CPU tensors only (a device sync otherwise)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from torchrl_rise.modules.context import left_align_window

    mask = torch.tensor([[False, True, True], [True, True, True]])
    window = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="suffix"):
        left_align_window(window, ~mask)
    cuda = torch.device("cuda", 0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        rolled, lengths = left_align_window(window.to(cuda), mask.to(cuda))
        assert rolled.device == cuda and lengths.device == cuda
