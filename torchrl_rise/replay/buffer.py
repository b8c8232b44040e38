"""Context-window replay: every env step stored once, frame stacks and embedding windows built at
sample time.

:class:`RiseReplayBuffer` is a thin composition of roles, each in its own module: a storage
(:mod:`~torchrl_rise.replay.storage`, in a locked :mod:`~torchrl_rise.replay.scratch` directory), a
writer of per-env lanes and the episode index (:mod:`~torchrl_rise.replay.writer`), anchor readiness
(:mod:`~torchrl_rise.replay.readiness`) mirrored into the prioritized
:class:`~torchrl_rise.replay.ReadinessSampler`, an assembler of transitions
(:mod:`~torchrl_rise.replay.assembler`), output reuse and background gathers
(:mod:`~torchrl_rise.replay.output`) and snapshots (:mod:`~torchrl_rise.replay.checkpoint`), wired
by :class:`~torchrl_rise.replay.composition.ComposedReplay`.

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.replay import snapshot
from torchrl_rise.replay.assembler import TransitionAssembler
from torchrl_rise.replay.composition import ComposedReplay
from torchrl_rise.replay.options import ReplayOptions
from torchrl_rise.replay.output import OutputRing
from torchrl_rise.replay.readiness import TransitionReadiness
from torchrl_rise.replay.scratch import InsufficientDiskSpaceError, ScratchInUseError
from torchrl_rise.replay.storage import record_nbytes, step_field_specs

__all__ = ["InsufficientDiskSpaceError", "RiseReplayBuffer", "ScratchInUseError"]

# Kept under its old name for code that imported it from here.
_OutputRing = OutputRing


def _arguments(local: dict[str, Any]) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()``."""
    return {name: value for name, value in local.items() if name not in ("self", "__class__")}


class RiseReplayBuffer(ComposedReplay):
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
        self._setup(ReplayOptions(**_arguments(locals())))

    # ------------------------------------------------------------------ sizes
    @property
    def nbytes_per_transition(self) -> int:
        """Bytes of memmap storage per stored step (one record), whatever ``context_length`` is:
        frame, embedding, action, reward, three flags, episode id, lane step, episode step."""
        return record_nbytes(self._field_specs())

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

    def _make_readiness(self) -> TransitionReadiness:
        """The readiness role (a subclass samples other anchors)."""
        return TransitionReadiness(
            self.writer,
            self.step_storage,
            self.sampler,
            frame_stack=self.frame_stack,
            lookahead=self.n_step,
        )

    def _make_assembler(self) -> TransitionAssembler:
        """The assembler role (a subclass builds other samples)."""
        return TransitionAssembler(
            self.options, self.step_storage, self.writer, pin_memory=self.pin_memory
        )

    def _field_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """dtype and per-record shape of every stored field, in snapshot order."""
        return step_field_specs(self.frame_shape, self.options.embedding_spec)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, num_envs={self.num_envs}, "
            f"frame_shape={self.frame_shape}, frame_stack={self.frame_stack}, "
            f"context_length={self.context_length}, n_step={self.n_step}, gamma={self.gamma}, "
            f"prioritized={self.prioritized}, len={len(self)}, scratch_dir={str(self.scratch_dir)!r})"
        )

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

    # ------------------------------------------------------------------ role state, by old names
    _lane_next = property(lambda self: self.writer.lane_next, doc="Each lane's cursor.")
    _next_episode_id = property(lambda self: self.writer.next_episode_id, doc="Next episode id.")
    _episode_open = property(lambda self: self.writer.episode_open, doc="Open episodes.")
    _episode_id = property(lambda self: self.writer.episode_id, doc="Each lane's episode id.")
    _episode_step = property(lambda self: self.writer.episode_step, doc="Next episode step.")
    _num_ready = property(lambda self: self.readiness.num_ready, doc="Sampleable slots.")
    _lane_base = property(lambda self: self.writer.lane_base, doc="Each lane's first slot.")
    _fields = property(lambda self: self.step_storage.fields, doc="The stored fields.")
    _zero = property(lambda self: self.step_storage.zero, doc="The all-zero pad slot.")
    _ready = property(lambda self: self.readiness.ready, doc="Which slots are sampleable.")
    _lock_fd = property(lambda self: self.scratch.lock_fd, doc="The scratch lock's descriptor.")
    _chunk_bounds = property(lambda self: self.snapshotter.chunk_bounds, doc="Chunk slot ranges.")
