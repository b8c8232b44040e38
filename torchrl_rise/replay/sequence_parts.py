"""The sequence roles of the R2D2 replay: which sequence starts are sampleable, and how a sequence
of burn-in + learning + bootstrap positions is assembled from drawn starts.

Both work on the same lanes, records and storage as the transition roles (see
:class:`~torchrl_rise.replay.SequenceReplayBuffer` for the layout and the keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from torchrl_rise import keys
from torchrl_rise.replay.assembler import n_step_return, rows
from torchrl_rise.replay.options import ReplayOptions, next_key
from torchrl_rise.replay.readiness import AnchorReadiness, steps_taken
from torchrl_rise.replay.storage import StepStorage
from torchrl_rise.replay.writer import LaneWriter

__all__ = ["STATE_FIELDS", "SequenceAssembler", "SequenceLayout", "SequenceReadiness"]

STATE_FIELDS = ("state_h", "state_c")


@dataclass
class SequenceLayout:
    """What a sequence covers and which extra keys it reads and writes.

    Attributes:
        burn_in, learning_length, period: see :class:`~torchrl_rise.replay.SequenceReplayBuffer`.
        stores_state: whether the actor's ``(h, c)`` is stored per step.
        state_dim: the LSTM hidden size (0: no state keys in samples when not stored).
        recurrent_state_keys, sequence_mask_key, learn_mask_key: the keys written by a sample.
    """

    burn_in: int
    learning_length: int
    period: int
    stores_state: bool
    state_dim: int
    recurrent_state_keys: tuple
    sequence_mask_key: object
    learn_mask_key: object


class SequenceReadiness(AnchorReadiness):
    """A sequence start is ready when its episode step is a multiple of ``period``, its frame stack
    is stored, and every position up to ``t0 + learning_length + n_step - 1`` is written or its
    episode ended before (its final record is written).

    Example:
        >>> from torchrl_rise.replay import SequenceReplayBuffer
        >>> rb = SequenceReplayBuffer(64, frame_shape=(1, 2, 2), frame_stack=1, burn_in=1,
        ...                           learning_length=2, period=1, n_step=1, state_dim=2)
        >>> type(rb.readiness).__name__
        'SequenceReadiness'
        >>> rb.close()

    Keyword Args:
        period: episode steps between sequence starts.
        **kwargs: :class:`~torchrl_rise.replay.readiness.AnchorReadiness`'s (``lookahead``:
            ``learning_length + n_step``).
    """

    def __init__(self, *args: Any, period: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.period = period

    def is_ready(self, slot: torch.Tensor, lanes: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        L = self.lane_capacity
        f = self.storage.fields
        ok = self.frames_stored(slot, lanes, s) & (f["episode_step"][slot] % self.period == 0)
        # every position up to the last bootstrap is written, or the episode ended before it
        q = s[:, None] + torch.arange(self.lookahead)
        qslot = (lanes * L)[:, None] + q % L
        valid = (f["lane_step"][qslot] == q) & (f["episode"][qslot] == f["episode"][slot][:, None])
        count = valid.long().cumprod(1).sum(1)
        last = qslot.gather(1, (count - 1).clamp_min(0)[:, None]).squeeze(1)
        return ok & (count > 0) & ((count == q.shape[1]) | f["final"][last])


class SequenceAssembler:
    """Builds R2D2 sequence batches from drawn sequence starts.

    Args:
        options: the replay's options.
        layout: the sequence settings.
        storage: the records.
        writer: the lanes (their cursors say which records are still stored).

    Example:
        >>> from torchrl_rise.replay import SequenceReplayBuffer
        >>> rb = SequenceReplayBuffer(64, frame_shape=(1, 2, 2), frame_stack=1, burn_in=1,
        ...                           learning_length=2, period=1, n_step=1, state_dim=2)
        >>> rb.assembler.length
        4
        >>> rb.close()
    """

    def __init__(
        self,
        options: ReplayOptions,
        layout: SequenceLayout,
        storage: StepStorage,
        writer: LaneWriter,
    ) -> None:
        self.options = options
        self.layout = layout
        self.storage = storage
        self.writer = writer
        self.length = layout.burn_in + layout.learning_length + options.n_step
        self.gamma_pow = options.gamma ** torch.arange(options.n_step + 1, dtype=torch.float64)

    def _positions(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per position ``[B, T]``: lane step, episode step, slot and validity."""
        L, S = self.options.lane_capacity, self.options.frame_stack
        f = self.storage.fields
        lane_base = index - index % L
        oldest = (self.writer.lane_next[index // L] - L)[:, None]
        off = torch.arange(self.length) - self.layout.burn_in
        q = f["lane_step"][index][:, None] + off  # lane steps of the positions [B, T]
        ep_q = f["episode_step"][index][:, None] + off  # their episode steps
        slot = lane_base[:, None] + q % L
        valid = (f["lane_step"][slot] == q) & (f["episode"][slot] == f["episode"][index][:, None])
        valid &= q - ep_q.clamp(0, S - 1) >= oldest  # the position's frame stack is stored
        return q, ep_q, slot, valid

    def _pixels(self, index, q, ep_q, valid) -> torch.Tensor:
        """Frame stacks of every position, clamped at the episode's first frame."""
        L, S = self.options.lane_capacity, self.options.frame_stack
        c, h, w = self.options.frame_shape
        lane_base = index - index % L
        back = torch.arange(-S + 1, 1)
        frame_q = q[..., None] + back.maximum(-ep_q[..., None])  # [B, T, S]
        frame_slot = torch.where(
            valid[..., None], lane_base[:, None, None] + frame_q % L, self.storage.zero
        )
        return rows(self.storage.fields["frame"], frame_slot).view(index.numel(), -1, S * c, h, w)

    def _returns(self, safe: torch.Tensor) -> dict:
        """n-step return, discount and bootstrap offset of every position, inside the sequence."""
        o, T = self.options, self.length
        f = self.storage.fields
        terminated, truncated = f["terminated"][safe], f["truncated"][safe]
        window = torch.arange(T)[:, None] + torch.arange(o.n_step)  # [T, n] positions
        inside = window < T
        window = window.clamp(max=T - 1)
        ends = (terminated | truncated)[:, window] & inside
        m = steps_taken(ends)  # [B, T]
        reward = f["reward"][safe][:, window]
        ret = n_step_return(reward, m, self.gamma_pow, o.reward_clip, inside)
        last = (torch.arange(T) + m - 1).clamp(max=T - 1)
        term_m = terminated.gather(1, last)
        trunc_m = truncated.gather(1, last)
        discount = self.gamma_pow[m] * (~term_m)
        return {
            next_key(o.reward_key): ret.float()[..., None],
            ("next", keys.DISCOUNT): discount.float()[..., None],
            next_key(o.terminated_key): term_m[..., None],
            next_key(o.truncated_key): trunc_m[..., None],
            next_key(o.done_key): (term_m | trunc_m)[..., None],
            keys.STEPS_TO_NEXT: m[..., None],
        }

    def gather(self, index: torch.Tensor, weight: torch.Tensor) -> TensorDict:
        """The sequences started at ``index`` (``_weight`` = ``weight``)."""
        o, lay = self.options, self.layout
        f = self.storage.fields
        B, burn = index.numel(), lay.burn_in
        q, ep_q, slot, valid = self._positions(index)
        safe = torch.where(valid, slot, self.storage.zero)
        learn = valid & ~f["final"][safe]
        learn[:, :burn] = False
        learn[:, burn + lay.learning_length :] = False
        out = {
            o.pixels_key: self._pixels(index, q, ep_q, valid),
            o.action_key: f["action"][safe],
            **self._returns(safe),
            lay.sequence_mask_key: valid,
            lay.learn_mask_key: learn,
            keys.INDEX: index,
            keys.WEIGHT: weight,
        }
        # the state before the first valid position (R2D2's stored state), or zeros
        if lay.stores_state:
            first = valid.long().argmax(1)
            start_slot = slot[torch.arange(B), first]
            for key, name in zip(lay.recurrent_state_keys, STATE_FIELDS):
                out[key] = f[name][start_slot].float()
        elif lay.state_dim:  # zeros of the network's size; without state_dim the network
            for key in lay.recurrent_state_keys:  # starts from zeros itself
                out[key] = torch.zeros(B, lay.state_dim)
        return TensorDict(out, batch_size=[B])
