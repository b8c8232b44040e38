"""Context-window replay: every env step stored once, frame stacks and embedding windows built at
sample time.

Layout. The storage is one TorchRL :class:`~torchrl.data.LazyMemmapStorage` of
``num_envs * lane_capacity`` records. Env ``e`` owns the contiguous *lane* of slots
``[e * L, (e + 1) * L)`` and writes it as a ring: the record with lane step ``s`` (the number of
records the lane had written before it) lives in slot ``e * L + s % L``. A record holds the newest
frame of the observation (uint8 ``[C, H, W]``), its frozen embedding, the action taken, the reward,
the termination/truncation flags, and three integers of bookkeeping: the episode id, the lane step
and the episode step (records since the episode's first observation). When an episode ends, the
observation it ended in (``("next", pixels)`` at the done step) is written as one extra *final*
record, so the bootstrap state of a truncated episode exists; final records are never sampled.

Validity is arithmetic. Within a lane, the record ``k`` steps before lane step ``s`` belongs to the
same episode iff ``k <= episode_step[s]``, and is still stored iff ``s - k >= lane_next - L`` (older
records were overwritten). Windows and frame stacks therefore never cross an episode start, the
ring's write seam or another env's lane, and no window ever needs to read the flags of the records
it spans.

Readiness. A step record is *ready* (sampleable) when its n-step future is written (``n`` more
records of its episode, or the episode's final record) and the ``S - 1`` frames of its stack are
still stored. Readiness is kept in the prioritized sampler: a slot that is not ready has weight
zero. The embedding windows of the oldest records of a lane may be cut by the seam; their masks say
so (the learner sees a shorter context, as at the start of an episode).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import inspect
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import LazyMemmapStorage

from torchrl_rise import keys
from torchrl_rise._fileio import is_disk_full, write_atomic
from torchrl_rise.replay import _torchrl_adapter, snapshot
from torchrl_rise.replay.sampler import ReadinessSampler

__all__ = ["InsufficientDiskSpaceError", "RiseReplayBuffer", "ScratchInUseError"]

logger = logging.getLogger(__name__)

# Bytes of disk headroom kept free on top of the buffer's own needs.
_DISK_MARGIN = 1.02
_LOCK_FILE = ".lock"
# The memmap files a buffer writes into its scratch_dir (TorchRL names them after the fields).
_FIELD_NAMES = (
    "frame",
    "embedding",
    "action",
    "reward",
    "terminated",
    "truncated",
    "final",
    "episode",
    "lane_step",
    "episode_step",
)
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


def _as_key(key: NestedKey) -> NestedKey:
    if isinstance(key, str):
        return key
    key = tuple(key)
    return key[0] if len(key) == 1 else key


def _next(key: NestedKey) -> tuple[str, ...]:
    return ("next", *((key,) if isinstance(key, str) else key))


class RiseReplayBuffer:
    """Replay buffer that stores each env step once and assembles windows at sample time.

    Each sampled transition comes with the frame stack and the embedding window of length ``K``
    at ``t`` and at the bootstrap step ``t + m`` (``m <= n`` steps actually taken: fewer when the
    episode ends), the n-step discounted return and the discount of the bootstrap value
    (``gamma ** m``, zero after termination; truncation bootstraps). Prioritized replay (sum/min
    segment trees: TorchRL's or pure torch, see ``tree``) or uniform sampling; checkpoint/resume
    through :meth:`dumps`/:meth:`loads`. Both states of a transition are cut from one gathered
    block of ``K + n`` embeddings and ``S + n`` frames (views when no row's episode ends within
    ``n`` steps); ``reuse_output``, ``pin_memory``, ``storage_device`` and :meth:`sample_async` /
    :class:`~torchrl_rise.replay.Prefetcher` make sampling cheaper (see ``docs/replay.md``).

    ``extend`` takes collector output laid out ``[num_envs, T]`` (time last, as TorchRL collectors
    over a batched env produce it), ``[T]`` when ``num_envs == 1`` or ``[num_envs]`` (one vector
    step). Each call must hold consecutive steps of every env. Keys read: ``pixels``
    (uint8 ``[S * C, H, W]``; only the newest frame ``pixels[-C:]`` is stored), ``rise_embedding``
    (when embeddings are on), ``action`` (integer index), ``("next", "reward")``,
    ``("next", "terminated")``/``("next", "truncated")`` (or ``("next", "done")`` alone, read as
    termination), and at done steps ``("next", "pixels")``/``("next", "rise_embedding")``: the
    episode's final observation.

    Samples hold, per transition: ``pixels`` ``[S * C, H, W]``, ``rise_context`` ``[K, D]``,
    ``rise_context_mask`` ``[K]``, ``action`` ``[]``, the same three observation keys under
    ``"next"`` for the bootstrap state, ``("next", "reward")`` (n-step return), ``("next",
    "discount")``, ``("next", "terminated"/"truncated"/"done")`` (``[1]`` each),
    ``steps_to_next_obs`` ``[1]`` (``m``), ``index`` (the slot; pass it back with priorities) and
    ``_weight`` (the PER importance weight, 1 when uniform). Without embeddings
    (``context_length=0`` or ``embedding_key=None``) the context keys are absent.

    Args:
        capacity: number of records (steps plus one final observation per episode) in total;
            split into ``num_envs`` lanes of ``capacity // num_envs``.
        num_envs: number of envs (lanes) written side by side.

    Keyword Args:
        frame_shape: ``(C, H, W)`` of one frame.
        frame_stack: ``S``, the frames stacked in ``pixels``.
        embedding_dim: ``D``.
        context_length: ``K``; 0 stores no embeddings.
        n_step: ``n`` of the n-step return.
        gamma: discount factor.
        prioritized: PER (``True``) or uniform sampling.
        alpha: PER priority exponent (BTR: 0.2).
        beta: PER importance-sampling exponent of ``importance_weights="torchrl"``; settable
            through :attr:`beta` for annealing.
        eps: added to priorities before the exponent.
        importance_weights, stratified, max_priority_floor: how PER draws and weights a batch
            (BTR's code by default: ``(capacity * P(i)) ** -alpha`` over the batch maximum, one
            draw per segment of the total mass, new slots at ``max(1, largest priority)``); see
            :class:`~torchrl_rise.replay.ReadinessSampler`.
        batch_size: default batch size of :meth:`sample`.
        scratch_dir: directory of the memmap files (a temporary directory if ``None``).
        embedding_dtype: dtype embeddings are stored and returned in.
        reward_clip: if set, each per-step reward is clipped to ``[-reward_clip, reward_clip]``
            before the n-step sum (the stored rewards stay raw).
        pixels_key, embedding_key, action_key, reward_key, terminated_key, truncated_key,
        done_key: the keys read by :meth:`extend` (the ``"next"`` ones are read under ``"next"``).
            ``embedding_key=None`` turns embeddings off.
        context_key, context_mask_key: the window keys written by :meth:`sample`.
        priority_key: the key :meth:`update_tensordict_priority` reads.
        seed: seed of the buffer's sampling generator (drawn from torch's global RNG if ``None``).
        check_disk: check up front that ``scratch_dir`` has room for the whole capacity.
        chunk_records: slots per snapshot chunk (see :meth:`dumps`); 1024 by default, 8.3 MB
            per chunk file at the Atari layout.
        tree: the priority trees: ``"auto"`` (TorchRL's C++ trees where they load, else the
            pure-torch ones), ``"torchrl"`` or ``"torch"``; see
            :class:`~torchrl_rise.replay.ReadinessSampler`.
        storage_device: keep the embeddings (and, with ``device_frames``, the frames) in this
            device's memory instead of the memmap, and gather them there (e.g. ``"cuda"``: 1 GB
            of embeddings for 2^20 x 512 fp16). Samples then come back on that device; the
            priorities live there too when the torch tree is used. ``None`` (default): everything
            in the memmap. ``"cpu"`` keeps them in RAM (the same code path, testable anywhere).
        device_frames: with ``storage_device``, also keep the frames there (7 KB per record at
            84x84).
        reuse_output: write each batch into one of two preallocated output buffers, reused in
            turn: a batch returned by :meth:`sample` stays valid until the second next call of
            :meth:`sample` (copy what must live longer). Saves the allocation and page faults of
            ~35 MB per batch. ``False`` (default): every batch is freshly allocated.
        pin_memory: allocate the reused output buffers in pinned memory (for a fast, asynchronous
            copy to a GPU learner). A no-op without CUDA or with ``storage_device``.

    The buffer takes an exclusive lock on ``scratch_dir`` (``<scratch_dir>/.lock``, holding its
    pid) for its lifetime: a second live buffer on the same directory raises
    :class:`ScratchInUseError`; memmap files left there by a process that died without
    :meth:`close` are deleted (with a warning) and the buffer starts empty: resume goes through
    :meth:`loads`. Use the buffer as a context manager or call :meth:`close` when done.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> rb = RiseReplayBuffer(64, num_envs=2, frame_shape=(1, 8, 8), frame_stack=4,
        ...                       embedding_dim=16, context_length=5, n_step=3, batch_size=4)
        >>> T = 10
        >>> td = TensorDict({
        ...     "pixels": torch.randint(0, 255, (2, T, 4, 8, 8), dtype=torch.uint8),
        ...     "rise_embedding": torch.randn(2, T, 16).half(),
        ...     "action": torch.randint(0, 6, (2, T)),
        ...     ("next", "reward"): torch.randn(2, T, 1),
        ...     ("next", "terminated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ...     ("next", "pixels"): torch.randint(0, 255, (2, T, 4, 8, 8), dtype=torch.uint8),
        ...     ("next", "rise_embedding"): torch.randn(2, T, 16).half(),
        ... }, batch_size=[2, T])
        >>> rb.extend(td)
        >>> len(rb)  # the last n steps of each env wait for their n-step future
        14
        >>> batch = rb.sample()
        >>> batch["pixels"].shape, batch["next", "rise_context"].shape
        (torch.Size([4, 4, 8, 8]), torch.Size([4, 5, 16]))
        >>> batch["td_error"] = torch.rand(4)
        >>> rb.update_tensordict_priority(batch)
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int = 1,
        *,
        frame_shape: Sequence[int] = (1, 84, 84),
        frame_stack: int = 4,
        embedding_dim: int = 512,
        context_length: int = 80,
        n_step: int = 3,
        gamma: float = 0.997,
        prioritized: bool = True,
        alpha: float = 0.2,
        beta: float = 0.4,
        eps: float = 1e-6,
        importance_weights: str = "btr",
        stratified: bool = True,
        max_priority_floor: float = 1.0,
        batch_size: int = 256,
        scratch_dir: str | Path | None = None,
        embedding_dtype: torch.dtype = torch.float16,
        reward_clip: float | None = None,
        pixels_key: NestedKey = keys.PIXELS,
        embedding_key: NestedKey | None = keys.EMBEDDING,
        action_key: NestedKey = keys.ACTION,
        reward_key: NestedKey = keys.REWARD,
        terminated_key: NestedKey = keys.TERMINATED,
        truncated_key: NestedKey = keys.TRUNCATED,
        done_key: NestedKey = keys.DONE,
        context_key: NestedKey = keys.CONTEXT,
        context_mask_key: NestedKey = keys.CONTEXT_MASK,
        priority_key: NestedKey = keys.PRIORITY,
        seed: int | None = None,
        check_disk: bool = True,
        chunk_records: int = snapshot.DEFAULT_CHUNK_RECORDS,
        tree: str = "auto",
        storage_device: str | torch.device | None = None,
        device_frames: bool = True,
        reuse_output: bool = False,
        pin_memory: bool = False,
    ) -> None:
        frame_shape = tuple(int(x) for x in frame_shape)
        if len(frame_shape) != 3 or min(frame_shape) < 1:
            raise ValueError(
                f"frame_shape must be (C, H, W) with positive sizes, got {frame_shape}."
            )
        for name, value, low in (
            ("capacity", capacity, 1),
            ("num_envs", num_envs, 1),
            ("frame_stack", frame_stack, 1),
            ("n_step", n_step, 1),
            ("context_length", context_length, 0),
            ("batch_size", batch_size, 1),
            ("chunk_records", chunk_records, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}.")
        if prioritized and alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (a zero priority must stay sampleable), got {eps}.")
        if reward_clip is not None and reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive or None, got {reward_clip}.")
        self.lane_capacity = capacity // num_envs
        min_lane = n_step + frame_stack + 1
        if self.lane_capacity < min_lane:
            raise ValueError(
                f"capacity={capacity} over num_envs={num_envs} leaves {self.lane_capacity} records "
                f"per env; at least n_step + frame_stack + 1 = {min_lane} are needed. Raise "
                f"capacity to at least {min_lane * num_envs}."
            )
        if capacity % num_envs:
            logger.warning(
                "capacity %d is not a multiple of num_envs %d: %d records are left unused.",
                capacity,
                num_envs,
                capacity % num_envs,
            )
        self.num_envs = num_envs
        self.capacity = self.lane_capacity * num_envs
        self.frame_shape = frame_shape
        self.frame_stack = frame_stack
        self.use_embeddings = context_length > 0 and embedding_key is not None
        self.context_length = context_length if self.use_embeddings else 0
        self.embedding_dim = int(embedding_dim)
        if self.use_embeddings and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}.")
        self.embedding_dtype = embedding_dtype
        self.n_step = n_step
        self.gamma = float(gamma)
        self.prioritized = bool(prioritized)
        self.batch_size = batch_size
        self.reward_clip = reward_clip

        self.pixels_key = _as_key(pixels_key)
        self.embedding_key = _as_key(embedding_key) if embedding_key is not None else None
        self.action_key = _as_key(action_key)
        self.reward_key = _as_key(reward_key)
        self.terminated_key = _as_key(terminated_key)
        self.truncated_key = _as_key(truncated_key)
        self.done_key = _as_key(done_key)
        self.context_key = _as_key(context_key)
        self.context_mask_key = _as_key(context_mask_key)
        self.priority_key = _as_key(priority_key)

        self.chunk_records = chunk_records
        self.storage_device = None if storage_device is None else torch.device(storage_device)
        self._device_names: tuple[str, ...] = ()
        if self.storage_device is not None:
            names = ["embedding"] if self.use_embeddings else []
            self._device_names = tuple(names + (["frame"] if device_frames else []))
        self.reuse_output = bool(reuse_output)
        self.pin_memory = bool(pin_memory) and self.storage_device is None
        if self.pin_memory and not torch.cuda.is_available():
            logger.info("pin_memory=True without CUDA: output buffers are not pinned (a no-op).")
            self.pin_memory = False
        self._rings: dict[Any, _OutputRing] = {}
        # Writes to the storage wait for in-flight background gathers (see sample_async).
        self._pending: list[concurrent.futures.Future] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        if scratch_dir is None:
            scratch_dir = tempfile.mkdtemp(prefix="rise_replay_")
            self._owns_scratch = True
        else:
            self._owns_scratch = False
        self.scratch_dir = Path(scratch_dir).absolute()
        self._open_scratch()
        if check_disk:
            try:
                self._check_disk()
            except BaseException:
                self._release_lock()
                raise

        # One record more than the lanes use: it stays all zeros and pads invalid window entries.
        self._zero = self.capacity
        self.storage = LazyMemmapStorage(
            self.capacity + 1, scratch_dir=self.scratch_dir, auto_cleanup=self._owns_scratch
        )
        self.sampler = ReadinessSampler(
            self.capacity,
            alpha if self.prioritized else 0.0,
            beta if self.prioritized else 0.0,
            eps=eps,
            importance_weights=importance_weights,
            stratified=stratified,
            max_priority_floor=max_priority_floor,
            tree=tree,
            device=self.storage_device if tree != "torchrl" and self.storage_device else "cpu",
            generator=self._make_generator(seed),
        )
        self._generator = self.sampler.generator

        E = num_envs
        self._lane_next = torch.zeros(E, dtype=torch.long)
        self._episode_open = torch.zeros(E, dtype=torch.bool)
        self._episode_id = torch.full((E,), -1, dtype=torch.long)
        self._episode_step = torch.zeros(E, dtype=torch.long)
        self._next_episode_id = 0
        self._ready = torch.zeros(self.capacity, dtype=torch.bool)
        self._num_ready = 0
        self._fields: dict[str, torch.Tensor] = {}
        self._lane_base = torch.arange(E, dtype=torch.long) * self.lane_capacity
        self._gamma_pow = self.gamma ** torch.arange(n_step + 1, dtype=torch.float64)
        # Snapshot bookkeeping: which chunks were written since the last dumps into a chunk
        # store, and the chunk files (in that store) that hold the others.
        self._chunk_bounds = snapshot.chunk_bounds(self.capacity + 1, chunk_records)
        self._ledger = snapshot.ChunkLedger(len(self._chunk_bounds))

    @staticmethod
    def _make_generator(seed: int | None) -> torch.Generator:
        generator = torch.Generator()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        generator.manual_seed(seed)
        return generator

    # ------------------------------------------------------------------ sizes and settings
    @property
    def nbytes_per_transition(self) -> int:
        """Bytes of memmap storage per stored step (one record), whatever ``context_length`` is:
        frame, embedding, action, reward, three flags, episode id, lane step, episode step."""
        return sum(
            math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            for dtype, shape in self._field_specs().values()
        )

    def _field_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """dtype and per-record shape of every stored field, in snapshot order."""
        specs = {
            "frame": (torch.uint8, self.frame_shape),
            "action": (torch.int64, ()),
            "reward": (torch.float32, ()),
            "terminated": (torch.bool, ()),
            "truncated": (torch.bool, ()),
            "final": (torch.bool, ()),
            "episode": (torch.int64, ()),
            "lane_step": (torch.int64, ()),
            "episode_step": (torch.int64, ()),
        }
        if self.use_embeddings:
            specs["embedding"] = (self.embedding_dtype, (self.embedding_dim,))
        return specs

    @property
    def nbytes(self) -> int:
        """Bytes of memmap storage in total (all lanes plus the pad record): the scratch disk
        the buffer uses, and the size of a full dump's chunks."""
        return (self.capacity + 1) * self.nbytes_per_transition

    @property
    def chunk_nbytes(self) -> int:
        """Bytes of one snapshot chunk file (``chunk_records`` records; the last may be smaller).

        An incremental dump writes ``chunk_nbytes`` per chunk written to since the previous one,
        plus the small state (:attr:`state_nbytes`)."""
        return self.chunk_records * self.nbytes_per_transition

    @property
    def state_nbytes(self) -> int:
        """Approximate bytes of a dump's small state (readiness, sampler trees, cursors)."""
        return self.capacity * (1 + 2 * 4) + 64 * 2**10

    @property
    def beta(self) -> float:
        """The PER importance-sampling exponent (set it to anneal)."""
        return self.sampler.beta

    @beta.setter
    def beta(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"beta must be >= 0, got {value}.")
        if self.prioritized:
            self.sampler.beta = float(value)

    @property
    def alpha(self) -> float:
        """The PER priority exponent (0 when sampling is uniform)."""
        return self.sampler.alpha

    def __len__(self) -> int:
        """Number of transitions that can be sampled now."""
        return self._num_ready

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, num_envs={self.num_envs}, "
            f"frame_shape={self.frame_shape}, frame_stack={self.frame_stack}, "
            f"context_length={self.context_length}, n_step={self.n_step}, gamma={self.gamma}, "
            f"prioritized={self.prioritized}, len={len(self)}, scratch_dir={str(self.scratch_dir)!r})"
        )

    def _check_disk(self) -> None:
        needed = self.nbytes
        where = _existing_parent(self.scratch_dir)
        free = shutil.disk_usage(where).free
        if needed * _DISK_MARGIN > free:
            raise InsufficientDiskSpaceError(
                f"The replay buffer needs {needed / 2**30:.2f} GiB of memmap storage "
                f"({self.capacity + 1} records x {self.nbytes_per_transition} bytes) in "
                f"{str(self.scratch_dir)!r}, but only {free / 2**30:.2f} GiB are free on that disk "
                f"({str(where)!r}). Point scratch_dir to a disk with more room or lower capacity."
            )

    # ------------------------------------------------------------------ scratch directory
    def _open_scratch(self) -> None:
        """Create ``scratch_dir``, take its lock and reclaim what a dead process left there."""
        where = str(self.scratch_dir)
        try:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.scratch_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
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
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)
        self._lock_release = weakref.finalize(self, _close_lock, fd)
        try:
            self._reclaim()
        except BaseException:
            self._release_lock()
            raise

    def _scratch_files(self) -> list[Path]:
        names = [f"{name}.memmap" for name in _FIELD_NAMES] + [_STORAGE_META]
        return [p for p in (self.scratch_dir / name for name in names) if p.exists()]

    def _reclaim(self) -> None:
        """Delete memmap files that a buffer left here without close() (it no longer runs: we
        hold the lock). They are never reused: a resume goes through loads()."""
        files = self._scratch_files()
        memmaps = [p for p in files if p.suffix == ".memmap"]
        if memmaps:
            size = sum(p.stat().st_size for p in memmaps)
            logger.warning(
                "scratch_dir %s holds memmap files of a replay buffer that ended without close() "
                "(a crash?): reclaimed %s (%.2f GiB). The buffer starts empty; resume it with "
                "loads(<checkpoint>).",
                self.scratch_dir,
                ", ".join(p.name for p in memmaps),
                size / 2**30,
            )
        for p in files:
            p.unlink(missing_ok=True)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            self._lock_release()  # closes the descriptor, which drops the flock
            self._lock_fd = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"This replay buffer was closed (its scratch_dir {str(self.scratch_dir)!r} was "
                "released); build a new one."
            )

    def close(self) -> None:
        """Delete the buffer's memmap files and release its ``scratch_dir`` lock.

        The buffer cannot be used afterwards. Idempotent. What it held survives only in its dumps.
        """
        if self._closed:
            return
        self._settle()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._closed = True
        self._fields = {}
        self._rings = {}
        storage, self.storage = self.storage, None
        if storage is not None and storage.initialized and self._owns_scratch:
            storage.cleanup()
        del storage
        for p in self._scratch_files():
            p.unlink(missing_ok=True)
        if self._owns_scratch:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
        self._release_lock()

    def cleanup(self) -> None:
        """Same as :meth:`close` (kept for existing callers)."""
        self.close()

    def __enter__(self) -> RiseReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def _lanes_view(self, td: TensorDictBase) -> TensorDictBase:
        """Reshape collector output to ``[num_envs, T]``."""
        shape = tuple(td.batch_size)
        if len(shape) == 2:
            if shape[0] != self.num_envs:
                raise ValueError(
                    f"extend() got a batch of shape {list(shape)}; expected [num_envs, T] with "
                    f"num_envs={self.num_envs} (TorchRL collectors over a batched env put the env "
                    f"dim first and time last)."
                )
            return td
        if len(shape) == 1:
            if self.num_envs == 1:
                return td.unsqueeze(0)
            if shape[0] == self.num_envs:
                return td.unsqueeze(1)
            raise ValueError(
                f"extend() got a 1-d batch of {shape[0]} steps, but the buffer has "
                f"num_envs={self.num_envs} lanes: pass [num_envs, T] (or [num_envs] for one "
                f"vector step). Flattened collector output cannot be split into envs; keep the "
                f"collector's [num_envs, T] layout."
            )
        raise ValueError(
            f"extend() expects a batch of [num_envs, T], [T] (num_envs == 1) or [num_envs]; "
            f"got {list(shape)}."
        )

    def _read(self, td: TensorDictBase, key: NestedKey, *, required: bool = True) -> Any:
        value = td.get(key, None)
        if value is None and required:
            raise KeyError(
                f"extend() needs the key {key!r}, which the data does not have (keys: "
                f"{sorted(map(str, td.keys(True, True)))})."
            )
        return value

    def _flag(self, td: TensorDictBase, key: NestedKey, E: int, T: int) -> torch.Tensor | None:
        value = td.get(_next(key), None)
        if value is None:
            return None
        if value.numel() != E * T:
            raise ValueError(
                f"{_next(key)!r} must have one flag per step (shape [..., 1]), got {list(value.shape)}."
            )
        return value.reshape(E, T).to(torch.bool)

    def _frames(self, pixels: torch.Tensor, key: NestedKey, E: int, T: int) -> torch.Tensor:
        c, h, w = self.frame_shape
        want = (self.frame_stack * c, h, w)
        if pixels.dtype != torch.uint8:
            raise TypeError(
                f"{key!r} must be uint8 frames, got {pixels.dtype}; keep the env's uint8 pixels "
                f"(scale to float inside the network)."
            )
        if tuple(pixels.shape[2:]) != want:
            raise ValueError(
                f"{key!r} must have shape [..., S * C, H, W] = [..., {want[0]}, {h}, {w}] "
                f"(frame_stack={self.frame_stack}, frame_shape={self.frame_shape}); got "
                f"{list(pixels.shape[2:])}."
            )
        return pixels[:, :, -c:]

    def _embeddings(self, emb: torch.Tensor, key: NestedKey) -> torch.Tensor:
        if emb.shape[-1] != self.embedding_dim or emb.ndim != 3:
            raise ValueError(
                f"{key!r} must have shape [..., {self.embedding_dim}] (embedding_dim), got "
                f"{list(emb.shape[2:])}."
            )
        return emb.to(self.embedding_dtype)

    @torch.no_grad()
    def extend(self, td: TensorDictBase) -> None:
        """Write consecutive steps of every env (see the class docstring for the layout)."""
        self._check_open()
        td = self._lanes_view(td)
        E, T = td.batch_size
        if T == 0:
            return
        L = self.lane_capacity
        frame = self._frames(self._read(td, self.pixels_key), self.pixels_key, E, T)
        action = self._read(td, self.action_key)
        if action.dtype.is_floating_point or action.dtype == torch.bool:
            raise TypeError(
                f"{self.action_key!r} must hold integer action indices (TorchRL Categorical), got "
                f"{action.dtype}."
            )
        if action.numel() != E * T:
            raise ValueError(
                f"{self.action_key!r} must be one integer index per step (shape [] or [1]), got "
                f"shape {list(action.shape[2:])}; one-hot actions are not supported: store "
                f"action.argmax(-1)."
            )
        action = action.reshape(E, T).to(torch.long)
        reward = self._read(td, _next(self.reward_key))
        if reward.numel() != E * T:
            raise ValueError(
                f"{_next(self.reward_key)!r} must be one scalar per step, got shape "
                f"{list(reward.shape[2:])}."
            )
        reward = reward.reshape(E, T).to(torch.float32)
        terminated = self._flag(td, self.terminated_key, E, T)
        truncated = self._flag(td, self.truncated_key, E, T)
        done = self._flag(td, self.done_key, E, T)
        if terminated is None and done is None:
            raise KeyError(
                f"extend() needs {_next(self.terminated_key)!r} or {_next(self.done_key)!r} to "
                f"know where episodes end."
            )
        if terminated is None:
            terminated = done
        if truncated is None:
            truncated = torch.zeros_like(terminated)
        if done is not None:
            # done without terminated is a truncation of some other kind: bootstrap it.
            truncated = truncated | (done & ~terminated)
        truncated = truncated & ~terminated
        end = terminated | truncated

        endi = end.long()
        t_idx = torch.arange(T)
        rec_off = t_idx + endi.cumsum(1) - endi  # offset of each step record in this write
        n_rec = T + endi.sum(1)
        if int(n_rec.max()) > L:
            raise ValueError(
                f"One extend() call writes up to {int(n_rec.max())} records to an env's lane (steps "
                f"plus final observations), more than its {L} slots; extend in shorter chunks or "
                f"raise capacity."
            )
        start = torch.zeros(E, T, dtype=torch.bool)
        start[:, 0] = ~self._episode_open
        start[:, 1:] = end[:, :-1]
        k = start.long().cumsum(1)
        n_starts = k[:, -1]
        id_base = self._next_episode_id + n_starts.cumsum(0) - n_starts
        episode = torch.where(k == 0, self._episode_id[:, None], id_base[:, None] + k - 1)
        t_start = torch.where(start, t_idx, -1).cummax(1).values
        ep_step = torch.where(k == 0, self._episode_step[:, None] + t_idx, t_idx - t_start)
        lane_step = self._lane_next[:, None] + rec_off

        records = {
            "frame": frame,
            "action": action,
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "final": torch.zeros(E, T, dtype=torch.bool),
            "episode": episode,
            "lane_step": lane_step,
            "episode_step": ep_step,
        }
        if self.use_embeddings:
            records["embedding"] = self._embeddings(
                self._read(td, self.embedding_key), self.embedding_key
            )
        slot = self._lane_base[:, None] + lane_step % L
        index = [slot.reshape(-1)]
        data = {name: value.reshape(E * T, *value.shape[2:]) for name, value in records.items()}
        if bool(end.any()):
            # The observation each finished episode ended in: one extra record, never sampled.
            final_frame = self._frames(
                self._read(td, _next(self.pixels_key)), _next(self.pixels_key), E, T
            )[end]
            n_fin = final_frame.shape[0]
            finals = {
                "frame": final_frame,
                "action": torch.zeros(n_fin, dtype=torch.long),
                "reward": torch.zeros(n_fin),
                "terminated": terminated[end],
                "truncated": truncated[end],
                "final": torch.ones(n_fin, dtype=torch.bool),
                "episode": episode[end],
                "lane_step": lane_step[end] + 1,
                "episode_step": ep_step[end] + 1,
            }
            if self.use_embeddings:
                key = _next(self.embedding_key)
                finals["embedding"] = self._embeddings(self._read(td, key), key)[end]
            index.append(self._lane_base[:, None].expand(E, T)[end] + (lane_step[end] + 1) % L)
            data = {name: torch.cat([data[name], finals[name]]) for name in data}
        index = torch.cat(index)
        self._settle()  # a background gather must not read slots this write replaces
        on_device = {name: data.pop(name) for name in self._device_names}
        batch = TensorDict(data, batch_size=[index.numel()])
        if not self.storage.initialized:
            self._init_storage()
        self.storage.set(index, batch)
        if on_device:
            where = index.to(self.storage_device)
            for name, value in on_device.items():
                self._fields[name][where] = value.to(self.storage_device)
        # Every slot of every lane is allocated: the sampler must see the whole range.
        _torchrl_adapter.set_storage_len(self.storage, self.capacity)
        self._ledger.mark(index // self.chunk_records)

        old_next = self._lane_next.clone()
        self._lane_next += n_rec
        self._episode_open = ~end[:, -1]
        self._episode_id = episode[:, -1].clone()
        self._episode_step = ep_step[:, -1] + 1
        self._next_episode_id += int(n_starts.sum())
        self._refresh_readiness(old_next, int(n_rec.max()))

    def _init_storage(self) -> None:
        """Create the memmap files (writing the all-zero pad record) and allocate their blocks."""
        specs = self._field_specs()
        pad = TensorDict(
            {
                name: torch.zeros(1, *shape, dtype=dtype)
                for name, (dtype, shape) in specs.items()
                if name not in self._device_names
            },
            batch_size=[1],
        )
        self.storage.set(torch.tensor([self._zero]), pad)
        _torchrl_adapter.set_storage_len(self.storage, self.capacity)
        self._bind_fields()
        try:
            self._preallocate()
        except InsufficientDiskSpaceError:
            self.close()  # frees what was allocated; a sparse storage must not be written
            raise
        self._ledger.forget()

    def _preallocate(self) -> None:
        """Allocate every memmap file's blocks now (they are sparse): a disk without room fails
        here with a clear error instead of killing the process with SIGBUS at some later write."""
        for name, value in _torchrl_adapter.storage_fields(self.storage).items():
            filename = value.filename
            size = value.numel() * value.element_size()
            fd = os.open(filename, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as err:
                if is_disk_full(err):
                    raise InsufficientDiskSpaceError(
                        errno.ENOSPC,
                        f"No room to allocate the replay memmaps in {str(self.scratch_dir)!r}: "
                        f"the {name!r} field needs {size / 2**30:.2f} GiB of the buffer's "
                        f"{self.nbytes / 2**30:.2f} GiB. Free disk space, point scratch_dir to a "
                        "disk with more room or lower capacity (this buffer is closed: build a new "
                        "one).",
                    ) from err
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    logger.warning(
                        "The file system of %s cannot preallocate files (%s): a disk that "
                        "fills up later may end the process with SIGBUS.",
                        self.scratch_dir,
                        err,
                    )
                    return
                raise
            finally:
                os.close(fd)

    def _bind_fields(self) -> None:
        td = _torchrl_adapter.storage_fields(self.storage)
        # Plain-tensor views of the memmaps (skips the subclass's Python-level indexing).
        self._fields = {key: value.as_subclass(torch.Tensor) for key, value in td.items()}
        specs = self._field_specs()
        for name in self._device_names:
            dtype, shape = specs[name]
            self._fields[name] = torch.zeros(
                self.capacity + 1, *shape, dtype=dtype, device=self.storage_device
            )
        if self.use_embeddings:
            self._fields["embedding"][self._zero].zero_()

    def _refresh_readiness(self, old_next: torch.Tensor, max_written: int) -> None:
        """Recompute readiness of every slot a write can have changed."""
        L, n, S = self.lane_capacity, self.n_step, self.frame_stack
        new_next = self._lane_next
        oldest = new_next - L  # first lane step still stored
        # Steps whose future may have completed, the new records, and the oldest S - 1 records
        # (their frame history may just have been overwritten).
        recent = new_next[:, None] - torch.arange(n + max_written, 0, -1)
        seam = oldest[:, None] + torch.arange(S - 1)
        steps = torch.cat([recent, seam], 1)
        lanes = torch.arange(self.num_envs)[:, None].expand_as(steps)
        keep = (steps >= oldest.clamp_min(0)[:, None]) & (steps < new_next[:, None])
        steps, lanes = steps[keep], lanes[keep]
        slot = lanes * L + steps % L
        slot, first = _unique_first(slot)
        steps, lanes = steps[first], lanes[first]
        ready = self._is_ready(slot, lanes, steps)
        written = steps >= old_next[lanes]
        was = self._ready[slot]
        newly = ready & (written | ~was)
        lost = was & ~ready
        self._ready[slot] = ready
        self._num_ready += int(ready.sum()) - int(was.sum())
        self.sampler.mark_unready(slot[lost])
        self.sampler.mark_ready(slot[newly])

    def _is_ready(self, slot: torch.Tensor, lanes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        L, n, S = self.lane_capacity, self.n_step, self.frame_stack
        f = self._fields
        nxt = self._lane_next[lanes]
        oldest = nxt - L
        ep = f["episode_step"][slot]
        ok = ~f["final"][slot]
        ok &= torch.maximum(s - (S - 1), s - ep) >= oldest  # frame history still stored
        offsets = torch.arange(n)
        fut = (s[:, None] + offsets) % L + (lanes * L)[:, None]
        written = (s[:, None] + offsets) < nxt[:, None]
        ends = (f["terminated"][fut] | f["truncated"][fut]) & written
        m = _steps_taken(ends)
        # The bootstrap record must be of the anchor's episode: after close_open_episodes() the
        # next records belong to a new episode, and nothing may be read across that cut.
        boot = (s + m) % L + lanes * L
        return ok & (s + m < nxt) & (f["episode"][boot] == f["episode"][slot])

    # ------------------------------------------------------------------ sampling
    def _draw(self, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and importance weights of one batch (the only use of the sampling RNG)."""
        self._check_open()
        batch_size = self.batch_size if batch_size is None else batch_size
        if self._num_ready == 0:
            raise RuntimeError(
                "Cannot sample: no transition is ready yet. A step becomes sampleable once its "
                f"n_step={self.n_step} next steps (or its episode's end) are written; extend() more "
                "data first (check len(buffer) > 0)."
            )
        index, info = self.sampler.sample(self.storage, batch_size)
        weight = torch.as_tensor(info["priority_weight"], dtype=torch.float32)
        if not self.prioritized:
            weight = torch.ones_like(weight)
        return index.long(), weight

    @torch.no_grad()
    def sample(self, batch_size: int | None = None) -> TensorDict:
        """Draw a batch of transitions (prioritized or uniform) with their windows.

        With ``reuse_output=True`` the batch lives in a reused buffer: it stays valid until the
        second next call of :meth:`sample` (see the class docstring).
        """
        index, weight = self._draw(batch_size)
        ring = self._ring("sample", index.numel()) if self.reuse_output else None
        return self._assemble(index, weight, ring)

    def sample_async(
        self, batch_size: int | None = None, *, ring: _OutputRing | None = None
    ) -> concurrent.futures.Future:
        """Draw a batch now and assemble it on a background thread; returns a future of the batch.

        The slots and weights are drawn immediately, in the calling thread (so the sequence of
        draws is the same as with :meth:`sample`, whatever the timing); the gather runs on a worker
        thread (``index_select`` releases the GIL) while the caller does something else, e.g. the
        learner update of the previous batch. :meth:`extend`, :meth:`loads` and :meth:`close` wait
        for pending gathers before they write, so a batch never mixes old and new records.
        Priorities written after the draw (:meth:`update_priority`) do not change the batch:
        this is Ape-X-style prefetch, see :class:`~torchrl_rise.replay.Prefetcher`.

        Keyword Args:
            ring: reused output buffers to write into (the :class:`Prefetcher` passes its own);
                ``None`` allocates the batch.
        """
        index, weight = self._draw(batch_size)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="rise-replay-gather"
            )
        future = self._executor.submit(self._assemble, index, weight, ring)
        self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def _settle(self) -> None:
        """Wait for every background gather (before anything writes to the storage)."""
        pending, self._pending = self._pending, []
        for future in pending:
            with contextlib.suppress(Exception):  # its error is raised to whoever holds it
                future.result()

    def _ring(self, name: str, batch_size: int) -> _OutputRing:
        ring = self._rings.get((name, batch_size))
        if ring is None:
            ring = self._rings[(name, batch_size)] = self.output_ring()
        return ring

    def output_ring(self, slots: int = 2) -> _OutputRing:
        """A new set of ``slots`` reused output buffers (pinned if ``pin_memory``), for
        :meth:`sample_async`."""
        return _OutputRing(slots, pin=self.pin_memory)

    @torch.no_grad()
    def gather(self, index: torch.Tensor) -> TensorDict:
        """Assemble the transitions stored at the slots ``index`` (all must be sampleable).

        ``_weight`` is 1. Useful for evaluation and tests; training uses :meth:`sample`. The
        batch is always freshly allocated.
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        bad = (index < 0) | (index >= self.capacity)
        if bad.any() or not self._ready[index.clamp(0, self.capacity - 1)].all():
            raise IndexError(
                "gather() got slots that hold no sampleable transition: "
                f"{index[bad | ~self._ready[index.clamp(0, self.capacity - 1)]].tolist()[:10]}; "
                "see sampleable_index()."
            )
        return self._gather(index, torch.ones(index.numel()))

    def sampleable_index(self) -> torch.Tensor:
        """The slots that hold a sampleable transition, ascending."""
        return self._ready.nonzero().squeeze(-1)

    def _assemble(
        self, index: torch.Tensor, weight: torch.Tensor, ring: _OutputRing | None
    ) -> TensorDict:
        """``_gather`` into ``ring`` where the class's ``_gather`` takes one (a subclass written
        against the two-argument ``_gather(index, weight)`` gets fresh batches)."""
        if ring is None or not self._gather_takes_ring():
            return self._gather(index, weight)
        return self._gather(index, weight, ring)

    @classmethod
    def _gather_takes_ring(cls) -> bool:
        takes = cls.__dict__.get("_takes_ring_cache")
        if takes is None:
            takes = "ring" in inspect.signature(cls._gather).parameters
            cls._takes_ring_cache = takes
        return takes

    def _select(self, name: str, slots: torch.Tensor, out: dict[str, torch.Tensor] | None):
        """``field[slots]`` for slots ``[B, W]``: one ``index_select`` straight into an output
        buffer (reused when ``out`` is a ring slot), shaped ``[B, W, *row_shape]``."""
        table = self._fields[name]
        slots = slots.to(table.device)
        shape = (*slots.shape, *table.shape[1:])
        if out is None:
            return _rows(table, slots)
        buf = out.get(name)
        if buf is None or buf.shape != shape or buf.dtype != table.dtype:
            pin = self.pin_memory and table.device.type == "cpu"
            buf = out[name] = torch.empty(
                shape, dtype=table.dtype, device=table.device, pin_memory=pin
            )
        torch.index_select(table, 0, slots.reshape(-1), out=buf.view(-1, *table.shape[1:]))
        return buf

    def _gather(
        self, index: torch.Tensor, weight: torch.Tensor, ring: _OutputRing | None = None
    ) -> TensorDict:
        L, n, S, K = self.lane_capacity, self.n_step, self.frame_stack, self.context_length
        f = self._fields
        out_bufs = None if ring is None else ring.next()
        B = index.numel()
        lane_base = index - index % L
        s = f["lane_step"][index]
        ep = f["episode_step"][index]

        # n-step return and discount: steps t .. t+n-1 of the record's lane.
        fut = lane_base[:, None] + (s[:, None] + torch.arange(n)) % L
        terminated, truncated = f["terminated"][fut], f["truncated"][fut]
        m = _steps_taken(terminated | truncated)
        taken = torch.arange(n) < m[:, None]
        reward = f["reward"][fut]
        if self.reward_clip is not None:
            reward = reward.clamp(-self.reward_clip, self.reward_clip)
        ret = (reward.double() * self._gamma_pow[:n] * taken).sum(1)
        last = torch.arange(B), m - 1
        term_m, trunc_m = terminated[last], truncated[last]
        discount = self._gamma_pow[m] * (~term_m)
        # Rows whose bootstrap step is t+n (no episode end within n steps): both windows are
        # views of one block of rows t-W+1 .. t+n. Rows with m < n get their bootstrap window
        # gathered separately (a fix-up), which needs the next window as its own tensor.
        short = (m < n).nonzero().squeeze(-1)
        first = -ep[:, None]

        def windows(name, span, clamp, valid_fn):
            """Current and next windows of ``span`` rows, gathered once as ``span + n`` rows."""
            off = torch.arange(-span + 1, n + 1).expand(B, -1)
            if clamp:
                off = off.maximum(first)
            valid = valid_fn(off) if valid_fn is not None else None
            slots = lane_base[:, None] + (s[:, None] + off) % L
            if valid is not None:
                slots = torch.where(valid, slots, self._zero)
            block = self._select(name, slots, out_bufs)
            cur, nxt = block[:, :span], block[:, n:]
            vcur = vnxt = None
            if valid is not None:
                vcur, vnxt = valid[:, :span], valid[:, n:]
            if short.numel():
                # The next windows as their own tensor; the rows with m < n re-gathered.
                nxt = _copy_into(nxt, out_bufs, f"next_{name}")
                off_s = m[short, None] + torch.arange(-span + 1, 1)
                if clamp:
                    off_s = off_s.maximum(first[short])
                slots_s = lane_base[short, None] + (s[short, None] + off_s) % L
                if valid is not None:
                    vnxt = vnxt.clone()
                    v_s = valid_fn(off_s, short)
                    vnxt.index_copy_(0, short, v_s)
                    slots_s = torch.where(v_s, slots_s, self._zero)
                # index_copy_: advanced-index assignment into the big tensor is far slower on CPU.
                nxt.index_copy_(0, short.to(nxt.device), _rows(f[name], slots_s.to(f[name].device)))
            return cur, nxt, vcur, vnxt

        # Frame stacks at t and t+m, clamped to the episode's first frame ("same" padding).
        pixels, next_pixels, _, _ = windows("frame", S, True, None)

        out = {
            self.pixels_key: pixels.flatten(1, 2),
            self.action_key: f["action"][index],
            ("next", *_tuple(self.pixels_key)): next_pixels.flatten(1, 2),
            ("next", *_tuple(self.reward_key)): ret.float()[:, None],
            ("next", keys.DISCOUNT): discount.float()[:, None],
            ("next", *_tuple(self.terminated_key)): term_m[:, None],
            ("next", *_tuple(self.truncated_key)): trunc_m[:, None],
            ("next", *_tuple(self.done_key)): (term_m | trunc_m)[:, None],
            keys.STEPS_TO_NEXT: m[:, None],
            keys.INDEX: index,
            keys.WEIGHT: weight,
        }
        if self.use_embeddings:
            # Windows of K embeddings ending at t and at t+m. Entries before the episode start or
            # older than the lane's oldest stored record are invalid: they are read from the
            # storage's extra all-zero record, so no masking pass over the window is needed.
            oldest = (self._lane_next[index // L] - L)[:, None]

            def valid_fn(off, rows=None):
                if rows is None:
                    return (off >= first) & (s[:, None] + off >= oldest)
                return (off >= first[rows]) & (s[rows, None] + off >= oldest[rows])

            ctx, next_ctx, mask, next_mask = windows("embedding", K, False, valid_fn)
            out[self.context_key] = ctx
            out[self.context_mask_key] = mask
            out[("next", *_tuple(self.context_key))] = next_ctx
            out[("next", *_tuple(self.context_mask_key))] = next_mask
        td = TensorDict(out, batch_size=[B])
        if self.storage_device is not None and self.storage_device.type != "cpu":
            td = td.to(self.storage_device, non_blocking=True)
        return td

    # ------------------------------------------------------------------ priorities
    @torch.no_grad()
    def update_priority(self, index: torch.Tensor, priority: torch.Tensor | float) -> None:
        """Set the priority of the transitions at ``index`` (e.g. mean |TD error| over taus).

        Slots that stopped holding a sampleable transition since they were sampled (overwritten, or
        their frame history overwritten) are skipped. A no-op for uniform buffers.
        """
        if not self.prioritized:
            return
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        priority = torch.as_tensor(priority, dtype=torch.float32).detach().cpu()
        priority = priority.expand(index.shape) if priority.numel() == 1 else priority.reshape(-1)
        if priority.shape != index.shape:
            raise ValueError(
                f"update_priority() got {priority.numel()} priorities for {index.numel()} indices."
            )
        if not torch.isfinite(priority).all() or (priority < 0).any():
            raise ValueError(
                "Priorities must be finite and >= 0 (e.g. the absolute TD error); got "
                f"min={priority.min().item()}, max={priority.max().item()}."
            )
        if ((index < 0) | (index >= self.capacity)).any():
            raise IndexError(f"update_priority() got indices outside [0, {self.capacity}).")
        keep = self._ready[index]
        if keep.any():
            self.sampler.update_priority(index[keep], priority[keep])

    def update_tensordict_priority(self, td: TensorDictBase) -> None:
        """Read ``td[priority_key]`` and ``td["index"]`` and update the priorities."""
        priority = td.get(self.priority_key, None)
        if priority is None:
            raise KeyError(
                f"update_tensordict_priority() needs {self.priority_key!r} (the loss's priority "
                f"output) in the tensordict."
            )
        index = td.get(keys.INDEX)
        priority = priority.reshape(index.shape[0], -1)
        if priority.shape[1] != 1:
            priority = priority.mean(1)  # e.g. per-quantile errors
        self.update_priority(index, priority.reshape(-1))

    # ------------------------------------------------------------------ checkpointing
    def _config(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "num_envs": self.num_envs,
            "frame_shape": list(self.frame_shape),
            "frame_stack": self.frame_stack,
            "n_step": self.n_step,
            "use_embeddings": self.use_embeddings,
            "embedding_dim": self.embedding_dim if self.use_embeddings else 0,
            "embedding_dtype": str(self.embedding_dtype),
            "prioritized": self.prioritized,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "lane_next": self._lane_next,
            "episode_open": self._episode_open,
            "episode_id": self._episode_id,
            "episode_step": self._episode_step,
            "next_episode_id": self._next_episode_id,
            "ready": self._ready,
            "num_ready": self._num_ready,
            "generator": self._generator.get_state(),
        }

    def _snapshot_fields(self) -> dict[str, torch.Tensor]:
        return {name: self._fields[name] for name in self._field_specs()}

    def dumps(
        self,
        path: str | Path,
        *,
        chunk_store: str | Path | None = None,
        share_with_previous: bool = True,
    ) -> dict[str, int]:
        """Checkpoint everything needed to resume: contents, cursors, episodes, priorities, RNG.

        The storage is cut into chunks of :attr:`chunk_records` slots, one file each. Without
        ``chunk_store`` they are written inside ``path`` (a self-contained dump). With one, only
        the chunks written to since this buffer's previous dump into that store (or since it
        loaded a dump that uses it) are written there, as new immutable files; the dump refers to
        the store's files for the others. ``path`` receives a manifest (every file the dump needs,
        with its size and CRC-32; written last, so a dump without it is incomplete) and the small
        state. Dumping again into the same ``path`` replaces the dump atomically. Remove the
        store files no kept dump needs with :func:`~torchrl_rise.replay.prune_chunk_store`.

        Args:
            path: the dump directory (created if missing).

        Keyword Args:
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
        self._check_open()
        path = Path(path).absolute()
        path.mkdir(parents=True, exist_ok=True)
        token = snapshot.new_token()
        stats = {"bytes_written": 0, "bytes_reused": 0, "files_written": 0, "files_reused": 0}

        def wrote(desc: dict[str, Any]) -> dict[str, Any]:
            stats["bytes_written"] += desc["size"]
            stats["files_written"] += 1
            return desc

        store = None if chunk_store is None else snapshot.normalized(chunk_store)
        root = path / snapshot.CHUNK_DIR if store is None else store
        chunks: list[dict[str, Any]] = []
        if self.storage.initialized:
            root.mkdir(parents=True, exist_ok=True)
            fields = self._snapshot_fields()
            reusable = (
                [None] * len(self._chunk_bounds)
                if store is None
                else self._ledger.reusable(store, share_with_previous=share_with_previous)
            )
            for i, (start, end) in enumerate(self._chunk_bounds):
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
                chunks.append({"file": name, **wrote(desc)})
        state_name = f"state-{token}.pt"
        state = wrote(write_atomic(path / state_name, lambda f: torch.save(self._state(), f)))
        sampler_name = f"sampler-{token}/sampler.pt"
        sampler = wrote(self.sampler.dumps(path / f"sampler-{token}"))
        manifest = {
            "format": snapshot.FORMAT,
            "version": snapshot.VERSION,
            "config": self._config(),
            "fields": [
                {"name": name, "dtype": str(dtype), "shape": list(shape)}
                for name, (dtype, shape) in self._field_specs().items()
            ],
            "num_records": self.capacity + 1,
            "chunk_records": self.chunk_records,
            "storage_initialized": bool(self.storage.initialized),
            "chunk_store": None if store is None else snapshot.relative_store(store, path),
            "chunks": chunks,
            "state": {"file": state_name, **state},
            "sampler": {"file": sampler_name, **sampler},
        }
        wrote(snapshot.write_manifest(path, manifest))
        snapshot.remove_stale(path, snapshot.manifest_files(path, manifest))
        if store is not None:
            self._ledger.committed(store, chunks)
        logger.info(
            "Replay buffer dumped to %s (%d sampleable): %.1f MB written in %d files, %.1f MB "
            "reused in %d chunk files.",
            path,
            len(self),
            stats["bytes_written"] / 1e6,
            stats["files_written"],
            stats["bytes_reused"] / 1e6,
            stats["files_reused"],
        )
        return stats

    def loads(self, path: str | Path, *, chunk_store: str | Path | None = None) -> None:
        """Restore a dump written by :meth:`dumps` (self-contained or into a chunk store).

        Every file is checked against the manifest: all sizes before anything is read, checksums
        while the chunks are copied into this buffer's ``scratch_dir`` (checkpoint files are only
        ever opened read-only). Afterwards the buffer knows which chunk files hold its contents,
        so its next dump into the same store is incremental.

        Args:
            path: a dump directory.

        Keyword Args:
            chunk_store: read the chunks from this store (e.g. the run's own; by default the
                store the manifest names relative to ``path``, see
                :func:`~torchrl_rise.replay.snapshot.chunk_root`).

        Raises:
            FileNotFoundError: ``path`` holds no complete dump.
            ValueError: the dump was written by a buffer with another layout.
            CheckpointCorruptError: a file is missing, truncated or damaged (the message names
                it). Missing files and wrong sizes are found before anything changes; damage
                found while the chunks are copied leaves the buffer empty.
        """
        self._check_open()
        self._settle()
        path = Path(path).absolute()
        manifest = snapshot.read_manifest(path)
        mine, theirs = self._config(), manifest["config"]
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in mine if mine[k] != theirs.get(k)}
            raise ValueError(
                "The checkpoint was written by a buffer with a different layout "
                f"(checkpoint vs this buffer): {json.dumps(diff, default=str)}. Build the buffer "
                f"with the checkpoint's settings."
            )
        fields_want = [
            {"name": name, "dtype": str(dtype), "shape": list(shape)}
            for name, (dtype, shape) in self._field_specs().items()
        ]
        if manifest["fields"] != fields_want or manifest["num_records"] != self.capacity + 1:
            raise ValueError(
                f"The checkpoint's stored fields {manifest['fields']} ({manifest['num_records']} "
                f"records) differ from this buffer's {fields_want} ({self.capacity + 1})."
            )
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
                    self._init_storage()
                fields = self._snapshot_fields()
                for (start, end), chunk in zip(bounds, chunks):
                    snapshot.read_chunk(root / chunk["file"], fields, start, end, chunk)
            self.sampler.loads(sampler_file.parent, data=sampler_data)
        except BaseException:
            self._reset()
            raise
        self._lane_next = state["lane_next"].clone()
        self._episode_open = state["episode_open"].clone()
        self._episode_id = state["episode_id"].clone()
        self._episode_step = state["episode_step"].clone()
        self._next_episode_id = int(state["next_episode_id"])
        self._ready = state["ready"].clone()
        self._num_ready = int(state["num_ready"])
        self._generator.set_state(state["generator"])
        same_chunks = manifest["chunk_records"] == self.chunk_records
        if manifest["chunk_store"] is not None and same_chunks and manifest["storage_initialized"]:
            self._ledger.loaded(root, chunks)
        else:
            self._ledger.forget()
        logger.info("Replay buffer restored from %s (%d sampleable).", path, len(self))

    def _reset(self) -> None:
        """Forget every record (after a failed load overwrote part of the storage)."""
        self.sampler.mark_unready(torch.arange(self.capacity))
        self._lane_next.zero_()
        self._episode_open.zero_()
        self._episode_id.fill_(-1)
        self._episode_step.zero_()
        self._ready.zero_()
        self._num_ready = 0
        self._ledger.forget()

    def close_open_episodes(self) -> None:
        """Treat every lane's current episode as over: the next write starts a new episode.

        Call it when the envs restart without the buffer seeing the episodes end (e.g. after
        resuming from a checkpoint: emulator states are not saved, so the envs begin fresh
        episodes). The unfinished episodes' last steps, lacking an n-step future, stay unsampled;
        nothing is spliced across the gap.
        """
        self._episode_open.zero_()


def _tuple(key: NestedKey) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of shape ``[B, W]``: one ``index_select`` over rows (faster
    than advanced indexing on CPU), shaped ``[B, W, *row_shape]``."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def _copy_into(x: torch.Tensor, out: dict[str, torch.Tensor] | None, name: str) -> torch.Tensor:
    """A contiguous copy of ``x``, into ``out[name]`` when reused buffers are given."""
    if out is None:
        return x.clone(memory_format=torch.contiguous_format)
    buf = out.get(name)
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
        buf = out[name] = torch.empty(
            x.shape, dtype=x.dtype, device=x.device, pin_memory=x.is_pinned()
        )
    return buf.copy_(x)


class _OutputRing:
    """``slots`` sets of output buffers used in turn (batch ``k`` is overwritten by ``k + slots``)."""

    def __init__(self, slots: int = 2, *, pin: bool = False) -> None:
        if slots < 1:
            raise ValueError(f"an output ring needs at least 1 slot, got {slots}.")
        self.slots: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]
        self.pin = pin
        self._next = 0

    def next(self) -> dict[str, torch.Tensor]:
        out = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        return out


def _steps_taken(ends: torch.Tensor) -> torch.Tensor:
    """``m``: steps up to and including the first end flag in each row, else the row length."""
    n = ends.shape[-1]
    first = torch.where(ends, torch.arange(n), n).amin(-1)
    return torch.clamp(first + 1, max=n)


def _unique_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique values of ``x`` and the position of one occurrence of each."""
    values, inverse = torch.unique(x, return_inverse=True)
    pos = torch.empty(values.numel(), dtype=torch.long)
    pos.scatter_(0, inverse, torch.arange(x.numel()))
    return values, pos
