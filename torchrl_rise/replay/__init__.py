"""Context-window replay: each env step stored once on a TorchRL ``LazyMemmapStorage``; frame stacks,
n-step returns and embedding windows assembled at sample time; crash-safe, incremental snapshots
(see ``docs/replay.md``)."""

from __future__ import annotations

from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.replay.buffer import (
    InsufficientDiskSpaceError,
    RiseReplayBuffer,
    ScratchInUseError,
)
from torchrl_rise.replay.sampler import ReadinessSampler
from torchrl_rise.replay.sequence import SequenceReplayBuffer
from torchrl_rise.replay.snapshot import prune_chunk_store

__all__ = [
    "CheckpointCorruptError",
    "InsufficientDiskSpaceError",
    "ReadinessSampler",
    "RiseReplayBuffer",
    "ScratchInUseError",
    "SequenceReplayBuffer",
    "prune_chunk_store",
]
