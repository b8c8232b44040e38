"""RiseContextTransform: embed each observation once, at collection, and keep the rolling window of
the last ``K`` embeddings of the current episode that acting needs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase, unravel_key
from tensordict.utils import NestedKey
from torchrl.data import Binary, Composite, Unbounded
from torchrl.envs.transforms import Transform
from torchrl.envs.transforms.utils import _get_reset

from torchrl_rise import keys
from torchrl_rise.encoders.base import (
    FLOAT_RANGE_TOLERANCE,
    FrozenEncoder,
    PixelFormatError,
    PixelPreprocessor,
)

__all__ = ["RiseContextTransform"]

logger = logging.getLogger(__name__)


class RiseContextTransform(Transform):
    """Embeds the observation with a frozen encoder at reset and at every step.

    Writes the embedding ``[*batch, D]`` (``embedding_dtype``, float16 by default) to
    ``out_keys[0]``; the pixels stay. With ``context_length=K`` it also keeps, per env, the window
    of the last ``K`` embeddings of the current episode ending at this step (``[*batch, K, D]``,
    oldest first, invalid entries zero) and its validity mask (``[*batch, K]`` bool, valid entries
    a suffix), written to ``context_key`` and ``mask_key``. A reset (full, or partial through the
    env's ``"_reset"`` mask, as collectors and ``rollout(break_when_any_done=False)`` do) restarts
    the window of the envs being reset with their reset embedding; on a partial reset only those
    envs' observations are encoded.

    Where it runs:

    - on a single env, or on top of / inside ``SerialEnv``/``ParallelEnv`` (inside, each worker
      holds its own encoder copy; on top, one batched encoder call serves all envs);
    - on CPU or GPU: the encoder follows the data's device, unless ``device`` pins it (then pixels
      go there and embeddings come back);
    - as a replay-buffer transform: :meth:`forward` embeds ``in_keys`` and, when present,
      ``("next", in_key)``; no window there (e.g. to re-embed stored frames after changing
      encoder).

    Args:
        encoder: the frozen encoder (see :func:`torchrl_rise.encoders.make_encoder`).

    Keyword Args:
        in_keys: the pixels key, one entry (default ``["pixels"]``).
        out_keys: the embedding key, one entry (default ``["rise_embedding"]``).
        context_length: window length ``K``; ``None`` embeds only (no window, no mask).
        context_key: key of the window.
        mask_key: key of the window's validity mask.
        embedding_dtype: dtype of the stored embedding and window (a floating dtype).
        encoder_device: run the encoder there instead of on the data's device (e.g. a GPU encoder
            for CPU envs): each step only the newest uint8 frame of every env goes there, in one
            batch, and only the ``embedding_dtype`` embeddings come back to the data's device.
        reset_key: the partial-reset key; defaults to the parent env's only reset key.

    Example:
        >>> from torchrl.envs import GymEnv, TransformedEnv, Compose, ToTensorImage, Resize
        >>> from torchrl.envs import GrayScale, CatFrames
        >>> from torchrl_rise.encoders import make_encoder
        >>> env = TransformedEnv(
        ...     GymEnv("ALE/Pong-v5", frameskip=4, categorical_action_encoding=True),
        ...     Compose(
        ...         ToTensorImage(from_int=False, dtype=torch.uint8, shape_tolerant=True),
        ...         GrayScale(), Resize(84, 84), CatFrames(N=4, dim=-3),
        ...     ),
        ... )
        >>> encoder = make_encoder("downsample", size=16)
        >>> env.append_transform(RiseContextTransform(encoder, context_length=8))  # doctest: +ELLIPSIS
        TransformedEnv(...)
        >>> data = env.rollout(3)
        >>> data["rise_embedding"].shape, data["rise_context"].shape, data["rise_context_mask"][-1]
        (torch.Size([3, 256]), torch.Size([3, 8, 256]), tensor([False, False, False, False, False,  True,  True,  True]))
    """

    def __init__(
        self,
        encoder: FrozenEncoder,
        *,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        context_length: int | None = None,
        context_key: NestedKey = keys.CONTEXT,
        mask_key: NestedKey = keys.CONTEXT_MASK,
        embedding_dtype: torch.dtype = torch.float16,
        encoder_device: torch.device | str | None = None,
        reset_key: NestedKey | None = None,
    ) -> None:
        if not isinstance(encoder, torch.nn.Module) or not hasattr(encoder, "embedding_dim"):
            raise TypeError(
                "RiseContextTransform needs a FrozenEncoder (torchrl_rise.encoders.make_encoder), "
                f"got {type(encoder).__name__}."
            )
        in_keys = [keys.PIXELS] if in_keys is None else list(in_keys)
        out_keys = [keys.EMBEDDING] if out_keys is None else list(out_keys)
        if len(in_keys) != 1 or len(out_keys) != 1:
            raise ValueError(
                f"RiseContextTransform embeds one pixels key into one embedding key, got in_keys="
                f"{in_keys} and out_keys={out_keys}; use one transform per key (('next', key) "
                "entries are handled automatically in replay-buffer mode)."
            )
        if context_length is not None and (
            not isinstance(context_length, int) or context_length < 1
        ):
            raise ValueError(
                f"context_length must be a positive int or None, got {context_length!r}."
            )
        if not isinstance(embedding_dtype, torch.dtype) or not embedding_dtype.is_floating_point:
            raise TypeError(
                f"embedding_dtype must be a floating torch.dtype (e.g. torch.float16), got "
                f"{embedding_dtype!r}."
            )
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.encoder = encoder
        self.context_length = context_length
        self.context_key = unravel_key(context_key)
        self.mask_key = unravel_key(mask_key)
        self.embedding_dtype = embedding_dtype
        self.encoder_device = torch.device(encoder_device) if encoder_device is not None else None
        if (
            self.encoder_device is not None
            and not getattr(encoder, "follows_data_device", True)
            and encoder.device.type != self.encoder_device.type
        ):
            raise ValueError(
                f"encoder_device={str(self.encoder_device)!r}, but the {encoder.name!r} encoder "
                f"stays on {encoder.device} (it does not move: an int8 encoder runs on CPU only, "
                "the online encoder runs where the agent's module is). Leave encoder_device "
                "unset, or build an encoder that can move (e.g. precision='fp32' or 'bf16')."
            )
        self._reset_key = unravel_key(reset_key) if reset_key is not None else None
        # per-env state (plain attributes: not saved in state dicts, created at reset)
        self._last: torch.Tensor | None = None
        self._window: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    # ------------------------------------------------------------------ keys and state
    @property
    def embedding_dim(self) -> int:
        """Size ``D`` of one embedding."""
        return int(self.encoder.embedding_dim)

    @property
    def reset_key(self) -> NestedKey:
        """The partial-reset key read at reset (the parent env's only one, or ``"_reset"``)."""
        if self._reset_key is not None:
            return self._reset_key
        parent = self.parent
        reset_keys = list(parent.reset_keys) if parent is not None else []
        if len(reset_keys) > 1:
            raise RuntimeError(
                f"the env has several reset keys {reset_keys}; pass reset_key=... to "
                "RiseContextTransform to say which one restarts the window."
            )
        return reset_keys[0] if reset_keys else "_reset"

    def describe(self) -> dict[str, Any]:
        """Encoder description plus the window options, for run configs."""
        return {
            **self.encoder.describe(),
            "context_length": self.context_length,
            "embedding_dtype": str(self.embedding_dtype).replace("torch.", ""),
        }

    # ------------------------------------------------------------------ embedding
    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embedding of ``pixels`` ``[..., S*C, H, W]`` as ``embedding_dtype`` on their device."""
        target = self.encoder_device if self.encoder_device is not None else pixels.device
        if getattr(self.encoder, "follows_data_device", True) and self.encoder.device != target:
            self.encoder.to(target)
        # one batched call for every env: the newest uint8 frame goes to the encoder's device,
        # the embedding is cast to embedding_dtype there and only it comes back
        return self.encoder(pixels, out_dtype=self.embedding_dtype)

    def _get_pixels(self, tensordict: TensorDictBase) -> torch.Tensor | None:
        pixels = tensordict.get(self.in_keys[0], None)
        if pixels is None and not self.missing_tolerance:
            raise KeyError(
                f"{type(self).__name__}: no {self.in_keys[0]!r} entry in the tensordict (keys: "
                f"{sorted(map(str, tensordict.keys(True, True)))}); put the transform after the "
                "ones that produce the pixels, or set in_keys."
            )
        return pixels

    def _write(self, tensordict: TensorDictBase) -> TensorDictBase:
        # copies: whatever the caller does to its tensordict cannot reach the transform's state
        tensordict.set(self.out_keys[0], self._last.clone())
        if self.context_length is not None:
            tensordict.set(self.context_key, self._window.clone())
            tensordict.set(self.mask_key, self._mask.clone())
        return tensordict

    def _restart(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh windows holding only ``embedding`` (its last slot), with their masks."""
        k = self.context_length
        window = embedding.new_zeros(*embedding.shape[:-1], k, embedding.shape[-1])
        window[..., -1, :] = embedding
        mask = torch.zeros(*embedding.shape[:-1], k, dtype=torch.bool, device=embedding.device)
        mask[..., -1] = True
        return window, mask

    # ------------------------------------------------------------------ env hooks
    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        pixels = self._get_pixels(tensordict_reset)
        if pixels is None:
            return tensordict_reset
        batch = pixels.shape[:-3]
        reset = _get_reset(self.reset_key, tensordict)
        if reset.shape != batch:
            reset = reset.reshape(batch)
        state_ok = (
            self._last is not None
            and self._last.shape[:-1] == batch
            and self._last.device == pixels.device
        )
        if not state_ok or bool(reset.all()):
            # first reset, a new batch shape/device, or a full reset: encode every env
            self._last = self._embed(pixels)
            if self.context_length is not None:
                self._window, self._mask = self._restart(self._last)
        elif bool(reset.any()):
            # partial reset: encode only the envs being reset; the others keep their state
            reset = reset.to(pixels.device)
            last = self._last.clone()
            last[reset] = self._embed(pixels[reset])
            self._last = last
            if self.context_length is not None:
                fresh_window, fresh_mask = self._restart(last)
                self._window = torch.where(reset[..., None, None], fresh_window, self._window)
                self._mask = torch.where(reset[..., None], fresh_mask, self._mask)
        return self._write(tensordict_reset)

    def _reset_on_native_autoreset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        # the env reset itself inside step: restart the windows of the envs flagged in "_reset"
        return self._reset(tensordict, tensordict_reset)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        pixels = self._get_pixels(next_tensordict)
        if pixels is None:
            return next_tensordict
        embedding = self._embed(pixels)
        if self._last is None or self._last.shape != embedding.shape:
            raise RuntimeError(
                f"{type(self).__name__}: step before reset (or the batch shape changed from "
                f"{None if self._last is None else tuple(self._last.shape[:-1])} to "
                f"{tuple(embedding.shape[:-1])}); call env.reset() first."
            )
        self._last = embedding
        if self.context_length is not None:
            self._window = torch.cat([self._window[..., 1:, :], embedding.unsqueeze(-2)], dim=-2)
            self._mask = torch.cat(
                [self._mask[..., 1:], self._mask.new_ones(*self._mask.shape[:-1], 1)], dim=-1
            )
        return self._write(next_tensordict)

    # ------------------------------------------------------------------ replay-buffer mode
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Embed stored pixels: ``in_key`` and, when present, ``("next", in_key)``; no window.

        Example:
            >>> from tensordict import TensorDict
            >>> from torchrl_rise.encoders import make_encoder
            >>> t = RiseContextTransform(make_encoder("downsample", size=4))
            >>> px = torch.zeros(10, 1, 84, 84, dtype=torch.uint8)
            >>> td = t(TensorDict({"pixels": px, ("next", "pixels"): px}, [10]))
            >>> td["rise_embedding"].shape, td["next", "rise_embedding"].dtype
            (torch.Size([10, 16]), torch.float16)
        """
        in_key, out_key = self.in_keys[0], self.out_keys[0]
        pixels = self._get_pixels(tensordict)
        if pixels is not None:
            tensordict.set(out_key, self._embed(pixels))
        next_in = unravel_key(("next", in_key))
        next_pixels = tensordict.get(next_in, None)
        if next_pixels is not None:
            tensordict.set(unravel_key(("next", out_key)), self._embed(next_pixels))
        return tensordict

    # ------------------------------------------------------------------ specs
    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        in_key = self.in_keys[0]
        pixel_spec = observation_spec.get(in_key, None)
        if pixel_spec is None:
            raise KeyError(
                f"{type(self).__name__}: the observation spec has no {in_key!r} entry (it has "
                f"{sorted(map(str, observation_spec.keys(True, True)))}); place the transform after "
                "the ones producing the pixels, or set in_keys."
            )
        batch = observation_spec.shape
        obs_shape = pixel_spec.shape[len(batch) :]
        if len(obs_shape) != 3:
            raise ValueError(
                f"{in_key!r} must be one image stack per env ([S*C, H, W] or [H, W, S*C]), got "
                f"shape {tuple(obs_shape)} after the batch dims {tuple(batch)}."
            )
        _check_pixel_spec(
            pixel_spec, obs_shape, getattr(self.encoder, "preprocessor", None), in_key
        )
        device = pixel_spec.device
        d = self.embedding_dim
        observation_spec[self.out_keys[0]] = Unbounded(
            shape=(*batch, d), dtype=self.embedding_dtype, device=device
        )
        if self.context_length is not None:
            k = self.context_length
            observation_spec[self.context_key] = Unbounded(
                shape=(*batch, k, d), dtype=self.embedding_dtype, device=device
            )
            observation_spec[self.mask_key] = Binary(
                n=k, shape=(*batch, k), dtype=torch.bool, device=device
            )
        return observation_spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(encoder={self.encoder.name!r}, embedding_dim="
            f"{self.embedding_dim}, in_keys={self.in_keys}, out_keys={self.out_keys}, "
            f"context_length={self.context_length}, embedding_dtype={self.embedding_dtype})"
        )


def _check_pixel_spec(
    spec: Any, obs_shape: Sequence[int], pre: PixelPreprocessor | None, in_key: NestedKey
) -> None:
    """Refuse, when the env is built, pixels whose spec cannot fit the encoder's input contract.

    The layout must match the preprocessor's ``frame_channels``/``channels_last``, and a float
    spec must not declare values above 1 (e.g. uint8 pixels cast to float without ``/ 255``).
    """
    if pre is None:
        return
    channels = obs_shape[-1] if pre.channels_last else obs_shape[0]
    if channels % pre.frame_channels:
        raise PixelFormatError(
            f"{in_key!r} has {channels} channels, not a multiple of the encoder's "
            f"frame_channels={pre.frame_channels} (1 for grayscale, 3 for RGB frames)."
        )
    try:
        pre.check_layout(obs_shape)
    except PixelFormatError as err:
        raise PixelFormatError(f"{in_key!r} (from the observation spec): {err}") from None
    high = getattr(spec, "high", None)
    if (
        pre.convert
        and spec.dtype.is_floating_point
        and isinstance(high, torch.Tensor)
        and high.numel()
        and float(high.max()) > 1.0 + FLOAT_RANGE_TOLERANCE
    ):
        raise PixelFormatError(
            f"{in_key!r} is a float spec with values up to {float(high.max()):g}, but float "
            "pixels must lie in [0, 1] (TorchRL's ToTensorImage convention): divide them by 255 "
            "(ToTensorImage(from_int=True) does), or keep the uint8 frames, which the encoder "
            "scales itself."
        )
