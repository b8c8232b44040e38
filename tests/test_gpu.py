"""The GPU checks, each run twice: on ``cuda`` (marker ``gpu``) and on the ``cpu`` stand-in.

The ``device`` fixture gives every test a ``cuda`` case, marked ``gpu`` and skipped with the reason
where torch sees no CUDA device, and a ``cpu`` case that always runs: the same code with the CPU in
CUDA's place, so a GPU test cannot break unseen in the default suite (only what needs CUDA itself,
the host-sync debug mode and fused Adam, is checked on ``cuda`` alone). ``make gpu-check``
(scripts/gpu_check.py) runs the ``cuda`` cases (``-m gpu``) with ``CUDA_VISIBLE_DEVICES`` set
(tests/conftest.py hides the GPUs otherwise). Sizes are tiny: each case is seconds, each training
run well under 2 minutes on a GPU.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "cpu"])
def device(request) -> torch.device:
    """``cuda:0`` (marked ``gpu``: skipped without CUDA) or the ``cpu`` stand-in."""
    return torch.device("cuda", 0) if request.param == "cuda" else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_tree_kwargs() -> dict:
    """The replay option selecting the pure-torch sum tree, where the replay has it.

    On the GPU machine torchrl's C++ extension (its segment trees) is built for another torch.
    """
    from torchrl_rise.replay import RiseReplayBuffer

    return {"tree": "torch"} if "tree" in inspect.signature(RiseReplayBuffer).parameters else {}


def torch_tree_overrides() -> list[str]:
    return [f"++replay.kwargs.{k}={v}" for k, v in torch_tree_kwargs().items()]


def _replay(tmp_path, k: int, *, hw: int = 16, num_actions: int = 3):
    from torchrl_rise.replay import RiseReplayBuffer

    rb = RiseReplayBuffer(
        256,
        2,
        frame_shape=(1, hw, hw),
        embedding_dim=8,
        context_length=k,
        batch_size=16,
        seed=0,
        scratch_dir=tmp_path / "rb",
        **torch_tree_kwargs(),
    )
    T = 40
    td = {
        "pixels": torch.randint(0, 255, (2, T, 4, hw, hw), dtype=torch.uint8),
        "action": torch.randint(0, num_actions, (2, T)),
        ("next", "reward"): torch.randn(2, T, 1),
        ("next", "terminated"): torch.rand(2, T, 1) < 0.05,
        ("next", "truncated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ("next", "pixels"): torch.randint(0, 255, (2, T, 4, hw, hw), dtype=torch.uint8),
    }
    if k:
        td["rise_embedding"] = torch.randn(2, T, 8).half()
        td[("next", "rise_embedding")] = torch.randn(2, T, 8).half()
    rb.extend(TensorDict(td, batch_size=[2, T]))
    return rb


def test_encoder_transform_on_device(device):
    from torchrl_rise.encoders import make_encoder
    from torchrl_rise.transforms import RiseContextTransform

    pixels = torch.randint(0, 255, (6, 4, 84, 84), dtype=torch.uint8)
    cpu = make_encoder("resnet18", weights="random", seed=0)
    encoder = make_encoder("resnet18", weights="random", seed=0).to(device)
    transform = RiseContextTransform(encoder, encoder_device=device)
    out = transform(TensorDict({"pixels": pixels}, [6]))
    emb = out["rise_embedding"]
    assert emb.device.type == "cpu" and emb.shape == (6, 512)  # back on the data's device
    torch.testing.assert_close(emb.float(), cpu(pixels).half().float(), atol=2e-2, rtol=2e-2)


def test_replay_gathers_to_device(device, tmp_path):
    rb = _replay(tmp_path, 4)
    batch = rb.sample()
    moved = batch.to(device, non_blocking=True)
    synchronize(device)
    for key, value in batch.items(True, True):
        assert moved.get(key).device == device
        assert torch.equal(moved.get(key).cpu(), value), key
    moved["td_error"] = torch.rand(16, device=device)
    rb.update_tensordict_priority(moved)
    rb.close()


@pytest.mark.parametrize("kind", ["btr", "rise"])
def test_learner_on_device_makes_no_host_sync(kind, device, tmp_path):
    from torchrl_rise.modules import make_q_network
    from torchrl_rise.objectives import HardTargetUpdate, IQNLoss
    from torchrl_rise.training.learner import Learner, build_learner_optimizer

    cuda = device.type == "cuda"
    k = 4 if kind == "rise" else 0
    net = make_q_network(
        kind,
        num_actions=3,
        in_channels=4,
        frame_size=(16, 16),
        embedding_dim=8,
        context_length=k or None,
        width_scale=0.25,
        mlp_hidden=16,
    ).to(device)
    loss = IQNLoss(net)
    opt = build_learner_optimizer(loss, lr=1e-4, eps=1.95e-5, device=device)
    assert opt.defaults["fused"] == cuda
    rb = _replay(tmp_path, k)
    learner = Learner(
        loss, opt, rb, HardTargetUpdate(loss, interval=2), device=device.type, grad_clip=10
    )
    if cuda:
        assert learner.bf16 == torch.cuda.is_bf16_supported()
    before = [p.detach().clone() for p in learner.params]
    learner.update(2)  # warm-up: cuBLAS/cuDNN handles, pinned buffer
    synchronize(device)
    if cuda:  # the host-sync debug mode exists on CUDA only
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            learner.update(3)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs
    stats = learner.stats()
    assert stats["updates"] == 5 and all(math.isfinite(v) for v in stats.values()), stats
    if kind == "rise":
        assert "gate_mean" in stats
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.params, strict=True))
    rb.close()


def test_device_mix_up_is_named(device, tmp_path):
    from torchrl_rise.modules import make_q_network
    from torchrl_rise.objectives import IQNLoss
    from torchrl_rise.training.learner import DeviceMismatchError, Learner

    net = make_q_network("btr", num_actions=3, in_channels=4, frame_size=(16, 16), width_scale=0.25)
    loss = IQNLoss(net)  # left on the CPU
    rb = _replay(tmp_path, 0)
    learner_device = "meta" if device.type == "cpu" else device.type  # not where the loss is
    with pytest.raises(DeviceMismatchError, match="on cpu: loss parameter"):
        Learner(
            loss, torch.optim.Adam(loss.parameters()), rb, None, device=learner_device, grad_clip=1
        )
    rb.close()


def _atari_cfg(tmp_path, method: str, device: torch.device, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="atari",
            overrides=[
                "preset=tiny",
                f"method={method}",
                f"logging.root={tmp_path}",
                "env.frame_size=42",
                "env.max_episode_frames=400",
                f"device={device.type}",
                *torch_tree_overrides(),
                *overrides,
            ],
        )


@pytest.mark.atari
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["btr", "rise"])
def test_short_atari_training_run_on_device(method, device, tmp_path):
    from torchrl_rise.training import Trainer

    trainer = Trainer(_atari_cfg(tmp_path, method, device, "total_frames=1024"))
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["updates"] > 0
    assert all(p.device.type == device.type for p in trainer.components.loss.parameters())


@pytest.mark.atari
@pytest.mark.timeout(120)
def test_resume_on_device(device, tmp_path):
    from torchrl_rise.training import Trainer

    first = Trainer(_atari_cfg(tmp_path, "rise", device, "total_frames=1024"))
    first.run()
    more = Trainer(_atari_cfg(tmp_path, "rise", device, "total_frames=2048", "resume=true"))
    summary = more.run()
    assert more.run_dir == first.run_dir and summary["status"] == "finished"
    assert summary["updates"] > first.counters.updates
    state = more.components.optimizer.state
    assert state and all(
        v.device.type == device.type for s in state.values() for k, v in s.items() if k != "step"
    )
