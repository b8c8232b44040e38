"""The transition assembler: n-step returns, frame stacks and embedding windows built from drawn
anchors.

Given the slots of drawn transitions, :class:`TransitionAssembler` reads the records around them
(never across an episode start, the ring's write seam or another lane: validity is arithmetic on
the lane and episode steps) and returns a batch. Both states of a transition are cut from one
gathered block of ``K + n`` embeddings and ``S + n`` frames (views when no row's episode ends within
``n`` steps); rows whose episode ends sooner get their bootstrap window gathered again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from torchrl_rise import keys
from torchrl_rise.replay.options import ReplayOptions, next_key
from torchrl_rise.replay.readiness import steps_taken
from torchrl_rise.replay.storage import StepStorage
from torchrl_rise.replay.writer import LaneWriter

__all__ = ["TransitionAssembler", "copy_into", "n_step_return", "rows"]

OutBuffers = dict[str, torch.Tensor]


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of shape ``[B, W]``: one ``index_select`` over rows (faster
    than advanced indexing on CPU), shaped ``[B, W, *row_shape]``."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def copy_into(x: torch.Tensor, out: OutBuffers | None, name: str) -> torch.Tensor:
    """A contiguous copy of ``x``, into ``out[name]`` when reused buffers are given."""
    if out is None:
        return x.clone(memory_format=torch.contiguous_format)
    buf = out.get(name)
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
        buf = out[name] = torch.empty(
            x.shape, dtype=x.dtype, device=x.device, pin_memory=x.is_pinned()
        )
    return buf.copy_(x)


def n_step_return(
    reward: torch.Tensor,
    m: torch.Tensor,
    gamma_pow: torch.Tensor,
    reward_clip: float | None,
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """The discounted sum of the first ``m`` of ``n`` rewards (last dim), in float64.

    Args:
        reward: ``[..., n]`` per-step rewards.
        m: ``[...]`` steps taken.
        gamma_pow: ``gamma ** arange(n + 1)`` (float64).
        reward_clip: clip each reward to ``[-reward_clip, reward_clip]`` first, if set.
        inside: ``[..., n]`` mask of the rewards that exist (a sequence's tail), if any.
    """
    n = reward.shape[-1]
    if reward_clip is not None:
        reward = reward.clamp(-reward_clip, reward_clip)
    taken = torch.arange(n) < m[..., None]
    weighted = reward.double() * gamma_pow[:n] * taken
    if inside is not None:
        weighted = weighted * inside
    return weighted.sum(-1)


@dataclass
class _Anchors:
    """Per-row facts of a drawn batch that every window gather needs."""

    lane_base: torch.Tensor
    s: torch.Tensor  # lane step
    first: torch.Tensor  # -episode step, [B, 1]: the offset of the episode's first record
    m: torch.Tensor  # steps to the bootstrap record
    short: torch.Tensor  # rows with m < n
    out: OutBuffers | None


class TransitionAssembler:
    """Builds transition batches (see :class:`~torchrl_rise.replay.RiseReplayBuffer` for the keys).

    Args:
        options: the replay's options.
        storage: the records.
        writer: the lanes (their cursors say which records are still stored).

    Keyword Args:
        pin_memory: allocate reused output buffers in pinned memory.

    Example:
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> rb = RiseReplayBuffer(32, frame_shape=(1, 2, 2), context_length=0)
        >>> type(rb.assembler).__name__
        'TransitionAssembler'
        >>> rb.close()
    """

    def __init__(
        self,
        options: ReplayOptions,
        storage: StepStorage,
        writer: LaneWriter,
        *,
        pin_memory: bool = False,
    ) -> None:
        self.options = options
        self.storage = storage
        self.writer = writer
        self.pin_memory = pin_memory
        self.gamma_pow = options.gamma ** torch.arange(options.n_step + 1, dtype=torch.float64)

    def select(self, name: str, slots: torch.Tensor, out: OutBuffers | None) -> torch.Tensor:
        """``field[slots]`` for slots ``[B, W]``: one ``index_select`` straight into an output
        buffer (reused when ``out`` is a ring slot), shaped ``[B, W, *row_shape]``."""
        table = self.storage.fields[name]
        slots = slots.to(table.device)
        shape = (*slots.shape, *table.shape[1:])
        if out is None:
            return rows(table, slots)
        buf = out.get(name)
        if buf is None or buf.shape != shape or buf.dtype != table.dtype:
            pin = self.pin_memory and table.device.type == "cpu"
            buf = out[name] = torch.empty(
                shape, dtype=table.dtype, device=table.device, pin_memory=pin
            )
        torch.index_select(table, 0, slots.reshape(-1), out=buf.view(-1, *table.shape[1:]))
        return buf

    def gather(
        self, index: torch.Tensor, weight: torch.Tensor, out: OutBuffers | None = None
    ) -> TensorDict:
        """The transitions anchored at ``index`` (``_weight`` = ``weight``), into ``out``."""
        o = self.options
        L, n, S = o.lane_capacity, o.n_step, o.frame_stack
        f = self.storage.fields
        B = index.numel()
        s = f["lane_step"][index]
        # n-step return and discount: steps t .. t+n-1 of the record's lane.
        lane_base = index - index % L
        fut = lane_base[:, None] + (s[:, None] + torch.arange(n)) % L
        terminated, truncated = f["terminated"][fut], f["truncated"][fut]
        m = steps_taken(terminated | truncated)
        ret = n_step_return(f["reward"][fut], m, self.gamma_pow, o.reward_clip)
        last = torch.arange(B), m - 1
        term_m, trunc_m = terminated[last], truncated[last]
        discount = self.gamma_pow[m] * (~term_m)
        # Rows whose bootstrap step is t+n (no episode end within n steps): both windows are
        # views of one block of rows t-W+1 .. t+n. Rows with m < n get their bootstrap window
        # gathered separately (a fix-up), which needs the next window as its own tensor.
        first = -f["episode_step"][index][:, None]
        rows_ = _Anchors(lane_base, s, first, m, (m < n).nonzero().squeeze(-1), out)
        # Frame stacks at t and t+m, clamped to the episode's first frame ("same" padding).
        pixels, next_pixels, _, _ = self._windows(rows_, "frame", S, True, None)
        batch = {
            o.pixels_key: pixels.flatten(1, 2),
            o.action_key: f["action"][index],
            next_key(o.pixels_key): next_pixels.flatten(1, 2),
            next_key(o.reward_key): ret.float()[:, None],
            ("next", keys.DISCOUNT): discount.float()[:, None],
            next_key(o.terminated_key): term_m[:, None],
            next_key(o.truncated_key): trunc_m[:, None],
            next_key(o.done_key): (term_m | trunc_m)[:, None],
            keys.STEPS_TO_NEXT: m[:, None],
            keys.INDEX: index,
            keys.WEIGHT: weight,
        }
        if o.use_embeddings:
            self._add_context(batch, rows_, index)
        td = TensorDict(batch, batch_size=[B])
        if o.storage_device is not None and o.storage_device.type != "cpu":
            td = td.to(o.storage_device, non_blocking=True)
        return td

    def _add_context(self, batch: dict, a: _Anchors, index: torch.Tensor) -> None:
        """Windows of K embeddings ending at t and at t+m. Entries before the episode start or
        older than the lane's oldest stored record are invalid: they are read from the storage's
        extra all-zero record, so no masking pass over the window is needed."""
        o = self.options
        L = o.lane_capacity
        oldest = (self.writer.lane_next[index // L] - L)[:, None]

        def valid_fn(off: torch.Tensor, sel: torch.Tensor | None = None) -> torch.Tensor:
            if sel is None:
                return (off >= a.first) & (a.s[:, None] + off >= oldest)
            return (off >= a.first[sel]) & (a.s[sel, None] + off >= oldest[sel])

        ctx, next_ctx, mask, next_mask = self._windows(
            a, "embedding", o.context_length, False, valid_fn
        )
        batch[o.context_key] = ctx
        batch[o.context_mask_key] = mask
        batch[next_key(o.context_key)] = next_ctx
        batch[next_key(o.context_mask_key)] = next_mask

    def _windows(
        self,
        a: _Anchors,
        name: str,
        span: int,
        clamp: bool,
        valid_fn: Callable[..., torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Current and next windows of ``span`` rows, gathered once as ``span + n`` rows."""
        L, n, zero = self.options.lane_capacity, self.options.n_step, self.storage.zero
        off = torch.arange(-span + 1, n + 1).expand(a.s.numel(), -1)
        if clamp:
            off = off.maximum(a.first)
        valid = valid_fn(off) if valid_fn is not None else None
        slots = a.lane_base[:, None] + (a.s[:, None] + off) % L
        if valid is not None:
            slots = torch.where(valid, slots, zero)
        block = self.select(name, slots, a.out)
        cur, nxt = block[:, :span], block[:, n:]
        vcur = vnxt = None
        if valid is not None:
            vcur, vnxt = valid[:, :span], valid[:, n:]
        if a.short.numel():
            # The next windows as their own tensor; the rows with m < n re-gathered.
            short = a.short
            nxt = copy_into(nxt, a.out, f"next_{name}")
            off_s = a.m[short, None] + torch.arange(-span + 1, 1)
            if clamp:
                off_s = off_s.maximum(a.first[short])
            slots_s = a.lane_base[short, None] + (a.s[short, None] + off_s) % L
            if valid is not None:
                vnxt = vnxt.clone()
                v_s = valid_fn(off_s, short)
                vnxt.index_copy_(0, short, v_s)
                slots_s = torch.where(v_s, slots_s, zero)
            # index_copy_: advanced-index assignment into the big tensor is far slower on CPU.
            table = self.storage.fields[name]
            nxt.index_copy_(0, short.to(nxt.device), rows(table, slots_s.to(table.device)))
        return cur, nxt, vcur, vnxt
