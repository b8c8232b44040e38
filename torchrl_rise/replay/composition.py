"""The composition of the replay roles, shared by the transition and the sequence replay.

:class:`ComposedReplay` wires a :class:`~torchrl_rise.replay.scratch.ScratchDir`, a
:class:`~torchrl_rise.replay.storage.StepStorage`, a :class:`~torchrl_rise.replay.writer.LaneWriter`,
a :class:`~torchrl_rise.replay.ReadinessSampler` with the anchor readiness that feeds it, an
assembler and a :class:`~torchrl_rise.replay.checkpoint.ReplaySnapshotter`, and exposes the buffer
API (``extend``, ``sample``, ``sample_async``, ``gather``, priorities, ``dumps``/``loads``,
``close``). Subclasses choose the stored fields, the readiness rule and the assembler:
:class:`~torchrl_rise.replay.RiseReplayBuffer` (transitions with context windows) and
:class:`~torchrl_rise.replay.SequenceReplayBuffer` (R2D2 sequences).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage
from torchrl.envs import Compose, Transform

from torchrl_rise import keys
from torchrl_rise.replay.checkpoint import ReplaySnapshotter
from torchrl_rise.replay.options import KEY_OPTIONS, ReplayOptions
from torchrl_rise.replay.output import BackgroundGather, OutputRing
from torchrl_rise.replay.readiness import AnchorReadiness
from torchrl_rise.replay.sampler import ReadinessSampler
from torchrl_rise.replay.scratch import InsufficientDiskSpaceError, ScratchDir
from torchrl_rise.replay.storage import FIELD_NAMES, StepStorage, record_nbytes
from torchrl_rise.replay.writer import LaneWriter

__all__ = ["ComposedReplay"]

# The buffer's log records keep the name they always had.
logger = logging.getLogger("torchrl_rise.replay.buffer")

# The options a buffer exposes as attributes of the same name.
_SETTINGS = (
    *KEY_OPTIONS,
    *("capacity", "num_envs", "lane_capacity", "frame_shape", "frame_stack", "use_embeddings"),
    *("context_length", "embedding_dim", "embedding_dtype", "n_step", "gamma", "prioritized"),
    *("batch_size", "reward_clip", "embedding_key", "chunk_records", "storage_device"),
    "reuse_output",
)


def _make_sampler(options: ReplayOptions) -> ReadinessSampler:
    """The PER sampler (uniform: alpha = beta = 0) with its own seeded generator."""
    generator = torch.Generator()
    seed = options.seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    generator.manual_seed(seed)
    device = options.storage_device
    return ReadinessSampler(
        options.capacity,
        options.alpha if options.prioritized else 0.0,
        options.beta if options.prioritized else 0.0,
        eps=options.eps,
        importance_weights=options.importance_weights,
        stratified=options.stratified,
        max_priority_floor=options.max_priority_floor,
        tree=options.tree,
        device=device if options.tree != "torchrl" and device else "cpu",
        generator=generator,
    )


def _checked_priorities(
    index: torch.Tensor, priority: torch.Tensor | float, capacity: int
) -> torch.Tensor:
    """``priority`` as one finite, non-negative float per index (raises otherwise)."""
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
    if ((index < 0) | (index >= capacity)).any():
        raise IndexError(f"update_priority() got indices outside [0, {capacity}).")
    return priority


def _gather_takes_ring(cls: type) -> bool:
    """Whether ``cls._gather`` takes a ``ring`` (cached per class)."""
    takes = cls.__dict__.get("_takes_ring_cache")
    if takes is None:
        takes = "ring" in inspect.signature(cls._gather).parameters
        cls._takes_ring_cache = takes
    return takes


class ComposedReplay:
    """A replay buffer built from role objects (see the module docstring); not used directly.

    Subclasses implement :meth:`_field_specs`, :meth:`_make_readiness`, :meth:`_make_assembler`
    and :meth:`_config`, and call :meth:`_setup` with their
    :class:`~torchrl_rise.replay.options.ReplayOptions`.

    Example:
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> rb = RiseReplayBuffer(32, frame_shape=(1, 2, 2), context_length=0)
        >>> isinstance(rb, ComposedReplay), type(rb.writer).__name__
        (True, 'LaneWriter')
        >>> rb.close()
    """

    def _setup(self, options: ReplayOptions) -> None:
        """Build the roles (storage, writer, sampler, readiness, assembler, snapshotter)."""
        self.options = options
        for name in _SETTINGS:
            setattr(self, name, getattr(options, name))
        self.pin_memory = options.pin_memory and options.storage_device is None
        if self.pin_memory and not torch.cuda.is_available():
            logger.info("pin_memory=True without CUDA: output buffers are not pinned (a no-op).")
            self.pin_memory = False
        self._rings: dict[Any, OutputRing] = {}
        # Writes to the storage wait for in-flight background gathers (see sample_async).
        self._background = BackgroundGather()
        self._transform = Compose()
        self._closed = False
        specs = self._field_specs()
        extra = tuple(name for name in specs if name not in FIELD_NAMES)
        self.scratch = ScratchDir(options.scratch_dir, field_names=FIELD_NAMES + extra)
        self.scratch_dir = self.scratch.path
        if options.check_disk:
            try:
                per = record_nbytes(specs)
                self.scratch.check_disk((self.capacity + 1) * per, self.capacity + 1, per)
            except BaseException:
                self.scratch.release_lock()
                raise
        zero = ("embedding",) if self.use_embeddings else ()
        self.step_storage = StepStorage(
            self.capacity,
            specs,
            self.scratch,
            device=self.storage_device,
            device_names=options.device_names,
            zero_names=zero,
        )
        self.sampler = _make_sampler(options)
        self._generator = self.sampler.generator
        self.writer = LaneWriter(options)
        self.readiness = self._make_readiness()
        self.assembler = self._make_assembler()
        self.snapshotter = ReplaySnapshotter(self.step_storage, self.sampler, self.chunk_records)

    def _field_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """dtype and per-record shape of every stored field, in snapshot order."""
        raise NotImplementedError

    def _make_readiness(self) -> AnchorReadiness:
        """The readiness role: which anchors may be drawn."""
        raise NotImplementedError

    def _make_assembler(self) -> Any:
        """The assembler role: its ``gather(index, weight, ...)`` builds a batch from anchors."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """The layout a dump must match to be loaded."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sizes and settings
    @property
    def storage(self) -> LazyMemmapStorage | None:
        """The TorchRL storage of the records (``None`` once closed)."""
        return self.step_storage.memmap

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
        return self.readiness.num_ready

    # ------------------------------------------------------------------ lifetime
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
        self._background.close()
        self._closed = True
        self._rings = {}
        self.step_storage.close()
        self.scratch.release()

    def cleanup(self) -> None:
        """Same as :meth:`close` (kept for existing callers)."""
        self.close()

    def __enter__(self) -> ComposedReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    @torch.no_grad()
    def extend(self, td: TensorDictBase) -> None:
        """Write consecutive steps of every env (see the class docstring for the layout)."""
        self._check_open()
        td = self.writer.lanes_view(td)
        if td.batch_size[1] == 0:
            return
        write = self.writer.prepare(td)
        self._settle()  # a background gather must not read slots this write replaces
        if not self.step_storage.initialized:
            self._init_storage()
        self.step_storage.write(write.index, write.data)
        self.snapshotter.mark(write.index)
        old_next = self.writer.commit(write)
        self.readiness.refresh(old_next, int(write.n_rec.max()))

    def _init_storage(self) -> None:
        """Create the memmap files (writing the all-zero pad record) and allocate their blocks."""
        try:
            self.step_storage.initialize()
        except InsufficientDiskSpaceError:
            self.close()  # frees what was allocated; a sparse storage must not be written
            raise
        self.snapshotter.ledger.forget()

    def close_open_episodes(self) -> None:
        """Treat every lane's current episode as over: the next write starts a new episode.

        Call it when the envs restart without the buffer seeing the episodes end (e.g. after
        resuming from a checkpoint: emulator states are not saved, so the envs begin fresh
        episodes). The unfinished episodes' last steps, lacking an n-step future, stay unsampled;
        nothing is spliced across the gap.
        """
        self.writer.episode_open.zero_()

    # ------------------------------------------------------------------ sampling
    def _draw(self, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots and importance weights of one batch (the only use of the sampling RNG)."""
        self._check_open()
        batch_size = self.batch_size if batch_size is None else batch_size
        if len(self) == 0:
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
        self, batch_size: int | None = None, *, ring: OutputRing | None = None
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
        return self._background.submit(self._assemble, index, weight, ring)

    def _settle(self) -> None:
        """Wait for every background gather (before anything writes to the storage)."""
        self._background.settle()

    def _ring(self, name: str, batch_size: int) -> OutputRing:
        ring = self._rings.get((name, batch_size))
        if ring is None:
            ring = self._rings[(name, batch_size)] = self.output_ring()
        return ring

    def output_ring(self, slots: int = 2) -> OutputRing:
        """A new set of ``slots`` reused output buffers (pinned if ``pin_memory``), for
        :meth:`sample_async`."""
        return OutputRing(slots, pin=self.pin_memory)

    @torch.no_grad()
    def gather(self, index: torch.Tensor) -> TensorDict:
        """Assemble the transitions stored at the slots ``index`` (all must be sampleable).

        ``_weight`` is 1. Useful for evaluation and tests; training uses :meth:`sample`. The
        batch is always freshly allocated.
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        bad = (index < 0) | (index >= self.capacity)
        ready = self.readiness.check(index.clamp(0, self.capacity - 1))
        if bad.any() or not ready.all():
            raise IndexError(
                "gather() got slots that hold no sampleable transition: "
                f"{index[bad | ~ready].tolist()[:10]}; see sampleable_index()."
            )
        return self._gather(index, torch.ones(index.numel()))

    def sampleable_index(self) -> torch.Tensor:
        """The slots that hold a sampleable transition, ascending."""
        return self.readiness.sampleable_index()

    def _assemble(
        self, index: torch.Tensor, weight: torch.Tensor, ring: OutputRing | None
    ) -> TensorDict:
        """``_gather`` into ``ring`` where the class's ``_gather`` takes one (a subclass written
        against the two-argument ``_gather(index, weight)`` gets fresh batches)."""
        if ring is None or not _gather_takes_ring(type(self)):
            batch = self._gather(index, weight)
        else:
            batch = self._gather(index, weight, ring)
        return self._transform(batch) if len(self._transform) else batch

    # ------------------------------------------------------------------ TorchRL parts
    @property
    def transform(self) -> Compose:
        """The TorchRL transforms applied to every sampled batch (:meth:`sample`,
        :meth:`sample_async`, the :class:`~torchrl_rise.replay.Prefetcher`), in order."""
        return self._transform

    def append_transform(self, transform: Transform) -> ComposedReplay:
        """Apply ``transform`` (a TorchRL ``Transform``) to sampled batches, after the others."""
        self._transform.append(transform)
        return self

    def set_sampler(self, sampler: ReadinessSampler) -> None:
        """Draw anchors with ``sampler`` (e.g. a subclass with another drawing rule) from now on.

        Only before the first :meth:`extend`: which slots are ready is kept in the sampler. The
        buffer's ``prioritized`` setting still decides whether priorities are written and
        importance weights returned.
        """
        if not isinstance(sampler, ReadinessSampler) or sampler.max_capacity != self.capacity:
            raise TypeError(
                f"set_sampler() takes a ReadinessSampler of {self.capacity} slots (it switches "
                f"slots on and off as they become sampleable); got {sampler!r}."
            )
        if self.step_storage.initialized:
            raise RuntimeError("set_sampler() must come before the first extend().")
        self.sampler = self.readiness.sampler = self.snapshotter.sampler = sampler
        self._generator = sampler.generator

    def _gather(
        self, index: torch.Tensor, weight: torch.Tensor, ring: OutputRing | None = None
    ) -> TensorDict:
        return self.assembler.gather(index, weight, None if ring is None else ring.next())

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
        priority = _checked_priorities(index, priority, self.capacity)
        keep = self.readiness.check(index)
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
    def _state(self) -> dict[str, Any]:
        state = {**self.writer.state(), **self.readiness.state()}
        state["generator"] = self._generator.get_state()
        return state

    def dumps(
        self,
        path: str | Path,
        *,
        chunk_store: str | Path | None = None,
        share_with_previous: bool = True,
    ) -> dict[str, int]:
        """Checkpoint everything needed to resume: contents, cursors, episodes, priorities, RNG.

        The storage goes in chunk files of :attr:`chunk_records` slots (into ``path``, or only the
        chunks written since the previous dump into ``chunk_store``), with a CRC manifest written
        last; see :meth:`~torchrl_rise.replay.checkpoint.ReplaySnapshotter.dumps` for the
        arguments and the guarantees. Returns ``{"bytes_written", "bytes_reused",
        "files_written", "files_reused"}``.
        """
        self._check_open()
        path = Path(path).absolute()
        stats = self.snapshotter.dumps(
            path,
            state=self._state(),
            config=self._config(),
            chunk_store=chunk_store,
            share_with_previous=share_with_previous,
        )
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

        Every file is checked against the manifest (sizes first, then CRCs while the chunks are
        copied); see :meth:`~torchrl_rise.replay.checkpoint.ReplaySnapshotter.loads` for the
        arguments and the errors raised. The next dump into the same store is incremental.
        """
        self._check_open()
        self._settle()
        path = Path(path).absolute()
        state = self.snapshotter.loads(
            path,
            config=self._config(),
            chunk_store=chunk_store,
            initialize=self._init_storage,
            reset=self._reset,
        )
        self.writer.load_state(state)
        self.readiness.load_state(state)
        self._generator.set_state(state["generator"])
        logger.info("Replay buffer restored from %s (%d sampleable).", path, len(self))

    def _reset(self) -> None:
        """Forget every record (after a failed load overwrote part of the storage)."""
        self.readiness.reset()
        self.writer.reset()
        self.snapshotter.ledger.forget()
