"""The paper's cheap, weight-free encoders: ``downsample`` (raw pixels area-resized and flattened)
and ``random_projection`` (a fixed, seeded Gaussian projection of the downsampled pixels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from torchrl_rise.encoders.base import (
    FrozenEncoder,
    PixelPreprocessor,
    _as_size,
    check_weight_free,
    register_encoder,
)

__all__ = ["DownsampleEncoder", "RandomProjectionEncoder"]


class DownsampleEncoder(FrozenEncoder):
    """Raw pixels of one frame, area-resized to ``size`` and flattened: ``D = C * h * w``.

    Values are in ``[0, 1]`` (ImageNet-normalised only if asked, for RGB frames).

    Example:
        >>> from torchrl_rise.encoders import make_encoder
        >>> enc = make_encoder("downsample", size=(8, 8), frame_channels=1)
        >>> enc(torch.full((4, 84, 84), 255, dtype=torch.uint8))[:3]
        tensor([1., 1., 1.])
    """

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


class RandomProjectionEncoder(FrozenEncoder):
    """A fixed Gaussian random projection of the downsampled frame, pixels mapped to ``[-1, 1]``.

    The ``[C * h * w, D]`` matrix has i.i.d. ``N(0, 1 / D)`` entries drawn from a generator seeded
    with ``seed`` (Johnson-Lindenstrauss scaling: norms are preserved in expectation); it is a
    buffer, so it moves with ``.to()`` and is saved in the state dict.

    Example:
        >>> from torchrl_rise.encoders import make_encoder
        >>> a = make_encoder("random_projection", embedding_dim=16, seed=3)
        >>> b = make_encoder("random_projection", embedding_dim=16, seed=3)
        >>> x = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
        >>> torch.equal(a(x), b(x))
        True
    """

    projection: torch.Tensor

    def __init__(self, *, in_features: int, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(in_features, self.embedding_dim, generator=generator)
        self.register_buffer("projection", projection / math.sqrt(self.embedding_dim))
        self.freeze()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1) * 2.0 - 1.0) @ self.projection


def _pixel_preprocessor(
    name: str,
    *,
    frame_channels: int,
    frame_index: int,
    channels_last: bool,
    size: int | Sequence[int],
    imagenet_normalize: bool | None,
) -> tuple[PixelPreprocessor, int]:
    hw = _as_size(size, what=f"{name} size")
    if hw is None:
        raise ValueError(f"{name} needs a size, e.g. size=16 or size=(16, 16).")
    if not isinstance(frame_index, int):
        raise TypeError(f"{name} encodes one frame of the stack: frame_index must be an int.")
    pre = PixelPreprocessor(
        frame_channels=frame_channels,
        frame_index=frame_index,
        channels_last=channels_last,
        resize=hw,
        imagenet_normalize=bool(imagenet_normalize),
    )
    return pre, frame_channels * hw[0] * hw[1]


@register_encoder("downsample")
def make_downsample(
    *,
    size: int | Sequence[int] = 16,
    frame_channels: int = 1,
    frame_index: int = -1,
    channels_last: bool = False,
    imagenet_normalize: bool | None = None,
    resize: int | Sequence[int] | None = None,
    weights: str | None = None,
    seed: int | None = None,
    chunk_size: int | None = 1024,
) -> DownsampleEncoder:
    """Raw pixels area-resized to ``size`` (``resize`` is an alias) and flattened.

    ``weights`` and ``seed`` are accepted so one config can drive every encoder; there are no
    weights to load (``weights`` must be ``None``/``"auto"``/``"random"``/``"none"``).
    """
    check_weight_free("downsample", weights)
    del seed  # deterministic, nothing to seed
    pre, dim = _pixel_preprocessor(
        "downsample",
        frame_channels=frame_channels,
        frame_index=frame_index,
        channels_last=channels_last,
        size=resize if resize is not None else size,
        imagenet_normalize=imagenet_normalize,
    )
    encoder = DownsampleEncoder(
        name="downsample",
        embedding_dim=dim,
        weights_source="none (raw pixels)",
        preprocessor=pre,
        chunk_size=chunk_size,
    )
    return encoder.freeze()


@register_encoder("random_projection")
def make_random_projection(
    *,
    embedding_dim: int = 512,
    size: int | Sequence[int] = 16,
    frame_channels: int = 1,
    frame_index: int = -1,
    channels_last: bool = False,
    imagenet_normalize: bool | None = None,
    resize: int | Sequence[int] | None = None,
    weights: str | None = None,
    seed: int = 0,
    chunk_size: int | None = 1024,
) -> RandomProjectionEncoder:
    """A seeded Gaussian projection (``embedding_dim`` outputs) of pixels downsampled to ``size``."""
    check_weight_free("random_projection", weights)
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be positive, got {embedding_dim}.")
    pre, in_features = _pixel_preprocessor(
        "random_projection",
        frame_channels=frame_channels,
        frame_index=frame_index,
        channels_last=channels_last,
        size=resize if resize is not None else size,
        imagenet_normalize=imagenet_normalize,
    )
    encoder = RandomProjectionEncoder(
        in_features=in_features,
        seed=seed,
        name="random_projection",
        embedding_dim=embedding_dim,
        weights_source=f"random_projection(seed={seed})",
        preprocessor=pre,
        chunk_size=chunk_size,
    )
    encoder._extra_description = {"seed": seed, "size": list(pre.resize or ())}
    return encoder
