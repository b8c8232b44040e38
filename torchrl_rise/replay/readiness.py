"""The anchor-readiness role: which slots hold a sampleable anchor, kept in step with the sampler.

An *anchor* is the slot a sample is identified by: a transition's step (:class:`TransitionReadiness`)
or a sequence's first learning step (:class:`~torchrl_rise.replay.sequence_parts.SequenceReadiness`).
After every write, :meth:`AnchorReadiness.refresh` recomputes readiness of the slots that write can
have changed (the anchors whose future reaches the new records, and the oldest ``S - 1`` records,
whose frame history may just have been overwritten) and switches them on or off in the
:class:`~torchrl_rise.replay.ReadinessSampler` (a slot that is not ready has weight zero).
"""

from __future__ import annotations

from typing import Any

import torch

from torchrl_rise.replay.sampler import ReadinessSampler
from torchrl_rise.replay.storage import StepStorage
from torchrl_rise.replay.writer import LaneWriter

__all__ = ["AnchorReadiness", "TransitionReadiness", "steps_taken", "unique_first"]


def steps_taken(ends: torch.Tensor) -> torch.Tensor:
    """``m``: steps up to and including the first end flag in each row, else the row length."""
    n = ends.shape[-1]
    first = torch.where(ends, torch.arange(n), n).amin(-1)
    return torch.clamp(first + 1, max=n)


def unique_first(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique values of ``x`` and the position of one occurrence of each."""
    values, inverse = torch.unique(x, return_inverse=True)
    pos = torch.empty(values.numel(), dtype=torch.long)
    pos.scatter_(0, inverse, torch.arange(x.numel()))
    return values, pos


class AnchorReadiness:
    """Readiness of every slot (``ready``, ``num_ready``), mirrored into ``sampler``.

    Subclasses say how far an anchor's future reaches (:attr:`lookahead`) and when it is ready
    (:meth:`is_ready`).

    Args:
        writer: the lanes (cursors) the anchors live in.
        storage: the stored records.
        sampler: the sampler whose slots are switched on and off.

    Keyword Args:
        frame_stack: ``S``.
        lookahead: how many records after an anchor its readiness depends on.
    """

    def __init__(
        self,
        writer: LaneWriter,
        storage: StepStorage,
        sampler: ReadinessSampler,
        *,
        frame_stack: int,
        lookahead: int,
    ) -> None:
        self.writer = writer
        self.lookahead = lookahead
        self.storage = storage
        self.sampler = sampler
        self.frame_stack = frame_stack
        self.lane_capacity = writer.lane_capacity
        self.capacity = storage.capacity
        self.ready = torch.zeros(self.capacity, dtype=torch.bool)
        self.num_ready = 0

    def refresh(self, old_next: torch.Tensor, max_written: int) -> None:
        """Recompute readiness of every slot a write can have changed."""
        L, S = self.lane_capacity, self.frame_stack
        new_next = self.writer.lane_next
        oldest = new_next - L  # first lane step still stored
        # Anchors whose future may have completed, the new records, and the oldest S - 1 records
        # (their frame history may just have been overwritten).
        recent = new_next[:, None] - torch.arange(self.lookahead + max_written, 0, -1)
        seam = oldest[:, None] + torch.arange(S - 1)
        steps = torch.cat([recent, seam], 1)
        lanes = torch.arange(new_next.numel())[:, None].expand_as(steps)
        keep = (steps >= oldest.clamp_min(0)[:, None]) & (steps < new_next[:, None])
        steps, lanes = steps[keep], lanes[keep]
        slot = lanes * L + steps % L
        slot, first = unique_first(slot)
        steps, lanes = steps[first], lanes[first]
        ready = self.is_ready(slot, lanes, steps)
        written = steps >= old_next[lanes]
        was = self.ready[slot]
        newly = ready & (written | ~was)
        lost = was & ~ready
        self.ready[slot] = ready
        self.num_ready += int(ready.sum()) - int(was.sum())
        self.sampler.mark_unready(slot[lost])
        self.sampler.mark_ready(slot[newly])

    def is_ready(self, slot: torch.Tensor, lanes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Whether the anchors at ``slot`` (lane ``lanes``, lane step ``s``) may be sampled."""
        raise NotImplementedError

    def frames_stored(self, slot: torch.Tensor, lanes: torch.Tensor, s: torch.Tensor):
        """Not a final record, and its frame stack (back to its episode's start) still stored."""
        f = self.storage.fields
        oldest = self.writer.lane_next[lanes] - self.lane_capacity
        ep = f["episode_step"][slot]
        ok = ~f["final"][slot]
        ok &= torch.maximum(s - (self.frame_stack - 1), s - ep) >= oldest
        return ok

    def check(self, index: torch.Tensor) -> torch.Tensor:
        """Which of ``index`` (any slots) hold a sampleable anchor."""
        return self.ready[index]

    def sampleable_index(self) -> torch.Tensor:
        """The ready slots, ascending."""
        return self.ready.nonzero().squeeze(-1)

    def state(self) -> dict[str, Any]:
        """``ready`` and ``num_ready`` (for a snapshot)."""
        return {"ready": self.ready, "num_ready": self.num_ready}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.ready = state["ready"].clone()
        self.num_ready = int(state["num_ready"])

    def reset(self) -> None:
        """No slot is ready (the sampler's too)."""
        self.sampler.mark_unready(torch.arange(self.capacity))
        self.ready.zero_()
        self.num_ready = 0


class TransitionReadiness(AnchorReadiness):
    """A step is ready when its n-step future is written (``n`` more records of its episode, or
    the episode's final record) and its frame stack is still stored.

    ``lookahead`` is ``n``; the arguments are :class:`AnchorReadiness`'s.

    Example:
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> rb = RiseReplayBuffer(32, frame_shape=(1, 2, 2), context_length=0)
        >>> type(rb.readiness).__name__, len(rb)
        ('TransitionReadiness', 0)
        >>> rb.close()
    """

    def is_ready(self, slot: torch.Tensor, lanes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        L, n = self.lane_capacity, self.lookahead
        f = self.storage.fields
        nxt = self.writer.lane_next[lanes]
        ok = self.frames_stored(slot, lanes, s)
        offsets = torch.arange(n)
        fut = (s[:, None] + offsets) % L + (lanes * L)[:, None]
        written = (s[:, None] + offsets) < nxt[:, None]
        ends = (f["terminated"][fut] | f["truncated"][fut]) & written
        m = steps_taken(ends)
        # The bootstrap record must be of the anchor's episode: after close_open_episodes() the
        # next records belong to a new episode, and nothing may be read across that cut.
        boot = (s + m) % L + lanes * L
        return ok & (s + m < nxt) & (f["episode"][boot] == f["episode"][slot])
