"""Durable-file primitives shared by training checkpoints and replay snapshots.

Everything a checkpoint writes goes through here, so one set of rules holds everywhere: files are
written under a temporary name, fsynced and renamed into place (a crash leaves either the old file
or the new one, never half of one); every file is described by its size and a CRC-32 of its bytes;
and a load verifies both before it trusts a byte. CRC-32 detects damage (truncation, a torn write,
bit rot, a file padded back to size), not tampering: checkpoints are loaded with
``torch.load(weights_only=True)``, which never runs code whatever the file holds.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHECKSUM",
    "CheckpointCorruptError",
    "Checksum",
    "check_file_size",
    "describe_file",
    "fsync_dir",
    "is_disk_full",
    "iter_files",
    "verify_files",
    "write_atomic",
]

CHECKSUM = "crc32"
_READ_CHUNK = 8 * 2**20


class CheckpointCorruptError(RuntimeError):
    """A checkpoint file is missing, truncated or damaged; the message names the file."""


class Checksum:
    """Incremental CRC-32 over the bytes fed to :meth:`update`.

    Example:
        >>> c = Checksum()
        >>> c.update(b"abc")
        >>> c.hexdigest()
        '352441c2'
    """

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value & 0xFFFFFFFF:08x}"


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingWriter:
    """A binary file wrapper that checksums and counts what passes through ``write``."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.checksum = Checksum()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.checksum.update(view)
        self.size += view.nbytes
        return self._f.write(view)

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name: str) -> Any:  # seek/tell/... for torch.save's zip writer
        return getattr(self._f, name)


def write_atomic(path: str | Path, write: bytes | Callable[[IO[bytes]], None]) -> dict[str, Any]:
    """Write ``path`` atomically (temp file, fsync, rename) and return its description.

    Args:
        path: the destination.
        write: the bytes to write, or a function that writes them to the binary file it is given
            (e.g. ``lambda f: torch.save(obj, f)``).

    Returns:
        ``{"size": int, "crc32": str}``, as :func:`describe_file` would compute it.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.bin"
        >>> write_atomic(p, b"abc") == describe_file(p)
        True
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write)
            f.flush()
            os.fsync(f.fileno())
        desc = describe_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return desc


def describe_file(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "crc32": hex}`` of a file, read in chunks."""
    checksum = Checksum()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            checksum.update(chunk)
            size += len(chunk)
    return {"size": size, CHECKSUM: checksum.hexdigest()}


def verify_files(
    root: str | Path, entries: Mapping[str, Mapping[str, Any]], *, what: str = "checkpoint"
) -> None:
    """Check that every file ``root / name`` exists with the size and checksum ``entries`` lists.

    Sizes are compared first (cheap: a truncated or padded file fails before any byte is read).

    Raises:
        CheckpointCorruptError: naming the first file that is missing or differs.
    """
    root = Path(root)
    for name, want in entries.items():
        check_file_size(root / name, want, what=what)
    for name, want in entries.items():
        path = root / name
        got = describe_file(path)[CHECKSUM]
        if got != want[CHECKSUM]:
            raise CheckpointCorruptError(
                f"{what} file {path} is damaged: its {CHECKSUM} is {got}, its metadata says "
                f"{want[CHECKSUM]}."
            )


def check_file_size(path: str | Path, want: Mapping[str, Any], *, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointCorruptError` unless ``path`` is a file of ``want["size"]`` bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointCorruptError(f"{what} file {path} is missing.")
    size = path.stat().st_size
    if size != want["size"]:
        raise CheckpointCorruptError(
            f"{what} file {path} has {size} bytes, its metadata says {want['size']}: the file "
            "is truncated or was overwritten."
        )


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it wraps) is ENOSPC / EDQUOT."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        stack.extend((e.__cause__, e.__context__))
    return False


def iter_files(root: str | Path) -> Iterable[Path]:
    """Every regular file under ``root``, sorted (for manifests)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file())
