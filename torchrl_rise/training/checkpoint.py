"""Atomic, verified checkpoints that load without executing code.

A checkpoint is a directory ``<run>/checkpoints/frames_<N>/`` holding ``state.pt`` (plain tensors,
numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)`` reads it), when asked
``replay/`` (the replay buffer's own dump) and ``manifest.json``, which lists every file of the
checkpoint with its size and CRC-32 (:mod:`torchrl_rise._fileio`). It is written under a temporary
name (``.tmp-frames_<N>-<pid>``) and renamed into place, then ``<run>/checkpoints/latest`` (a
one-line text file) is replaced atomically; a crash at any point leaves the previous checkpoint
intact, and loading verifies every file before trusting a byte.

Crash checkpoints (``crash_frames_<N>/``, written after an exception when the trainer's state is
consistent) have the same layout but are never pointed to by ``latest``, never pruned with the
regular ones and never picked by ``resume=true``: load them by their path.

:class:`RunLock` is the run directory's exclusive lock (``<run>/.lock``), held for a whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrl_rise._fileio import (
    CheckpointCorruptError,
    describe_file,
    fsync_dir,
    iter_files,
    verify_files,
    write_atomic,
)

__all__ = [
    "CheckpointCorruptError",
    "NonFiniteStateError",
    "RunInUseError",
    "RunLock",
    "find_latest_checkpoint",
    "get_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "nonfinite_tensors",
    "remove_stale_temp",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
REPLAY_DIR = "replay"
MANIFEST = "manifest.json"
LATEST = "latest"
PREFIX = "frames_"
CRASH_PREFIX = "crash_frames_"
TMP_PREFIX = ".tmp-"
REPLACED_PREFIX = ".tmp-replaced-"
LOCK_FILE = ".lock"
# Test hook (tests/test_fault_injection.py): seconds to sleep inside a save, after state.pt and
# the replay dump are written to the temporary folder (before its manifest and rename), so that a
# test can kill the process mid-save.
SAVE_DELAY_ENV = "TORCHRL_RISE_TEST_SAVE_DELAY_S"


class NonFiniteStateError(ValueError):
    """The weights or optimizer state hold NaN/inf: such a state is never a regular checkpoint."""


class RunInUseError(RuntimeError):
    """Another live process holds the run directory's lock."""


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as weights-only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _walk_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _walk_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _walk_tensors(value, f"{prefix}.{i}")


def nonfinite_tensors(state: dict[str, Any], *, skip: tuple[str, ...] = ("rng",)) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or inf (``skip``: top keys).

    Example:
        >>> nonfinite_tensors({"actor": {"w": torch.tensor([1.0, float("nan")])}})
        ['actor.w']
    """
    bad = []
    for key, value in state.items():
        if key in skip:
            continue
        for name, tensor in _walk_tensors(value, str(key)):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad


def _step_of(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[-1])


def _write_manifest(folder: Path) -> None:
    files = {
        p.relative_to(folder).as_posix(): describe_file(p)
        for p in iter_files(folder)
        if p.relative_to(folder).as_posix() != MANIFEST
    }
    write_atomic(folder / MANIFEST, (json.dumps({"format": 1, "files": files}, indent=1)).encode())


def save_checkpoint(
    directory: str | Path,
    state: dict[str, Any],
    *,
    step: int,
    save_replay: Callable[[Path], Any] | None = None,
    keep: int = 2,
    crash: bool = False,
    on_pruned: Callable[[list[Path]], Any] | None = None,
) -> Path:
    """Write a checkpoint atomically, with a manifest of every file, and return its directory.

    Args:
        directory: the run's ``checkpoints/`` folder (created if needed).
        state: nested dicts/lists of tensors, numbers and strings (``weights_only``-loadable).
        step: the frame counter, used in the checkpoint's name.
        save_replay: called with the folder to dump the replay buffer into, if given.
        keep: how many regular checkpoints to keep (older ones are deleted once the new one is in
            place and ``latest`` points to it).
        crash: write ``crash_frames_<step>/`` instead: not pointed to by ``latest``, never pruned,
            and its floats may be non-finite (a post-mortem of a failed run).
        on_pruned: called after pruning with every checkpoint folder still there (regular and
            crash), e.g. to drop replay chunks no checkpoint references any more.

    Raises:
        NonFiniteStateError: a regular checkpoint whose floats hold NaN/inf (nothing is written).
        OSError: e.g. a full disk; the partial temporary folder is removed, the previous
            checkpoints and ``latest`` are untouched.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.mkdtemp()
        >>> path = save_checkpoint(tmp, {"counters": {"frames": 5}}, step=5)
        >>> load_checkpoint(path)["state"]["counters"]["frames"]
        5
    """
    if not crash:
        _refuse_nonfinite(state, step=step)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{CRASH_PREFIX if crash else PREFIX}{step:012d}"
    final = directory / name
    tmp = directory / f"{TMP_PREFIX}{name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_atomic(tmp / STATE_FILE, lambda f: torch.save(state, f))
        if save_replay is not None:
            save_replay(tmp / REPLAY_DIR)
        delay = float(os.environ.get(SAVE_DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        _write_manifest(tmp)
        fsync_dir(tmp)
        replaced = None
        if final.exists():  # same frame count saved twice (e.g. a resume at the same budget)
            # Moved aside, not deleted, until the new one is in place: a crash in between
            # leaves it to remove_stale_temp, which puts it back.
            replaced = directory / f"{REPLACED_PREFIX}{name}-{os.getpid()}"
            os.replace(final, replaced)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    if crash:
        logger.warning("crash checkpoint saved to %s (resume from it only by its path)", final)
        return final
    write_atomic(directory / LATEST, (final.name + "\n").encode())
    _prune(directory, final, keep=keep, on_pruned=on_pruned)
    logger.info("checkpoint saved to %s", final)
    return final


def _refuse_nonfinite(state: dict[str, Any], *, step: int) -> None:
    """Raise :class:`NonFiniteStateError` if a float of ``state`` is NaN/inf."""
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteStateError(
            f"refusing to write a checkpoint at step {step}: {len(bad)} tensors hold NaN/inf "
            f"(first: {', '.join(bad[:5])}). The previous checkpoints are kept; lower "
            "optim.lr or check the rewards."
        )


def _prune(
    directory: Path,
    final: Path,
    *,
    keep: int,
    on_pruned: Callable[[list[Path]], Any] | None,
) -> None:
    """Delete the regular checkpoints older than the ``keep - 1`` before ``final``."""
    old = sorted(p for p in directory.glob(f"{PREFIX}*") if p.is_dir() and p != final)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    if on_pruned is not None:
        on_pruned(sorted(p for p in directory.iterdir() if p.is_dir() and _is_checkpoint_name(p)))


def _is_checkpoint_name(path: Path) -> bool:
    return path.name.startswith((PREFIX, CRASH_PREFIX))


def remove_stale_temp(directory: str | Path) -> list[Path]:
    """Delete the temporary folders and files half-written saves left in ``checkpoints/``.

    Only call it while holding the run's :class:`RunLock` (no live process is saving there).
    Returns what was removed.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in sorted(directory.glob(f"{REPLACED_PREFIX}*")):
        original = directory / p.name[len(REPLACED_PREFIX) :].rsplit("-", 1)[0]
        if p.is_dir() and not original.exists():  # died between moving it aside and the rename
            os.replace(p, original)
            logger.warning("restored checkpoint %s (a save replacing it died half way)", original)
    for p in sorted(directory.iterdir()):
        if p.name.startswith((TMP_PREFIX, f".{LATEST}.tmp")) or (
            p.name.startswith(".") and ".tmp-" in p.name
        ):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def list_checkpoints(path: str | Path) -> list[Path]:
    """The regular checkpoints of a run directory (or its ``checkpoints/``), newest first.

    The one ``latest`` points to comes first, then the others by frame count, descending. Crash
    checkpoints are not listed. Nothing is verified here (see :func:`verify_checkpoint`).
    """
    path = Path(path)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted((p for p in folder.glob(f"{PREFIX}*") if p.is_dir()), key=_step_of, reverse=True)
    pointer = folder / LATEST
    if pointer.is_file():
        try:
            target = folder / pointer.read_text().strip()
        except OSError:
            target = None
        if target in found:
            found.remove(target)
            found.insert(0, target)
    return found


def find_latest_checkpoint(path: str | Path) -> Path | None:
    """Resolve a run directory, a ``checkpoints/`` folder or a checkpoint folder to a checkpoint.

    A checkpoint folder (``frames_*`` or ``crash_frames_*``, holding ``state.pt``) is returned as
    is; for a run, the regular checkpoint ``latest`` names (else the newest). Returns ``None`` if
    ``path`` holds no checkpoint. Nothing is verified here.
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path)
    return found[0] if found else None


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check every file of a checkpoint folder against its ``manifest.json``; return the manifest.

    Raises:
        CheckpointCorruptError: naming the checkpoint and the file that is missing or damaged.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointCorruptError(
            f"checkpoint {path} has no {MANIFEST}: it was not completely written (or predates "
            "verified checkpoints), so its files cannot be trusted."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointCorruptError(
            f"checkpoint file {manifest_path} is damaged ({type(err).__name__}: {err})."
        ) from err
    if STATE_FILE not in files:
        raise CheckpointCorruptError(f"checkpoint {path}: {MANIFEST} does not list {STATE_FILE}.")
    verify_files(path, files, what="checkpoint")
    return manifest


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Verify and load a checkpoint without executing code (``torch.load(weights_only=True)``).

    Args:
        path: a run directory (its ``latest`` checkpoint), a ``checkpoints/`` folder or a
            checkpoint folder (a crash checkpoint included).
        map_location: where the tensors go.
        verify: check every file's size and CRC-32 against ``manifest.json`` first.

    Returns:
        ``{"path": Path, "state": dict, "replay_dir": Path | None}``.

    Raises:
        FileNotFoundError: if ``path`` holds no checkpoint.
        CheckpointCorruptError: a file is missing, truncated or damaged (the message names it).
    """
    ckpt = find_latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint found at {path}: expected a run directory with checkpoints/, or a "
            f"checkpoint folder holding {STATE_FILE}."
        )
    if verify:
        verify_checkpoint(ckpt)
    try:
        state = torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointCorruptError(
            f"checkpoint file {ckpt / STATE_FILE} cannot be read ({type(err).__name__}: {err})."
        ) from err
    replay_dir = ckpt / REPLAY_DIR
    return {"path": ckpt, "state": state, "replay_dir": replay_dir if replay_dir.exists() else None}


class RunLock:
    """Exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.lock`` (the holder's pid inside).

    The kernel drops the lock when the holder dies, whatever kills it (``kill -9``, OOM), so a
    free lock means no live process uses the run directory and its leftovers may be reclaimed.
    :attr:`previous_pid` is the pid the file still held when the lock was taken: a holder that
    died without releasing it.

    Example:
        >>> import tempfile
        >>> lock = RunLock(tempfile.mkdtemp()).acquire()
        >>> lock.previous_pid is None
        True
        >>> lock.release()
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.previous_pid: int | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunInUseError` naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunInUseError(
                f"run directory {self.path.parent} is in use by process {holder} (it holds "
                f"{self.path}). Wait for it to end or stop it (kill -INT {holder}), or choose "
                "another logging.run_dir."
            ) from None
        old = os.pread(fd, 64, 0).decode(errors="replace").strip()
        self.previous_pid = int(old) if old.isdigit() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the pid and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
