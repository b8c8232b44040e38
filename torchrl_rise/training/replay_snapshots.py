"""The trainer's replay snapshots: its own chunk store only, consecutive checkpoints disjoint.

A run's checkpoints dump the replay buffer into one chunk store, ``<run>/checkpoints/
replay_chunks/`` (:meth:`~torchrl_rise.replay.RiseReplayBuffer.dumps`). Two rules on top of the
buffer's own snapshot format (docs/training.md, "Replay snapshots"):

- Self-contained run directory: a resume reads the chunks from *this* run's store only, whatever
  store the checkpoint's manifest names (a run directory copied or moved as a whole reads its
  own chunks; a chunk missing there makes that checkpoint damaged, it is never read from the
  directory the run was copied from). A manifest naming another store is logged.
- Redundancy: with ``checkpoint.keep >= 2`` a dump shares no chunk file with the previous one
  (``share_with_previous=False``), so one damaged chunk file makes at most one of two
  consecutive checkpoints unusable and ``resume=true`` falls back to the other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["dump_replay", "load_replay"]

logger = logging.getLogger(__name__)


def dump_replay(
    replay: Any, path: Path, *, chunk_store: Path | None, redundant: bool
) -> dict[str, int] | None:
    """Dump ``replay`` into ``path`` (its chunks into ``chunk_store`` when given).

    Args:
        replay: the run's replay buffer (a :class:`~torchrl_rise.replay.RiseReplayBuffer` or
            its :class:`~torchrl_rise.replay.SequenceReplayBuffer`).
        path: the checkpoint's ``replay/`` folder.
        chunk_store: the run's chunk store, or ``None`` for a self-contained dump.
        redundant: share no chunk file with the previous dump (when the buffer supports it).
    """
    if chunk_store is None:
        return replay.dumps(path)
    return replay.dumps(path, chunk_store=chunk_store, share_with_previous=not redundant)


def load_replay(replay: Any, path: Path, *, chunk_store: Path | None) -> None:
    """Load the dump at ``path`` into ``replay``, reading chunks from ``chunk_store`` only.

    Raises:
        CheckpointCorruptError: a file is missing, truncated or damaged; the message names it
            (a chunk file: ``<run>/checkpoints/replay_chunks/chunk<i>-<id>.bin``).
    """
    if chunk_store is None:
        replay.loads(path)
        return
    from torchrl_rise.replay import snapshot

    manifest = snapshot.read_manifest(path)
    named = manifest.get("chunk_store")
    if named is not None:
        where = snapshot.normalized(Path(path).absolute() / named)
        if where != snapshot.normalized(chunk_store):
            logger.warning(
                "replay snapshot %s names the chunk store %s, not this run's %s: reading its "
                "chunks from this run's store only (a run never reads another run's chunks)",
                path,
                where,
                chunk_store,
            )
    replay.loads(path, chunk_store=chunk_store)
