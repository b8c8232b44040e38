"""Replay snapshots: the storage cut into immutable chunk files, a manifest, and a chunk store.

A *dump* is a directory holding ``rise_replay_manifest.json`` (written last, atomically: a dump
without it is incomplete), the small state (cursors, episode bookkeeping, readiness, RNG) and the
sampler's trees. The storage itself (every field's memmap, the all-zero pad record included) is cut
into chunks of ``chunk_records`` consecutive slots; chunk ``i`` is one file holding, field after
field in manifest order, the raw bytes of slots ``[i * chunk_records, (i + 1) * chunk_records)``.

Chunk files live either inside the dump (``<dump>/chunks/``: a self-contained dump) or in a shared
*chunk store*, a flat directory of immutable files with unique names. A dump into a store writes the
chunks written to since the buffer's previous dump into that store and references the others, so a
checkpoint's replay part costs what changed. The manifest lists every file the dump needs with its
size and CRC-32; loads check sizes before reading anything and checksums while copying.
:func:`prune_chunk_store` deletes the store files no kept dump references (chunks of deleted
checkpoints, leftovers of a dump that crashed half-way, temporary files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchrl_rise._fileio import (
    CHECKSUM,
    CheckpointCorruptError,
    Checksum,
    check_file_size,
    write_atomic,
)

__all__ = ["DEFAULT_CHUNK_RECORDS", "MANIFEST", "prune_chunk_store"]

logger = logging.getLogger(__name__)

MANIFEST = "rise_replay_manifest.json"
FORMAT = "rise_replay_snapshot"
VERSION = 2
# 1024 records: 8.3 MB per chunk file at the Atari layout (84x84 frame + 512-d fp16 embedding).
# Smaller chunks track the written slots more tightly (64 env lanes each dirty one partial chunk
# at both ends of what they wrote) at the cost of more files per dump.
DEFAULT_CHUNK_RECORDS = 1024
CHUNK_DIR = "chunks"
_REQUIRED = {
    "version",
    "config",
    "fields",
    "num_records",
    "chunk_records",
    "storage_initialized",
    "chunk_store",
    "chunks",
    "state",
    "sampler",
}


def chunk_bounds(num_records: int, chunk_records: int) -> list[tuple[int, int]]:
    """``[start, end)`` slot ranges of the chunks covering ``num_records`` records."""
    return [(a, min(a + chunk_records, num_records)) for a in range(0, num_records, chunk_records)]


def new_name(prefix: str, suffix: str) -> str:
    """A file name no other dump uses."""
    return f"{prefix}-{uuid.uuid4().hex}{suffix}"


def new_token() -> str:
    """A short unique id for the files of one dump."""
    return uuid.uuid4().hex[:12]


def _byte_view(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous tensor slice, without a copy."""
    if t.numel() == 0:
        return memoryview(b"")
    if not t.is_contiguous():
        raise ValueError("replay snapshot chunks are copied from contiguous slot ranges only.")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")


def write_chunk(path: Path, fields: Mapping[str, torch.Tensor], start: int, end: int) -> dict:
    """Write slots ``[start, end)`` of every field (in ``fields`` order) to ``path`` atomically.

    Fields in device memory (a device-resident buffer) are copied to the CPU a chunk at a time."""

    def write(f: Any) -> None:
        for value in fields.values():
            f.write(_byte_view(value[start:end].cpu()))

    return write_atomic(path, write)


def read_chunk(
    path: Path, fields: Mapping[str, torch.Tensor], start: int, end: int, want: Mapping[str, Any]
) -> None:
    """Copy a chunk file into slots ``[start, end)`` of ``fields``, checksumming in the same pass.

    Raises:
        CheckpointCorruptError: if the file is shorter or longer than the fields or its checksum
            differs from ``want``.
    """
    checksum = Checksum()
    with open(path, "rb") as f:  # read-only: a load never touches a checkpoint file
        for value in fields.values():
            dest = value[start:end]
            # A field in device memory is read through a CPU staging copy of the chunk.
            stage = dest if dest.device.type == "cpu" else torch.empty(dest.shape, dtype=dest.dtype)
            view = _byte_view(stage)
            got = 0
            while got < view.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise CheckpointCorruptError(
                        f"replay snapshot file {path} is truncated (ended while reading its "
                        f"{view.nbytes}-byte part of slots {start}..{end})."
                    )
                got += n
            checksum.update(view)
            if stage is not dest:
                dest.copy_(stage)
        if f.read(1):
            raise CheckpointCorruptError(f"replay snapshot file {path} is longer than its chunk.")
    if checksum.hexdigest() != want[CHECKSUM]:
        raise CheckpointCorruptError(
            f"replay snapshot file {path} is damaged: its {CHECKSUM} is {checksum.hexdigest()}, "
            f"the manifest says {want[CHECKSUM]}."
        )


def read_verified(path: Path, want: Mapping[str, Any]) -> bytes:
    """The bytes of a small file, after checking its size and checksum against ``want``."""
    check_size(path, want)
    with open(path, "rb") as f:
        data = f.read()
    checksum = Checksum()
    checksum.update(data)
    if len(data) != want["size"] or checksum.hexdigest() != want[CHECKSUM]:
        raise CheckpointCorruptError(
            f"replay snapshot file {path} is damaged: {len(data)} bytes with {CHECKSUM} "
            f"{checksum.hexdigest()}, the manifest says {want['size']} bytes, {want[CHECKSUM]}."
        )
    return data


def check_size(path: Path, want: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointCorruptError` unless ``path`` is a file of ``want["size"]`` bytes."""
    check_file_size(path, want, what="replay snapshot")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the dump at ``path``.

    Raises:
        FileNotFoundError: if ``path`` holds no manifest (not a dump, or an incomplete one).
        CheckpointCorruptError: if the manifest cannot be parsed.
        ValueError: if it is another format or version.
    """
    file = path / MANIFEST
    if not file.is_file():
        old = (path / "rise_replay_state.pt").exists()
        raise FileNotFoundError(
            f"{str(file)!r} does not exist: loads() expects a directory written by "
            "RiseReplayBuffer.dumps()"
            + (
                " (this one was written by an older version of torchrl_rise, whose replay "
                "checkpoints are not supported: refill the buffer)."
                if old
                else " (a dump without its manifest was interrupted before it completed)."
            )
        )
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointCorruptError(f"replay snapshot manifest {file} is damaged: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointCorruptError(f"{file} is not a replay snapshot manifest.")
    missing = _REQUIRED - manifest.keys()
    if missing:
        raise CheckpointCorruptError(
            f"replay snapshot manifest {file} is damaged: it lacks {sorted(missing)}."
        )
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"Unsupported replay snapshot version {manifest.get('version')!r} in {file} (this "
            f"version of torchrl_rise reads version {VERSION})."
        )
    return manifest


def normalized(path: str | Path) -> Path:
    """``path`` made absolute and lexically normalized (``..`` folded, symlinks kept), so that
    the store a dump names and the store a later dump is given compare equal."""
    return Path(os.path.normpath(Path(path).absolute()))


def chunk_root(
    path: Path, manifest: Mapping[str, Any], *, chunk_store: str | Path | None = None
) -> Path:
    """Where the chunk files of the dump at ``path`` are read from.

    The manifest names its store relative to the dump (``chunk_store``, e.g.
    ``../../replay_chunks``), so a directory copied or moved as a whole reads its own chunks. That
    location is used whenever it exists, and every chunk is read from it (a chunk missing there is
    an error naming it, never looked for elsewhere). Only when it does not exist at all, a
    manifest written by torchrl_rise up to 0.x (which also recorded ``chunk_store_absolute``)
    falls back to that absolute path if it exists, with a warning naming it: the dump was moved
    without its store, and the chunks are read from outside the dump's own tree.

    Args:
        path: the dump directory.
        manifest: its manifest (:func:`read_manifest`).
        chunk_store: read the chunks from this store instead (the manifest's location is then
            not used at all); e.g. the run's own store, so that a run never reads another's.
    """
    store = manifest.get("chunk_store")
    if store is None:
        return path / CHUNK_DIR
    if chunk_store is not None:
        return normalized(chunk_store)
    relative = normalized(path / store)
    absolute = manifest.get("chunk_store_absolute")
    if relative.is_dir() or absolute is None or not Path(absolute).is_dir():
        return relative
    logger.warning(
        "replay snapshot %s: its chunk store %s (relative to the dump: %s) does not exist; reading "
        "its chunks from %s, the absolute path recorded when it was written, outside the dump's "
        "own directory tree. Copy that store to %s to make the dump self-contained.",
        path,
        relative,
        store,
        absolute,
        relative,
    )
    return Path(absolute)


class ChunkLedger:
    """Which store files hold the buffer's chunks, as of its last two dumps into a chunk store.

    A dump into a store may refer to a file an earlier dump wrote instead of writing the chunk
    again, if no slot of that chunk was written since. With ``share_with_previous=False`` it only
    refers to files of the dump *before* the previous one, and never to a file the previous dump
    refers to: two consecutive dumps then share no chunk file, so one damaged file costs at most
    one of them (the price: each dump writes the chunks changed over two intervals, and the store
    holds two full copies).

    Example:
        >>> ledger = ChunkLedger(2)
        >>> ledger.committed(Path("/s"), [{"file": "a"}, {"file": "b"}])
        >>> ledger.mark(torch.tensor([1]))
        >>> ledger.reusable(Path("/s"), share_with_previous=True)
        [{'file': 'a'}, None]
        >>> ledger.reusable(Path("/s"), share_with_previous=False)  # nothing two dumps back
        [None, None]
    """

    def __init__(self, num_chunks: int) -> None:
        self.store: Path | None = None
        # [the latest dump's chunks, the chunks of the dump before it]; None: unknown
        self.refs: list[list[dict[str, Any]] | None] = [None, None]
        # dirty[0, i]: chunk i was written since the latest dump; dirty[1, i]: since the one before
        self.dirty = torch.ones(2, num_chunks, dtype=torch.bool)

    def mark(self, chunk_ids: torch.Tensor) -> None:
        """Chunks ``chunk_ids`` were written to."""
        self.dirty[:, chunk_ids] = True

    def forget(self) -> None:
        """Nothing is known (a new storage, or a load that overwrote it): the next dump is full."""
        self.store, self.refs = None, [None, None]
        self.dirty.fill_(True)

    def reusable(self, store: Path, *, share_with_previous: bool) -> list[dict[str, Any] | None]:
        """Per chunk, the entry of a file in ``store`` the next dump may refer to, or ``None``."""
        n = self.dirty.shape[1]
        row = 0 if share_with_previous else 1
        base = self.refs[row]
        if store != self.store or base is None or len(base) != n:
            return [None] * n
        latest = self.refs[0] or []
        avoid = set() if share_with_previous else {c["file"] for c in latest}
        return [
            None if bool(self.dirty[row, i]) or ref["file"] in avoid else ref
            for i, ref in enumerate(base)
        ]

    def committed(self, store: Path, chunks: list[dict[str, Any]]) -> None:
        """A dump into ``store`` completed, referring to ``chunks``."""
        if store != self.store:
            self.refs = [None, None]
            self.dirty[0] = True
        self.refs = [list(chunks), self.refs[0]]
        self.dirty[1] = self.dirty[0]
        self.dirty[0] = False
        self.store = store

    def loaded(self, store: Path, chunks: list[dict[str, Any]]) -> None:
        """The storage now holds exactly the chunk files ``chunks`` of ``store``."""
        self.forget()
        self.store, self.refs = store, [list(chunks), None]
        self.dirty[0] = False


def manifest_files(path: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """The files inside the dump directory that the manifest references (not the store's)."""
    files = [path / MANIFEST, path / manifest["state"]["file"], path / manifest["sampler"]["file"]]
    if manifest.get("chunk_store") is None:
        files += [path / CHUNK_DIR / c["file"] for c in manifest["chunks"]]
    return files


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    return write_atomic(path / MANIFEST, json.dumps(manifest, indent=1).encode())


def relative_store(store: Path, dump: Path) -> str:
    """The store's path relative to the dump (so a run directory can be moved as a whole)."""
    return os.path.relpath(store, dump)


def prune_chunk_store(chunk_store: str | Path, keep: Iterable[str | Path]) -> int:
    """Delete every file of ``chunk_store`` that none of the dumps in ``keep`` references.

    Removes the chunks of dumps that were deleted, the chunks a crashed dump wrote before its
    manifest, and temporary files. Call it after deleting old checkpoints and at start-up, never
    while a dump into the same store is in progress.

    Args:
        chunk_store: the directory passed as ``chunk_store`` to
            :meth:`~torchrl_rise.replay.RiseReplayBuffer.dumps`.
        keep: the dump directories (``path`` of ``dumps``) that must stay loadable.

    Returns:
        The bytes freed.

    Raises:
        FileNotFoundError: if a dump in ``keep`` has no manifest (nothing is deleted then: leave
            incomplete dumps out of ``keep``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> store = Path(tempfile.mkdtemp())
        >>> (store / "chunk-orphan.bin").write_bytes(b"abc")
        3
        >>> prune_chunk_store(store, keep=[])
        3
    """
    store = Path(chunk_store).absolute()
    if not store.is_dir():
        return 0
    referenced: set[str] = set()
    for dump in keep:
        dump = Path(dump).absolute()
        try:
            manifest = read_manifest(dump)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"prune_chunk_store(): {str(dump)!r} in keep holds no complete replay dump (no "
                f"{MANIFEST}); nothing was deleted. Leave incomplete dumps out of keep."
            ) from err
        if manifest.get("chunk_store") is None:
            continue
        root = chunk_root(dump, manifest)
        if root.exists() and os.path.samefile(root, store):
            referenced.update(c["file"] for c in manifest["chunks"])
    freed = 0
    removed = 0
    for entry in os.scandir(store):
        if entry.name in referenced or not entry.is_file(follow_symlinks=False):
            continue
        size = entry.stat(follow_symlinks=False).st_size
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        freed += size
        removed += 1
    if removed:
        logger.info(
            "Pruned %d unreferenced files (%.2f GiB) from chunk store %s.",
            removed,
            freed / 2**30,
            store,
        )
    return freed


def remove_stale(path: Path, keep: Sequence[Path]) -> None:
    """Delete the files of an earlier dump in ``path`` that the new manifest does not list."""
    keep_set = {p.absolute() for p in keep}
    for file in [*path.glob("state-*.pt"), *path.glob("sampler-*/sampler.pt")]:
        if file.absolute() not in keep_set:
            file.unlink(missing_ok=True)
            if file.parent != path:
                with contextlib.suppress(OSError):
                    file.parent.rmdir()
    chunks = path / CHUNK_DIR
    if chunks.is_dir():
        for file in chunks.iterdir():
            if file.absolute() not in keep_set:
                file.unlink(missing_ok=True)
        if not any(chunks.iterdir()):
            chunks.rmdir()
