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
from torchrl_rise.replay.prefetch import Prefetcher
from torchrl_rise.replay.sampler import ReadinessSampler
from torchrl_rise.replay.sequence import SequenceReplayBuffer
from torchrl_rise.replay.snapshot import prune_chunk_store
from torchrl_rise.replay.sum_tree import TorchMinTree, TorchSumTree

__all__ = [
    "CheckpointCorruptError",
    "InsufficientDiskSpaceError",
    "Prefetcher",
    "ReadinessSampler",
    "RiseReplayBuffer",
    "ScratchInUseError",
    "SequenceReplayBuffer",
    "TorchMinTree",
    "TorchSumTree",
    "prune_chunk_store",
]
