"""Context-window replay: each env step stored once on a TorchRL ``LazyMemmapStorage``; frame stacks,
n-step returns and embedding windows assembled at sample time (see ``docs/replay.md``)."""

from __future__ import annotations

from torchrl_rise.replay.buffer import InsufficientDiskSpaceError, RiseReplayBuffer
from torchrl_rise.replay.sampler import ReadinessSampler

__all__ = ["InsufficientDiskSpaceError", "ReadinessSampler", "RiseReplayBuffer"]
