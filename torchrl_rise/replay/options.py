"""The options of a context-window replay, validated once and shared by its roles.

:class:`ReplayOptions` holds every constructor argument of
:class:`~torchrl_rise.replay.RiseReplayBuffer` (the same names and defaults) plus what follows from
them (the lane size, whether embeddings are stored, the normalized keys). The storage, writer,
readiness, sampler and assembler roles each read the part they need.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.replay import snapshot

__all__ = ["KEY_OPTIONS", "ReplayOptions", "as_key", "next_key"]

logger = logging.getLogger(__name__)

# The options that name a tensordict key (normalized by ReplayOptions).
KEY_OPTIONS = (
    "pixels_key",
    "action_key",
    "reward_key",
    "terminated_key",
    "truncated_key",
    "done_key",
    "context_key",
    "context_mask_key",
    "priority_key",
)


def as_key(key: NestedKey) -> NestedKey:
    """``key`` as a string or a tuple of at least two strings."""
    if isinstance(key, str):
        return key
    key = tuple(key)
    return key[0] if len(key) == 1 else key


def as_tuple(key: NestedKey) -> tuple[str, ...]:
    """``key`` as a tuple of strings."""
    return (key,) if isinstance(key, str) else tuple(key)


def next_key(key: NestedKey) -> tuple[str, ...]:
    """``key`` under ``"next"``."""
    return ("next", *as_tuple(key))


@dataclasses.dataclass
class ReplayOptions:
    """Every option of the context-window replay (see :class:`~torchrl_rise.replay.
    RiseReplayBuffer` for their meaning), validated; derived values set after validation.

    Example:
        >>> options = ReplayOptions(64, 2, frame_shape=(1, 8, 8), context_length=5)
        >>> options.lane_capacity, options.use_embeddings
        (32, True)
    """

    capacity: int
    num_envs: int = 1
    frame_shape: Any = (1, 84, 84)
    frame_stack: int = 4
    embedding_dim: int = 512
    context_length: int = 80
    n_step: int = 3
    gamma: float = 0.997
    prioritized: bool = True
    alpha: float = 0.2
    beta: float = 0.4
    eps: float = 1e-6
    importance_weights: str = "btr"
    stratified: bool = True
    max_priority_floor: float = 1.0
    batch_size: int = 256
    scratch_dir: str | Path | None = None
    embedding_dtype: torch.dtype = torch.float16
    reward_clip: float | None = None
    pixels_key: NestedKey = keys.PIXELS
    embedding_key: NestedKey | None = keys.EMBEDDING
    action_key: NestedKey = keys.ACTION
    reward_key: NestedKey = keys.REWARD
    terminated_key: NestedKey = keys.TERMINATED
    truncated_key: NestedKey = keys.TRUNCATED
    done_key: NestedKey = keys.DONE
    context_key: NestedKey = keys.CONTEXT
    context_mask_key: NestedKey = keys.CONTEXT_MASK
    priority_key: NestedKey = keys.PRIORITY
    seed: int | None = None
    check_disk: bool = True
    chunk_records: int = snapshot.DEFAULT_CHUNK_RECORDS
    tree: str = "auto"
    storage_device: str | torch.device | None = None
    device_frames: bool = True
    reuse_output: bool = False
    pin_memory: bool = False

    def __post_init__(self) -> None:
        self.frame_shape = tuple(int(x) for x in self.frame_shape)
        self._check_values()
        self.lane_capacity = self.capacity // self.num_envs
        min_lane = self.n_step + self.frame_stack + 1
        if self.lane_capacity < min_lane:
            raise ValueError(
                f"capacity={self.capacity} over num_envs={self.num_envs} leaves "
                f"{self.lane_capacity} records per env; at least n_step + frame_stack + 1 = "
                f"{min_lane} are needed. Raise capacity to at least {min_lane * self.num_envs}."
            )
        if self.capacity % self.num_envs:
            logger.warning(
                "capacity %d is not a multiple of num_envs %d: %d records are left unused.",
                self.capacity,
                self.num_envs,
                self.capacity % self.num_envs,
            )
        self.capacity = self.lane_capacity * self.num_envs
        self.use_embeddings = self.context_length > 0 and self.embedding_key is not None
        self.context_length = self.context_length if self.use_embeddings else 0
        self.embedding_dim = int(self.embedding_dim)
        if self.use_embeddings and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}.")
        self.gamma = float(self.gamma)
        self.prioritized = bool(self.prioritized)
        for name in KEY_OPTIONS:
            setattr(self, name, as_key(getattr(self, name)))
        if self.embedding_key is not None:
            self.embedding_key = as_key(self.embedding_key)
        if self.storage_device is not None:
            self.storage_device = torch.device(self.storage_device)

    def _check_values(self) -> None:
        if len(self.frame_shape) != 3 or min(self.frame_shape) < 1:
            raise ValueError(
                f"frame_shape must be (C, H, W) with positive sizes, got {self.frame_shape}."
            )
        for name, low in (
            ("capacity", 1),
            ("num_envs", 1),
            ("frame_stack", 1),
            ("n_step", 1),
            ("context_length", 0),
            ("batch_size", 1),
            ("chunk_records", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.prioritized and self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}.")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}.")
        if self.eps <= 0:
            raise ValueError(
                f"eps must be > 0 (a zero priority must stay sampleable), got {self.eps}."
            )
        if self.reward_clip is not None and self.reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive or None, got {self.reward_clip}.")

    @property
    def embedding_spec(self) -> tuple[torch.dtype, int] | None:
        """``(dtype, dim)`` of the stored embeddings, ``None`` when none are stored."""
        return (self.embedding_dtype, self.embedding_dim) if self.use_embeddings else None

    @property
    def device_names(self) -> tuple[str, ...]:
        """The fields kept in ``storage_device`` tensors instead of the memmap."""
        if self.storage_device is None:
            return ()
        names = ["embedding"] if self.use_embeddings else []
        return tuple(names + (["frame"] if self.device_frames else []))
