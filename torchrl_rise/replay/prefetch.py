"""Prefetching replay batches: the next batch is assembled while the learner updates on this one."""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING

from tensordict import TensorDict

if TYPE_CHECKING:
    from torchrl_rise.replay.buffer import RiseReplayBuffer

__all__ = ["Prefetcher"]


class Prefetcher:
    """Batches of a :class:`~torchrl_rise.replay.RiseReplayBuffer`, each assembled in the
    background while the previous one is in use.

    Each call of :meth:`next` returns the batch assembled since the previous call and, before
    returning, draws the following batch and starts gathering it on a worker thread (the gather's
    ``index_select`` releases the GIL, so it overlaps the learner's update on a CPU with a spare
    core, and a GPU learner's whole step).

    Priorities (Ape-X-style prefetch): batch ``k + 1`` is drawn when batch ``k`` is handed out,
    i.e. before the caller writes batch ``k``'s priorities, so those updates (and data extended
    meanwhile) first affect batch ``k + 2``. The draws happen in the caller's thread in a fixed
    order, so a run is deterministic for a given seed all the same. ``enabled=False`` draws and
    gathers each batch inside :meth:`next` (after the previous update), exactly as
    :meth:`RiseReplayBuffer.sample` does.

    Validity: batches live in two reused output buffers (pinned if the buffer has
    ``pin_memory=True``); a batch returned by :meth:`next` stays valid until the next call of
    :meth:`next`. Copy (``batch.clone()``) what must live longer.

    Args:
        buffer: the replay buffer.
        batch_size: transitions per batch (the buffer's ``batch_size`` if ``None``).

    Keyword Args:
        enabled: prefetch in the background (default) or sample synchronously.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> rb = RiseReplayBuffer(64, frame_shape=(1, 4, 4), frame_stack=2, embedding_dim=4,
        ...                       context_length=3, n_step=2, batch_size=8, seed=0)
        >>> T = 20
        >>> rb.extend(TensorDict({
        ...     "pixels": torch.zeros(T, 2, 4, 4, dtype=torch.uint8),
        ...     "rise_embedding": torch.zeros(T, 4).half(),
        ...     "action": torch.zeros(T, dtype=torch.long),
        ...     ("next", "reward"): torch.ones(T, 1),
        ...     ("next", "terminated"): torch.zeros(T, 1, dtype=torch.bool),
        ... }, batch_size=[T]))
        >>> with Prefetcher(rb) as batches:
        ...     for _ in range(3):
        ...         batch = batches.next()  # the next one is being gathered meanwhile
        ...         batch["td_error"] = torch.rand(8)
        ...         rb.update_tensordict_priority(batch)
        >>> batch["rise_context"].shape
        torch.Size([8, 3, 4])
    """

    def __init__(
        self, buffer: RiseReplayBuffer, batch_size: int | None = None, *, enabled: bool = True
    ) -> None:
        self.buffer = buffer
        self.batch_size = buffer.batch_size if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.enabled = bool(enabled)
        self._ring = buffer.output_ring(2)
        self._future: concurrent.futures.Future | None = None

    def next(self) -> TensorDict:
        """The next batch (valid until the next call); starts assembling the one after it."""
        if not self.enabled:
            return self.buffer._assemble(*self.buffer._draw(self.batch_size), self._ring)
        future = self._future
        if future is None:
            future = self.buffer.sample_async(self.batch_size, ring=self._ring)
        self._future = None
        batch = future.result()
        self._future = self.buffer.sample_async(self.batch_size, ring=self._ring)
        return batch

    __next__ = next

    def __iter__(self) -> Prefetcher:
        return self

    def close(self) -> None:
        """Wait for the batch in flight and drop it (its draw is not given back)."""
        future, self._future = self._future, None
        if future is not None:
            concurrent.futures.wait([future])

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
