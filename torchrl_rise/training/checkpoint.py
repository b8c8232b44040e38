"""Atomic checkpoints that load without executing code.

A checkpoint is a directory ``<run>/checkpoints/frames_<N>/`` holding ``state.pt`` (plain tensors,
numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)`` reads it) and, when
asked, ``replay/`` (the replay buffer's own dump). It is written under a temporary name and renamed
into place, then ``<run>/checkpoints/latest`` (a one-line text file) is replaced atomically; a crash
at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "find_latest_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
REPLAY_DIR = "replay"
LATEST = "latest"


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


def _fsync_dir(path: Path) -> None:
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


def save_checkpoint(
    directory: str | Path,
    state: dict[str, Any],
    *,
    step: int,
    save_replay: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write a checkpoint atomically and return its directory.

    Args:
        directory: the run's ``checkpoints/`` folder (created if needed).
        state: nested dicts/lists of tensors, numbers and strings (``weights_only``-loadable).
        step: the frame counter, used in the checkpoint's name.
        save_replay: called with the folder to dump the replay buffer into, if given.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.mkdtemp()
        >>> path = save_checkpoint(tmp, {"counters": {"frames": 5}}, step=5)
        >>> load_checkpoint(path)["state"]["counters"]["frames"]
        5
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"frames_{step:012d}"
    tmp = directory / f".tmp-frames_{step:012d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if save_replay is not None:
        save_replay(tmp / REPLAY_DIR)
    _fsync_dir(tmp)
    if final.exists():  # same frame count saved twice (e.g. signal right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = directory / f".{LATEST}.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, directory / LATEST)
    _fsync_dir(directory)
    old = sorted(p for p in directory.glob("frames_*") if p.is_dir() and p != final)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    logger.info("checkpoint saved to %s", final)
    return final


def find_latest_checkpoint(path: str | Path) -> Path | None:
    """Resolve a run directory, a ``checkpoints/`` folder or a checkpoint folder to a checkpoint.

    Returns ``None`` if ``path`` holds no checkpoint.
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for folder in (path / "checkpoints", path):
        pointer = folder / LATEST
        if pointer.is_file():
            candidate = folder / pointer.read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        found = sorted(p for p in folder.glob("frames_*") if (p / STATE_FILE).is_file())
        if found:
            return found[-1]
    return None


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint without executing code (``torch.load(weights_only=True)``).

    Returns:
        ``{"path": Path, "state": dict, "replay_dir": Path | None}``.

    Raises:
        FileNotFoundError: if ``path`` holds no checkpoint.
    """
    ckpt = find_latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint found at {path}: expected a run directory with checkpoints/, or a "
            f"checkpoint folder holding {STATE_FILE}."
        )
    state = torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
    replay_dir = ckpt / REPLAY_DIR
    return {"path": ckpt, "state": state, "replay_dir": replay_dir if replay_dir.exists() else None}
