"""The snapshot role: a replay's dump and load, chunk by chunk, with a CRC manifest.

:class:`ReplaySnapshotter` cuts the storage into chunks of ``chunk_records`` slots (one immutable
file each), tracks which chunks were written since the last dump into a chunk store
(:class:`~torchrl_rise.replay.snapshot.ChunkLedger`, for incremental dumps), and writes the small
state (cursors, readiness, RNG) and the sampler's trees beside them; the manifest, written last,
lists every file with its size and CRC-32. The file-level helpers live in
:mod:`torchrl_rise.replay.snapshot`.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchrl_rise._fileio import write_atomic
from torchrl_rise.replay import snapshot
from torchrl_rise.replay.sampler import ReadinessSampler
from torchrl_rise.replay.storage import StepStorage

__all__ = ["ReplaySnapshotter"]

logger = logging.getLogger(__name__)


class ReplaySnapshotter:
    """Dumps and loads a step storage, its sampler and a buffer's small state.

    Args:
        storage: the records.
        sampler: the priority trees (dumped beside the chunks).
        chunk_records: slots per chunk file.

    Example:
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> rb = RiseReplayBuffer(32, frame_shape=(1, 2, 2), context_length=0, chunk_records=8)
        >>> len(rb.snapshotter.chunk_bounds)  # 32 records and the pad record
        5
        >>> rb.close()
    """

    def __init__(self, storage: StepStorage, sampler: ReadinessSampler, chunk_records: int) -> None:
        self.storage = storage
        self.sampler = sampler
        self.chunk_records = chunk_records
        self.num_records = storage.capacity + 1
        self.chunk_bounds = snapshot.chunk_bounds(self.num_records, chunk_records)
        self.ledger = snapshot.ChunkLedger(len(self.chunk_bounds))

    def mark(self, index: torch.Tensor) -> None:
        """The slots ``index`` were written to."""
        self.ledger.mark(index // self.chunk_records)

    def field_list(self) -> list[dict[str, Any]]:
        """The stored fields as the manifest lists them."""
        return [
            {"name": name, "dtype": str(dtype), "shape": list(shape)}
            for name, (dtype, shape) in self.storage.specs.items()
        ]

    def _write_chunks(
        self, root: Path, store: Path | None, share_with_previous: bool, stats: dict[str, int]
    ) -> list[dict[str, Any]]:
        """Write (or refer to) every chunk; returns the manifest's chunk entries."""
        chunks: list[dict[str, Any]] = []
        root.mkdir(parents=True, exist_ok=True)
        fields = self.storage.snapshot_fields()
        reusable = (
            [None] * len(self.chunk_bounds)
            if store is None
            else self.ledger.reusable(store, share_with_previous=share_with_previous)
        )
        for i, (start, end) in enumerate(self.chunk_bounds):
            ref = reusable[i]
            if ref is not None:
                try:
                    snapshot.check_size(root / ref["file"], ref)
                except snapshot.CheckpointCorruptError as err:
                    logger.warning("%s Writing that chunk again.", err)
                    ref = None
            if ref is not None:
                chunks.append(ref)
                stats["bytes_reused"] += ref["size"]
                stats["files_reused"] += 1
                continue
            name = snapshot.new_name(f"chunk{i:06d}", ".bin")
            desc = snapshot.write_chunk(root / name, fields, start, end)
            chunks.append({"file": name, **_count(stats, desc)})
        return chunks

    def dumps(
        self,
        path: Path,
        *,
        state: dict[str, Any],
        config: dict[str, Any],
        chunk_store: str | Path | None,
        share_with_previous: bool,
    ) -> dict[str, int]:
        """Checkpoint everything needed to resume: contents, cursors, episodes, priorities, RNG.

        The storage is cut into chunks of :attr:`chunk_records` slots, one file each. Without
        ``chunk_store`` they are written inside ``path`` (a self-contained dump). With one, only
        the chunks written to since the previous dump into that store (or since it
        loaded a dump that uses it) are written there, as new immutable files; the dump refers to
        the store's files for the others. ``path`` receives a manifest (every file the dump needs,
        with its size and CRC-32; written last, so a dump without it is incomplete) and the small
        state. Dumping again into the same ``path`` replaces the dump atomically. Remove the
        store files no kept dump needs with :func:`~torchrl_rise.replay.prune_chunk_store`.

        Args:
            path: the dump directory (created if missing).

        Keyword Args:
            state: the buffer's small state (cursors, readiness, RNG), saved with ``torch.save``.
            config: the layout a buffer must have to load the dump.
            chunk_store: a directory shared by the dumps of one run (created if missing); it may
                be anywhere, the manifest refers to it by its path relative to ``path`` only (a
                directory holding both, copied or moved as a whole, stays loadable).
            share_with_previous: with ``False``, this dump refers to no chunk file the previous
                dump into ``chunk_store`` refers to (it writes those chunks again, or refers to
                the dump before the previous one's): consecutive dumps share no file, so one
                damaged chunk file costs at most one of them (:class:`~torchrl_rise.replay.
                snapshot.ChunkLedger`).

        Returns:
            ``{"bytes_written", "bytes_reused", "files_written", "files_reused"}``: what this
            dump wrote (chunks, state, manifest) and the chunk files it refers to unchanged.
        """
        path.mkdir(parents=True, exist_ok=True)
        token = snapshot.new_token()
        stats = {"bytes_written": 0, "bytes_reused": 0, "files_written": 0, "files_reused": 0}
        store = None if chunk_store is None else snapshot.normalized(chunk_store)
        root = path / snapshot.CHUNK_DIR if store is None else store
        chunks = []
        if self.storage.initialized:
            chunks = self._write_chunks(root, store, share_with_previous, stats)
        state_name = f"state-{token}.pt"
        state_desc = _count(stats, write_atomic(path / state_name, lambda f: torch.save(state, f)))
        sampler_name = f"sampler-{token}/sampler.pt"
        sampler = _count(stats, self.sampler.dumps(path / f"sampler-{token}"))
        manifest = {
            "format": snapshot.FORMAT,
            "version": snapshot.VERSION,
            "config": config,
            "fields": self.field_list(),
            "num_records": self.num_records,
            "chunk_records": self.chunk_records,
            "storage_initialized": bool(self.storage.initialized),
            "chunk_store": None if store is None else snapshot.relative_store(store, path),
            "chunks": chunks,
            "state": {"file": state_name, **state_desc},
            "sampler": {"file": sampler_name, **sampler},
        }
        _count(stats, snapshot.write_manifest(path, manifest))
        snapshot.remove_stale(path, snapshot.manifest_files(path, manifest))
        if store is not None:
            self.ledger.committed(store, chunks)
        return stats

    def _check_layout(self, path: Path, manifest: dict[str, Any], config: dict[str, Any]) -> None:
        mine, theirs = config, manifest["config"]
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in mine if mine[k] != theirs.get(k)}
            raise ValueError(
                "The checkpoint was written by a buffer with a different layout "
                f"(checkpoint vs this buffer): {json.dumps(diff, default=str)}. Build the buffer "
                f"with the checkpoint's settings."
            )
        fields_want = self.field_list()
        if manifest["fields"] != fields_want or manifest["num_records"] != self.num_records:
            raise ValueError(
                f"The checkpoint's stored fields {manifest['fields']} ({manifest['num_records']} "
                f"records) differ from this buffer's {fields_want} ({self.num_records})."
            )

    def loads(
        self,
        path: Path,
        *,
        config: dict[str, Any],
        chunk_store: str | Path | None,
        initialize: Callable[[], None],
        reset: Callable[[], None],
    ) -> dict[str, Any]:
        """Restore a dump written by :meth:`dumps` (self-contained or into a chunk store).

        Every file is checked against the manifest: all sizes before anything is read, checksums
        while the chunks are copied into this buffer's ``scratch_dir`` (checkpoint files are only
        ever opened read-only). Afterwards the buffer knows which chunk files hold its contents,
        so its next dump into the same store is incremental.

        Args:
            path: a dump directory.

        Keyword Args:
            config: the loading buffer's layout (the dump's must be the same).
            initialize: creates the storage when it does not exist yet.
            reset: empties the buffer when damage is found after the storage was partly
                overwritten.
            chunk_store: read the chunks from this store (e.g. the run's own; by default the
                store the manifest names relative to ``path``, see
                :func:`~torchrl_rise.replay.snapshot.chunk_root`).

        Returns:
            The dump's small state.

        Raises:
            FileNotFoundError: ``path`` holds no complete dump.
            ValueError: the dump was written by a buffer with another layout.
            CheckpointCorruptError: a file is missing, truncated or damaged (the message names
                it). Missing files and wrong sizes are found before anything changes; damage
                found while the chunks are copied leaves the buffer empty.
        """
        manifest = snapshot.read_manifest(path)
        self._check_layout(path, manifest, config)
        root = snapshot.chunk_root(path, manifest, chunk_store=chunk_store)
        chunks = manifest["chunks"]
        bounds = snapshot.chunk_bounds(manifest["num_records"], manifest["chunk_records"])
        if manifest["storage_initialized"] and len(chunks) != len(bounds):
            raise snapshot.CheckpointCorruptError(
                f"{path / snapshot.MANIFEST} lists {len(chunks)} chunks, its layout needs "
                f"{len(bounds)}."
            )
        state_file = path / manifest["state"]["file"]
        sampler_file = path / manifest["sampler"]["file"]
        # Sizes first: a truncated or padded file fails before a byte is read.
        for file, want in (
            (state_file, manifest["state"]),
            (sampler_file, manifest["sampler"]),
            *((root / c["file"], c) for c in chunks),
        ):
            snapshot.check_size(file, want)
        # weights_only: the state is tensors and plain containers; nothing in it can run code.
        state = torch.load(
            io.BytesIO(snapshot.read_verified(state_file, manifest["state"])), weights_only=True
        )
        sampler_data = snapshot.read_verified(sampler_file, manifest["sampler"])
        try:
            if manifest["storage_initialized"]:
                if not self.storage.initialized:
                    initialize()
                fields = self.storage.snapshot_fields()
                for (start, end), chunk in zip(bounds, chunks):
                    snapshot.read_chunk(root / chunk["file"], fields, start, end, chunk)
            self.sampler.loads(sampler_file.parent, data=sampler_data)
        except BaseException:
            reset()
            raise
        same_chunks = manifest["chunk_records"] == self.chunk_records
        if manifest["chunk_store"] is not None and same_chunks and manifest["storage_initialized"]:
            self.ledger.loaded(root, chunks)
        else:
            self.ledger.forget()
        return state


def _count(stats: dict[str, int], desc: dict[str, Any]) -> dict[str, Any]:
    """Count a written file (``desc`` has its ``size``) in ``stats``; returns ``desc``."""
    stats["bytes_written"] += desc["size"]
    stats["files_written"] += 1
    return desc
