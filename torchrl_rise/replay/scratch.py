"""The scratch directory of a replay storage: its exclusive lock, reclaiming what a dead process
left there, and the up-front disk check.

A :class:`ScratchDir` takes an exclusive ``flock`` on ``<scratch_dir>/.lock`` (holding its pid) for
its lifetime; a second live holder raises :class:`ScratchInUseError`. Memmap files found there when
the lock is taken were left by a process that died without closing: they are deleted (never
reused; resume goes through the snapshot).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

__all__ = ["InsufficientDiskSpaceError", "ScratchDir", "ScratchInUseError"]

logger = logging.getLogger(__name__)

# Bytes of disk headroom kept free on top of the buffer's own needs.
_DISK_MARGIN = 1.02
_LOCK_FILE = ".lock"
_STORAGE_META = "meta.json"

# Descriptors of the scratch locks this process holds. A forked child (e.g. a collector worker)
# closes its copies, so a lingering child never keeps a dead trainer's scratch_dir locked: the
# flock stays with the parent's descriptor.
_HELD_LOCKS: set[int] = set()


def _close_lock(fd: int) -> None:
    _HELD_LOCKS.discard(fd)
    os.close(fd)


def _drop_locks_in_child() -> None:
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


class InsufficientDiskSpaceError(OSError):
    """The memmap directory cannot hold the requested capacity."""


class ScratchInUseError(RuntimeError):
    """Another live buffer (in this process or another) holds the ``scratch_dir`` lock."""


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


class ScratchDir:
    """A locked directory for a storage's memmap files.

    Args:
        path: the directory (created if missing); ``None`` makes a temporary one, deleted on
            :meth:`release`.

    Keyword Args:
        field_names: the fields whose ``<name>.memmap`` files live there (reclaimed on open).

    Example:
        >>> scratch = ScratchDir(None, field_names=("frame",))
        >>> scratch.path.exists()
        True
        >>> scratch.release()
    """

    def __init__(self, path: str | Path | None, *, field_names: Iterable[str]) -> None:
        if path is None:
            path = tempfile.mkdtemp(prefix="rise_replay_")
            self.owned = True
        else:
            self.owned = False
        self.path = Path(path).absolute()
        self.field_names = tuple(field_names)
        self.lock_fd: int | None = None
        self._open()

    def _open(self) -> None:
        """Create the directory, take its lock and reclaim what a dead process left there."""
        where = str(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(
                f"scratch_dir {where!r} cannot hold the replay memmaps: {err.strerror or err} "
                f"({type(err).__name__}). Point scratch_dir to a writable directory (it is "
                "created if missing)."
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ScratchInUseError(
                    f"scratch_dir {where!r} is in use by another live replay buffer (pid "
                    f"{holder}{', this process' if holder == str(os.getpid()) else ''}). Give "
                    "each buffer its own scratch_dir, or close() the other one first."
                ) from err
            raise ValueError(f"scratch_dir {where!r} cannot be locked: {err}.") from err
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            os.close(fd)
            raise ValueError(
                f"scratch_dir {where!r} is not writable: {err.strerror or err}. Point scratch_dir "
                "to a writable directory."
            ) from err
        self.lock_fd = fd
        _HELD_LOCKS.add(fd)
        self._lock_release = weakref.finalize(self, _close_lock, fd)
        try:
            self._reclaim()
        except BaseException:
            self.release_lock()
            raise

    def files(self) -> list[Path]:
        """The storage files present in the directory (memmaps and TorchRL's metadata)."""
        names = [f"{name}.memmap" for name in self.field_names] + [_STORAGE_META]
        return [p for p in (self.path / name for name in names) if p.exists()]

    def _reclaim(self) -> None:
        """Delete memmap files that a buffer left here without close() (it no longer runs: we
        hold the lock). They are never reused: a resume goes through loads()."""
        files = self.files()
        memmaps = [p for p in files if p.suffix == ".memmap"]
        if memmaps:
            size = sum(p.stat().st_size for p in memmaps)
            logger.warning(
                "scratch_dir %s holds memmap files of a replay buffer that ended without close() "
                "(a crash?): reclaimed %s (%.2f GiB). The buffer starts empty; resume it with "
                "loads(<checkpoint>).",
                self.path,
                ", ".join(p.name for p in memmaps),
                size / 2**30,
            )
        for p in files:
            p.unlink(missing_ok=True)

    def check_disk(self, needed: int, records: int, record_bytes: int) -> None:
        """Raise :class:`InsufficientDiskSpaceError` unless ``needed`` bytes (with a margin) fit."""
        where = _existing_parent(self.path)
        free = shutil.disk_usage(where).free
        if needed * _DISK_MARGIN > free:
            raise InsufficientDiskSpaceError(
                f"The replay buffer needs {needed / 2**30:.2f} GiB of memmap storage "
                f"({records} records x {record_bytes} bytes) in "
                f"{str(self.path)!r}, but only {free / 2**30:.2f} GiB are free on that disk "
                f"({str(where)!r}). Point scratch_dir to a disk with more room or lower capacity."
            )

    def release_lock(self) -> None:
        """Drop the lock (closes its descriptor). Idempotent."""
        if self.lock_fd is not None:
            self._lock_release()
            self.lock_fd = None

    def release(self) -> None:
        """Delete the storage files (the whole directory when temporary) and drop the lock."""
        for p in self.files():
            p.unlink(missing_ok=True)
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
        self.release_lock()
