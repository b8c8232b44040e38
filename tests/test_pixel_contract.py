"""The encoders' input contract: float pixels in [0, 1], the layout that channels_last says."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import Bounded, Composite, Unbounded

from torchrl_rise.encoders import PixelFormatError, make_encoder
from torchrl_rise.encoders.base import ACCELERATOR_RANGE_CHECKS
from torchrl_rise.transforms import RiseContextTransform

ENCODERS = {
    "downsample": dict(size=8),
    "random_projection": dict(embedding_dim=16, size=8),
    "resnet18": dict(weights="random", seed=0),
}


def _uint8(*shape: int) -> torch.Tensor:
    return torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_float_frames_in_0_255_are_refused_with_the_fix(name: str) -> None:
    enc = make_encoder(name, **ENCODERS[name])
    with pytest.raises(
        PixelFormatError, match=r"\[0, 1\].*got values in \[\d+, 25\d\]: divide them by 255"
    ):
        enc(_uint8(2, 4, 36, 36).float())


def test_slightly_out_of_range_float_frames_are_refused_with_rescale_hint() -> None:
    enc = make_encoder("downsample", size=4)
    with pytest.raises(PixelFormatError, match=r"clamp or rescale them to \[0, 1\]"):
        enc(torch.full((1, 8, 8), 1.5))
    with pytest.raises(PixelFormatError, match=r"got values in \[-0.5, "):
        enc(torch.full((1, 8, 8), -0.5))


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_valid_float_and_uint8_frames_give_the_same_embedding(name: str) -> None:
    enc = make_encoder(name, **ENCODERS[name])
    x = _uint8(3, 4, 36, 36)
    ref = enc(x)
    torch.testing.assert_close(enc(x.float() / 255), ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(enc(x.half() / 255), ref, rtol=2e-2, atol=2e-2)
    # within the tolerance: interpolation rounding at the edges of [0, 1] is accepted
    assert enc((x.float() / 255 * 1.005).clamp(min=-0.005)).shape == ref.shape


@pytest.mark.parametrize("frame_channels, frames", [(3, 28), (1, 84)])
def test_channels_last_frames_without_channels_last_are_refused(
    frame_channels: int, frames: int
) -> None:
    enc = make_encoder("resnet18", weights="random", frame_channels=frame_channels)
    pixels = _uint8(2, 84, 84, 3)
    with pytest.raises(
        PixelFormatError,
        match=rf"\(84, 84, 3\) look channels-last.*{frames} frame\(s\) of 84x3 .*"
        r"pass channels_last=True \(config: encoder.kwargs.channels_last=true\)",
    ):
        enc(pixels)


def test_channels_first_frames_with_channels_last_are_refused() -> None:
    for shape in [(4, 84, 84), (12, 84, 84), (3, 210, 160)]:
        enc = make_encoder("downsample", size=8, channels_last=True, frame_channels=1)
        with pytest.raises(PixelFormatError, match=r"look channels-first.*channels_last=False"):
            enc(_uint8(*shape))


def test_channels_last_frames_with_channels_last_match_channels_first() -> None:
    cf = make_encoder("downsample", size=8, frame_channels=3)
    cl = make_encoder("downsample", size=8, frame_channels=3, channels_last=True)
    x = _uint8(2, 6, 84, 84)  # two RGB frames, channels first
    torch.testing.assert_close(cl(x.permute(0, 2, 3, 1)), cf(x))
    torch.testing.assert_close(cl(x.permute(0, 2, 3, 1).float() / 255), cf(x))
    # odd but legal shapes pass: small frames, many-frame stacks of wide frames
    assert cf(_uint8(3, 4, 4)).shape == (3 * 8 * 8,)
    assert make_encoder("downsample", size=4)(_uint8(16, 24, 32)).shape == (16,)


def test_context_transform_refuses_bad_pixel_specs_when_the_env_is_built() -> None:
    t = RiseContextTransform(make_encoder("downsample", size=4), context_length=2)
    ok = Composite(pixels=Bounded(0, 255, shape=(4, 84, 84), dtype=torch.uint8))
    assert t.transform_observation_spec(ok)["rise_embedding"].shape == (16,)
    ok = Composite(pixels=Bounded(0.0, 1.0, shape=(4, 84, 84), dtype=torch.float32))
    assert t.transform_observation_spec(ok)["rise_embedding"].shape == (16,)
    ok = Composite(pixels=Unbounded(shape=(4, 84, 84), dtype=torch.float32))
    assert t.transform_observation_spec(ok)["rise_embedding"].shape == (16,)
    float255 = Composite(pixels=Bounded(0.0, 255.0, shape=(4, 84, 84), dtype=torch.float32))
    with pytest.raises(PixelFormatError, match=r"values up to 255.*divide them by 255"):
        t.transform_observation_spec(float255)
    last = Composite(pixels=Bounded(0, 255, shape=(84, 84, 3), dtype=torch.uint8))
    with pytest.raises(
        PixelFormatError, match=r"'pixels' \(from the observation spec\).*channels_last=True"
    ):
        t.transform_observation_spec(last)


def test_context_transform_refuses_float_0_255_pixels_at_reset_and_step() -> None:
    from tensordict import TensorDict

    t = RiseContextTransform(make_encoder("downsample", size=4))
    bad = TensorDict({"pixels": _uint8(5, 4, 16, 16).float()}, [5])
    with pytest.raises(PixelFormatError, match="divide them by 255"):
        t(bad)  # replay-buffer mode
    with pytest.raises(PixelFormatError, match="divide them by 255"):
        t._call(bad)


def test_online_encoder_without_conversion_skips_the_range_check() -> None:
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    enc = make_encoder("online", module=cnn, embedding_dim=3)
    assert enc(_uint8(2, 4, 8, 8).float()).shape == (2, 3)  # its module scales its own input
    with pytest.raises(PixelFormatError, match="channels-last"):
        enc(_uint8(2, 84, 84, 3).float())


@pytest.mark.gpu
def test_on_a_gpu_the_range_is_checked_on_the_first_batches_only() -> None:
    enc = make_encoder("downsample", size=4).to("cuda")
    good = _uint8(2, 4, 16, 16).cuda().float() / 255
    for _ in range(ACCELERATOR_RANGE_CHECKS - 1):
        enc(good)
    with pytest.raises(PixelFormatError, match="divide them by 255"):
        enc(good * 255)  # the last checked batch
    enc = make_encoder("downsample", size=4).to("cuda")
    for _ in range(ACCELERATOR_RANGE_CHECKS):
        enc(good)
    assert enc(good * 255).shape == (2, 16)  # no host sync per step after the first batches
