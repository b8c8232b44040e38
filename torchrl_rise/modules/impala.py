"""BTR's IMPALA CNN: three conv -> max-pool -> 2 residual-block stages, adaptive max-pool to 6x6."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = ["ImpalaCNN"]


def _conv(c_in: int, c_out: int, *, spectral: bool) -> nn.Module:
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
    return _spectral_norm(conv) if spectral else conv


class _Residual(nn.Module):
    def __init__(self, channels: int, *, spectral: bool) -> None:
        super().__init__()
        self.conv_0 = _conv(channels, channels, spectral=spectral)
        self.conv_1 = _conv(channels, channels, spectral=spectral)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_0(torch.relu(x))
        y = self.conv_1(torch.relu(y))
        return x + y


class _Stage(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, *, spectral: bool, norm_shape: Sequence[int] | None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(list(norm_shape)) if norm_shape is not None else nn.Identity()
        self.res_0 = _Residual(c_out, spectral=spectral)
        self.res_1 = _Residual(c_out, spectral=spectral)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.pool(self.conv(x)))
        return self.res_1(self.res_0(x))


def _pooled_size(size: int) -> int:
    # MaxPool2d(3, stride 2, padding 1)
    return (size + 2 - 3) // 2 + 1


class ImpalaCNN(nn.Module):
    """The IMPALA CNN of BTR (Clark et al., 2024), "large" variant with a width scale.

    Channels ``(16, 32, 32) * width_scale``; each stage is conv3x3 -> max-pool(3, 2, pad 1) ->
    two residual blocks (ReLU -> conv -> ReLU -> conv, skip); a final ReLU; then an adaptive max-pool
    to ``pool_size x pool_size``. Spectral norm is applied to the residual convs, as in BTR. With
    ``layer_norm=True`` a LayerNorm over ``[C, H, W]`` follows each stage's stem (conv + pool), BTR's
    later option.

    Input: uint8 pixels in ``[0, 255]`` (scaled by 1/255 here) or floats already in ``[0, 1]``,
    shape ``[B, C, H, W]``. :meth:`feature_map` returns the map before the adaptive pool,
    :meth:`pool` flattens the pooled map to ``[B, out_features]``.

    Args:
        in_channels: input channels (``S * C`` for ``S`` stacked frames of ``C`` channels).

    Keyword Args:
        frame_size: ``(H, W)`` of the input; needed to size the LayerNorms and the pre-pool map.
        width_scale: channel multiplier (BTR: 2 -> 32, 64, 64 channels).
        spectral_norm: spectral norm on the residual convs (BTR: True).
        layer_norm: LayerNorm after each stage's stem.
        pool_size: side of the adaptive max-pool (BTR: 6).

    Example:
        >>> import torch
        >>> cnn = ImpalaCNN(4, frame_size=(84, 84))
        >>> cnn.out_features, cnn.map_shape
        (2304, (64, 11, 11))
        >>> cnn(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape
        torch.Size([2, 2304])
    """

    def __init__(
        self,
        in_channels: int,
        *,
        frame_size: Sequence[int] = (84, 84),
        width_scale: float = 2,
        spectral_norm: bool = True,
        layer_norm: bool = False,
        pool_size: int = 6,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        if len(frame_size) != 2 or min(frame_size) < 1:
            raise ValueError(f"frame_size must be (H, W) with positive sizes, got {frame_size}.")
        if width_scale <= 0 or pool_size < 1:
            raise ValueError(
                f"width_scale must be > 0 and pool_size >= 1, got {width_scale}, {pool_size}."
            )
        channels = [int(16 * width_scale), int(32 * width_scale), int(32 * width_scale)]
        h, w = (int(s) for s in frame_size)
        stages = []
        c_in = in_channels
        for c_out in channels:
            h, w = _pooled_size(h), _pooled_size(w)
            stages.append(
                _Stage(
                    c_in,
                    c_out,
                    spectral=spectral_norm,
                    norm_shape=(c_out, h, w) if layer_norm else None,
                )
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.adaptive_pool = nn.AdaptiveMaxPool2d((pool_size, pool_size))
        self.in_channels = in_channels
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.map_shape: tuple[int, int, int] = (c_in, h, w)
        self.pool_size = pool_size
        self.out_features = c_in * pool_size * pool_size
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> ImpalaCNN:
        """Store conv weights and run inputs in channels-last layout (faster with bf16 on CPU)."""
        self.channels_last = enabled
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.to(memory_format=fmt)
        return self

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` pixels -> ReLU'd feature map ``[B, *map_shape]`` (before the pool)."""
        if pixels.shape[-3] != self.in_channels or tuple(pixels.shape[-2:]) != self.frame_size:
            raise ValueError(
                f"ImpalaCNN expects pixels [..., {self.in_channels}, {self.frame_size[0]}, "
                f"{self.frame_size[1]}], got {tuple(pixels.shape)}; check in_channels (= frames "
                "stacked x channels) and frame_size."
            )
        x = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.relu(self.stages(x))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Adaptive max-pool and flatten: ``[B, C, h, w]`` -> ``[B, out_features]``."""
        return self.adaptive_pool(feature_map).flatten(1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(pixels))
