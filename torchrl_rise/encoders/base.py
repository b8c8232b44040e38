"""The frozen-encoder interface, its input preprocessing, and the name -> encoder registry.

A :class:`FrozenEncoder` maps a (stack of) observation frame(s) to one embedding vector. It owns its
input handling (:class:`PixelPreprocessor`: which frame of the stack, grayscale -> RGB, resize,
scaling, ImageNet normalisation, channels-first or -last, any leading batch dims), never tracks
gradients, and stays in eval mode whatever its parent module does. Encoders are built by name with
:func:`make_encoder`; :func:`available_encoders` lists the names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FrozenEncoder",
    "PixelFormatError",
    "PixelPreprocessor",
    "available_encoders",
    "check_weight_free",
    "make_encoder",
    "register_encoder",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: float pixels may exceed ``[0, 1]`` by this much (interpolation rounding) before they are refused
FLOAT_RANGE_TOLERANCE = 0.01
#: on an accelerator, the value range of float pixels is checked on this many first batches only
#: (each check is one host sync); on the CPU every batch is checked
ACCELERATOR_RANGE_CHECKS = 8


class PixelFormatError(ValueError):
    """Pixels whose layout or value range does not match what the encoder was built for."""


def _as_size(size: int | Sequence[int] | None, *, what: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{what} must be a positive int or a (height, width) pair, got {size!r}.")
    return size  # type: ignore[return-value]


class PixelPreprocessor(nn.Module):
    """Turns raw observation pixels into the float image batch an encoder consumes.

    Steps, in order: move channels first (if ``channels_last``), pick one frame of the stack
    (``frame_index``), scale (uint8 ``/ 255``; floating input is taken to be in ``[0, 1]``, TorchRL's
    ``ToTensorImage`` convention), area-resize (bilinear when upsampling), replicate a grayscale
    frame to 3 channels (``to_rgb``), ImageNet-normalise.

    Input contract (checked by :meth:`select`, with a :class:`PixelFormatError` naming the fix):
    the layout must match ``channels_last`` (an image narrower than 5 pixels, or with at least as
    many channels as pixels on its longer side, is taken as the other layout and refused), and
    float pixels must lie in ``[0, 1]`` (up to ``FLOAT_RANGE_TOLERANCE``). The shape and dtype are
    checked on every batch; the value range on every CPU batch and on the first
    ``ACCELERATOR_RANGE_CHECKS`` batches on an accelerator (one host sync each, none after). The
    range is not checked with ``convert=False`` (the module scales its own input).

    Args:
        frame_channels: channels ``C`` of one frame; the observation holds ``S * C`` channels.
        frame_index: which frame of the stack to keep (``-1``: the newest, stacks are oldest first);
            ``None`` keeps the whole stack.
        channels_last: the observation is ``[..., H, W, S * C]`` instead of ``[..., S * C, H, W]``.
        to_rgb: replicate a 1-channel frame to 3 channels (for ImageNet models).
        resize: output ``(height, width)`` (or one int for both); ``None`` keeps the input size.
        imagenet_normalize: subtract the ImageNet mean and divide by its std (3 channels needed).
        convert: when ``False`` only the frame selection and the channels-first move are applied
            and the dtype is kept (for modules that do their own scaling, see ``online``).

    Example:
        >>> pre = PixelPreprocessor(frame_channels=1, to_rgb=True, resize=42, imagenet_normalize=True)
        >>> pixels = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
        >>> pre(pixels).shape
        torch.Size([5, 3, 42, 42])
    """

    def __init__(
        self,
        *,
        frame_channels: int = 1,
        frame_index: int | None = -1,
        channels_last: bool = False,
        to_rgb: bool = False,
        resize: int | Sequence[int] | None = None,
        imagenet_normalize: bool = False,
        convert: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(frame_channels, int) or frame_channels < 1:
            raise ValueError(f"frame_channels must be a positive int, got {frame_channels!r}.")
        if frame_index is not None and not isinstance(frame_index, int):
            raise TypeError(f"frame_index must be an int or None, got {frame_index!r}.")
        if to_rgb and frame_channels != 1:
            raise ValueError(
                f"to_rgb replicates a grayscale frame to 3 channels, but frame_channels="
                f"{frame_channels}; pass frame_channels=1 for grayscale frames or to_rgb=False."
            )
        out_channels = 3 if to_rgb else frame_channels
        if imagenet_normalize and (frame_index is None or out_channels != 3):
            raise ValueError(
                "imagenet_normalize needs one 3-channel frame: use frame_channels=3 (RGB) or "
                "frame_channels=1 with to_rgb=True, and an int frame_index."
            )
        self.frame_channels = frame_channels
        self.frame_index = frame_index
        self.channels_last = bool(channels_last)
        self.to_rgb = bool(to_rgb)
        self.resize = _as_size(resize, what="resize")
        self.imagenet_normalize = bool(imagenet_normalize)
        self.convert = bool(convert)
        if not self.convert and (self.to_rgb or self.resize or self.imagenet_normalize):
            raise ValueError("convert=False keeps the raw pixels: to_rgb/resize/normalize need it.")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self._accelerator_range_checks = 0

    def output_channels(self, stacked_channels: int | None = None) -> int:
        """Channels of the preprocessed image (``stacked_channels`` needed if ``frame_index=None``)."""
        if self.frame_index is None:
            if stacked_channels is None:
                raise ValueError("frame_index=None keeps the stack: pass stacked_channels.")
            return stacked_channels
        return 3 if self.to_rgb else self.frame_channels

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocess ``[B, S*C, H, W]`` (or ``[B, H, W, S*C]``) pixels into ``[B, c, h, w]``."""
        return self.convert_frames(self.select(pixels))

    def select(self, pixels: torch.Tensor) -> torch.Tensor:
        """The first, dtype-preserving step: channels first and the selected frame, ``[B, c, H, W]``.

        Cheap and copy-free (a view); :class:`FrozenEncoder` runs it where the pixels are, so only
        the selected uint8 frame travels to the encoder's device.
        """
        if pixels.ndim != 4:
            raise ValueError(f"expected a [B, S*C, H, W] batch, got shape {tuple(pixels.shape)}.")
        if pixels.dtype != torch.uint8 and not pixels.is_floating_point():
            raise TypeError(
                f"pixels must be uint8 (0..255) or floating point (0..1), got {pixels.dtype}; "
                "convert them first (e.g. with TorchRL's ToTensorImage)."
            )
        self.check_layout(pixels.shape[1:])
        x = pixels.permute(0, 3, 1, 2) if self.channels_last else pixels
        channels = x.shape[1]
        if self.frame_index is not None:
            n_frames = channels // self.frame_channels
            if not -n_frames <= self.frame_index < n_frames:
                raise IndexError(
                    f"frame_index={self.frame_index} is out of range for a stack of {n_frames} "
                    f"frame(s) of {self.frame_channels} channel(s)."
                )
            start = (self.frame_index % n_frames) * self.frame_channels
            x = x[:, start : start + self.frame_channels]
        self._check_range(x)
        return x

    def check_layout(self, shape: Sequence[int]) -> None:
        """Refuse one observation's ``shape`` (3 dims) if it does not fit the configured layout.

        Raises:
            PixelFormatError: the channels are not a multiple of ``frame_channels``, or the shape
                looks like the other layout (channels-last without ``channels_last=True``, or the
                reverse), with the option that fixes it.

        Example:
            >>> pre = PixelPreprocessor(frame_channels=3)
            >>> pre.check_layout((12, 84, 84))  # four RGB frames, channels first: fine
            >>> try:
            ...     pre.check_layout((84, 84, 3))
            ... except PixelFormatError as err:
            ...     print(str(err)[:46])
            pixels of shape (84, 84, 3) look channels-last
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3:
            raise PixelFormatError(f"expected one [S*C, H, W] image stack, got shape {shape}.")
        if self.channels_last:
            h, w, channels = shape
            layout, flag = "[..., H, W, S*C]", "channels_last=True"
        else:
            channels, h, w = shape
            layout, flag = "[..., S*C, H, W]", "channels_last=False"
        if min(h, w) <= 4 < channels or channels >= max(h, w) > 4:
            other = "channels-first" if self.channels_last else "channels-last"
            fix = (
                "pass channels_last=False (config: drop encoder.kwargs.channels_last), or permute "
                "the pixels to channels-last"
                if self.channels_last
                else "pass channels_last=True (config: encoder.kwargs.channels_last=true), or "
                "move the channels first (TorchRL's ToTensorImage)"
            )
            raise PixelFormatError(
                f"pixels of shape {shape} look {other}: with {flag} the encoder reads them as "
                f"{layout}, i.e. {channels // self.frame_channels or channels} frame(s) of "
                f"{h}x{w} pixels; {fix}."
            )
        if channels % self.frame_channels:
            raise PixelFormatError(
                f"the observation has {channels} channels, not a multiple of frame_channels="
                f"{self.frame_channels} (expected layout {layout}; set channels_last=True for "
                "channels-last images, or fix frame_channels)."
            )

    def _check_range(self, x: torch.Tensor) -> None:
        """Refuse float frames outside ``[0, 1]`` (see the class docstring for when it runs)."""
        if not self.convert or not x.is_floating_point() or x.numel() == 0:
            return
        if x.device.type != "cpu":
            if self._accelerator_range_checks >= ACCELERATOR_RANGE_CHECKS:
                return
            self._accelerator_range_checks += 1
        low, high = (float(v) for v in torch.aminmax(x))
        if low < -FLOAT_RANGE_TOLERANCE or high > 1.0 + FLOAT_RANGE_TOLERANCE:
            hint = "divide them by 255" if high > 2.0 else "clamp or rescale them to [0, 1]"
            raise PixelFormatError(
                f"float pixels must lie in [0, 1] (TorchRL's ToTensorImage convention), got values "
                f"in [{low:g}, {high:g}]: {hint} (ToTensorImage(from_int=True) does), or pass the "
                "uint8 frames (0..255) unchanged, which the encoder scales itself."
            )

    def convert_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The second step, on the encoder's device: scale, resize, to RGB, normalise."""
        if not self.convert:
            return x
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            h, w = x.shape[-2:]
            down = self.resize[0] <= h and self.resize[1] <= w
            x = F.interpolate(
                x, size=self.resize, mode="area" if down else "bilinear", align_corners=None
            )
        if self.to_rgb:
            x = x.expand(-1, 3, -1, -1)
        if self.imagenet_normalize:
            x = (x - self.mean) / self.std
        return x.contiguous()

    def describe(self) -> dict[str, Any]:
        """The input options, for configs."""
        return {
            "frame_channels": self.frame_channels,
            "frame_index": self.frame_index,
            "channels_last": self.channels_last,
            "to_rgb": self.to_rgb,
            "resize": list(self.resize) if self.resize else None,
            "imagenet_normalize": self.imagenet_normalize,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items())


class FrozenEncoder(nn.Module):
    """Base class of the frozen observation encoders.

    Subclasses implement :meth:`encode` (a preprocessed float batch ``[B, c, h, w]`` -> ``[B, D]``).
    :meth:`forward` accepts uint8 or float pixels with any leading batch dims, moves only the
    selected frame to the encoder's device, runs the preprocessing and the encoder there without
    autograd (``torch.inference_mode``) in chunks of ``chunk_size``, and returns float32 (or
    ``out_dtype``) ``[..., D]`` on the input's device.

    The encoder's own parameters are frozen (``requires_grad=False``) and it stays in eval mode:
    ``train()`` is a no-op, so putting a parent module in training mode does not change BatchNorm
    statistics.

    Args:
        name: registry name.
        embedding_dim: size ``D`` of the embedding.
        weights_source: the weights actually used (recorded in run configs).
        preprocessor: the input preprocessing.
        chunk_size: largest batch pushed through the network at once (bounds memory when embedding
            a whole replay buffer); ``None`` for no limit.

    Example:
        >>> from torchrl_rise.encoders import make_encoder
        >>> enc = make_encoder("downsample", size=8)
        >>> enc(torch.zeros(2, 3, 4, 84, 84, dtype=torch.uint8)).shape
        torch.Size([2, 3, 64])
    """

    #: whether users of the encoder (``RiseContextTransform``) move it to the data's device
    follows_data_device: bool = True
    #: run the network under ``torch.inference_mode()`` (else ``torch.no_grad()``)
    use_inference_mode: bool = True

    def __init__(
        self,
        *,
        name: str,
        embedding_dim: int,
        weights_source: str,
        preprocessor: PixelPreprocessor,
        chunk_size: int | None = 1024,
    ) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}.")
        self.name = name
        self.embedding_dim = int(embedding_dim)
        self.weights_source = weights_source
        self.preprocessor = preprocessor
        self.chunk_size = chunk_size
        self._extra_description: dict[str, Any] = {}

    def freeze(self) -> FrozenEncoder:
        """Set ``requires_grad=False`` on every parameter and switch to eval mode."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen encoders stay in eval mode: ``train(True)`` is ignored."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's tensors (CPU when it has none)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a preprocessed ``[B, c, h, w]`` batch into ``[B, D]``."""
        raise NotImplementedError

    def forward(
        self, pixels: torch.Tensor, *, out_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Embed ``[..., S*C, H, W]`` (or ``[..., H, W, S*C]``) pixels into ``[..., D]``.

        The selected frame is cut out where the pixels are (uint8 stays uint8), moved once to the
        encoder's device, converted and encoded there in one batch (or chunks of ``chunk_size``),
        cast there to ``out_dtype`` (float32 by default), and only the embedding comes back to the
        pixels' device. The network runs under ``torch.inference_mode()``; the returned tensor is
        an ordinary one (usable in autograd graphs downstream), with ``requires_grad=False``.
        """
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of pixels, got {type(pixels).__name__}.")
        if pixels.ndim < 3:
            raise ValueError(
                f"pixels must have at least 3 dims ([..., S*C, H, W]), got shape "
                f"{tuple(pixels.shape)}."
            )
        out_dtype = torch.float32 if out_dtype is None else out_dtype
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        device = self.device
        out_device = pixels.device
        outs = []
        grad_context = torch.inference_mode if self.use_inference_mode else torch.no_grad
        with grad_context():
            step = self.chunk_size or max(flat.shape[0], 1)
            for start in range(0, flat.shape[0], step):
                frames = self.preprocessor.select(flat[start : start + step])
                frames = frames.to(device, non_blocking=True)
                emb = self.encode(self.preprocessor.convert_frames(frames))
                if emb.ndim != 2 or emb.shape[-1] != self.embedding_dim:
                    raise RuntimeError(
                        f"encoder {self.name!r} returned shape {tuple(emb.shape)}, expected "
                        f"[{frames.shape[0]}, {self.embedding_dim}]."
                    )
                outs.append(emb.to(out_dtype))
            if outs:
                out = torch.cat(outs) if len(outs) > 1 else outs[0]
            else:
                out = torch.zeros(0, self.embedding_dim, device=device, dtype=out_dtype)
        out = out.to(out_device)  # outside inference mode: a copy to another device is ordinary
        if out.is_inference():
            out = out.clone()  # an ordinary tensor: callers may save it for backward
        return out.reshape(*lead, self.embedding_dim)

    def describe(self) -> dict[str, Any]:
        """What a run config should record: name, weights actually used, size, input options."""
        return {
            "name": self.name,
            "weights": self.weights_source,
            "embedding_dim": self.embedding_dim,
            **self._extra_description,
            **self.preprocessor.describe(),
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embedding_dim={self.embedding_dim}, weights={self.weights_source!r}"


_REGISTRY: dict[str, Callable[..., FrozenEncoder]] = {}


def register_encoder(
    name: str,
) -> Callable[[Callable[..., FrozenEncoder]], Callable[..., FrozenEncoder]]:
    """Decorator registering ``factory(**options) -> FrozenEncoder`` under ``name``.

    Example:
        >>> sorted(available_encoders())[:2]
        ['downsample', 'efficientnet_b0']
    """

    def decorator(factory: Callable[..., FrozenEncoder]) -> Callable[..., FrozenEncoder]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"an encoder named {name!r} is already registered.")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_encoders() -> list[str]:
    """Names accepted by :func:`make_encoder`."""
    return sorted(_REGISTRY)


def make_encoder(name: str = "resnet18", **options: Any) -> FrozenEncoder:
    """Build a frozen encoder by name.

    Common keyword options (each encoder documents its own extras): ``weights`` (``"auto"``,
    ``"imagenet"``, ``"random"`` or a state-dict path for the ImageNet models), ``frame_channels``,
    ``frame_index``, ``channels_last``, ``resize``, ``imagenet_normalize``, ``seed``,
    ``chunk_size``.

    Args:
        name: one of :func:`available_encoders`.
        **options: forwarded to the encoder's factory.

    Returns:
        A :class:`FrozenEncoder` with known ``embedding_dim`` and ``weights_source``.

    Example:
        >>> enc = make_encoder("random_projection", embedding_dim=32, size=16, seed=0)
        >>> enc.embedding_dim, enc.weights_source
        (32, 'random_projection(seed=0)')
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown encoder {name!r}; available: {', '.join(available_encoders())}."
        ) from None
    try:
        return factory(**options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"make_encoder({name!r}, ...): {err}.") from err
        raise


def check_weight_free(name: str, weights: str | None) -> None:
    """Weight-free encoders accept ``weights`` of ``None``/``"auto"``/``"random"``/``"none"`` only.

    Lets a config pass the same ``weights`` option to every encoder while still rejecting an
    explicit request (``"imagenet"``, a file) that a weight-free encoder cannot honour.
    """
    if weights not in (None, "auto", "random", "none"):
        raise ValueError(
            f"encoder {name!r} has no pretrained weights to load (weights={weights!r}); "
            "use weights='auto' (or leave it out), or pick 'resnet18'/'efficientnet_b0'."
        )
