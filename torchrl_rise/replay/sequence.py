"""Sequence replay for the R2D2-style recurrent baseline: every env step stored once, sequences of
burn-in + learning steps assembled at sample time, with the actor's stored LSTM state.

:class:`SequenceReplayBuffer` is a :class:`~torchrl_rise.replay.RiseReplayBuffer` (same lanes,
records, final observations, ``extend``, PER sampler, scratch lock and snapshots) whose sampleable
unit is a *sequence start* instead of a transition, and which stores one more field per record: the
recurrent state the actor acted from at that step. See ``docs/recurrent.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.replay import buffer as _buffer
from torchrl_rise.replay.buffer import RiseReplayBuffer

__all__ = ["RECURRENT_STATE_MODES", "SequenceReplayBuffer"]

logger = logging.getLogger(__name__)

RECURRENT_STATE_MODES = ("stored", "zero")
_STATE_FIELDS = ("state_h", "state_c")


class SequenceReplayBuffer(RiseReplayBuffer):
    """Replay of overlapping sequences (R2D2) over the context-window buffer's per-step storage.

    Storage is :class:`RiseReplayBuffer`'s: ``num_envs`` lanes, each a ring of per-step records
    (newest frame uint8, action, reward, flags, bookkeeping) plus one final record per episode,
    and here also the actor's recurrent state ``(h, c)`` at each step (``recurrent_state="stored"``,
    in ``state_dtype``). No frame or state is stored twice, whatever the sequence settings.

    **Sampleable units.** A sequence is identified by its first *learning* step ``t0``: a step
    record whose episode step is a multiple of ``period`` (R2D2: 40; sequences of one episode
    start at its first step and every ``period`` steps after, so with ``period <
    learning_length`` they overlap). It covers ``T = burn_in + learning_length + n_step`` positions,
    lane steps ``t0 - burn_in .. t0 + learning_length + n_step - 1``:

    - positions ``[0, burn_in)``: the burn-in (run without gradient);
    - positions ``[burn_in, burn_in + learning_length)``: the trained steps;
    - the last ``n_step`` positions: the bootstrap tail, so every trained step has its n-step
      return and its bootstrap observation inside the sequence.

    Sequences never cross an episode or a lane: positions outside the start's episode (before its
    first step, after its final observation) or no longer stored (the ring's write seam, or whose
    frame stack reaches an overwritten record) are *cut and masked*: ``sequence_mask`` is False
    there and their data is zeros. The valid positions are one contiguous run: the burn-in's
    invalid positions are left padding, the learning part's are right padding. A start is
    sampleable (``len(rb)`` counts them) once every position up to ``t0 + learning_length +
    n_step - 1`` is written or its episode has ended before (its final record is written), and
    while its own frame stack is stored.

    **Stored state.** ``recurrent_state_h``/``recurrent_state_c`` of a sample are the state the
    actor held *before* reading the sequence's first valid position (R2D2's stored state; zero at
    an episode's first step, where the actor resets). ``recurrent_state="zero"`` stores no state
    and returns zeros (R2D2's zero-start-state variant).

    **Per-position keys** (``[B, T, ...]``, batch size ``[B]``): ``pixels`` (frame stacks
    ``[S * C, H, W]``, clamped at the episode's first frame), ``action``, ``("next", "reward")``
    (the n-step return from that position), ``("next", "discount")`` (``gamma ** m``, 0 after
    termination), ``("next", "terminated"/"truncated"/"done")``, ``steps_to_next_obs`` (``m``:
    the bootstrap observation of position ``p`` is position ``p + m``), ``sequence_mask`` and
    ``learn_mask`` (the trained positions: valid step records in the learning part). Per
    sequence: ``recurrent_state_h``/``_c`` ``[B, hidden]``, ``index`` (the start's slot) and
    ``_weight`` (PER importance weight, BTR's batch-max rule through the same sampler).
    Priorities: :meth:`update_tensordict_priority` with one value per sequence (the loss's
    ``td_error``: R2D2's ``eta * max + (1 - eta) * mean`` of its per-step errors).

    Args:
        capacity: records in total (steps plus one final record per episode).
        num_envs: lanes.

    Keyword Args:
        burn_in: burn-in positions (R2D2: 40).
        learning_length: trained positions per sequence (R2D2: 80).
        period: episode steps between sequence starts (R2D2: 40).
        recurrent_state: ``"stored"`` (R2D2) or ``"zero"``.
        state_dim: hidden size of the LSTM state (``h`` and ``c`` each); needed when stored.
            With ``"zero"`` it is optional: given, samples hold zero states of that size;
            omitted, they hold no state keys (the network then starts from zeros).
        state_dtype: ``torch.float16`` (half the bytes) or ``torch.float32`` (exact).
        recurrent_state_keys: the ``(h, c)`` keys :meth:`extend` reads and :meth:`sample` writes.
        sequence_mask_key, learn_mask_key: the mask keys written by :meth:`sample`.
        **kwargs: :class:`RiseReplayBuffer`'s options (``frame_shape``, ``frame_stack``,
            ``n_step``, ``gamma``, ``prioritized``, ``alpha``, ``batch_size`` (sequences),
            ``scratch_dir``, ``seed``, ...). Embeddings are not stored (``context_length=0``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> rb = SequenceReplayBuffer(200, num_envs=2, frame_shape=(1, 8, 8), frame_stack=2,
        ...                           burn_in=2, learning_length=4, period=2, n_step=2,
        ...                           state_dim=3, batch_size=4)
        >>> T = 12
        >>> td = TensorDict({
        ...     "pixels": torch.randint(0, 255, (2, T, 2, 8, 8), dtype=torch.uint8),
        ...     "action": torch.randint(0, 3, (2, T)),
        ...     "recurrent_state_h": torch.randn(2, T, 3),
        ...     "recurrent_state_c": torch.randn(2, T, 3),
        ...     ("next", "reward"): torch.randn(2, T, 1),
        ...     ("next", "terminated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.zeros(2, T, 1, dtype=torch.bool),
        ... }, batch_size=[2, T])
        >>> rb.extend(td)
        >>> len(rb)  # per lane: starts at steps 0, 2, 4, 6 have their 4 + 2 positions written
        8
        >>> batch = rb.sample()
        >>> batch["pixels"].shape, batch["learn_mask"].shape, batch["recurrent_state_h"].shape
        (torch.Size([4, 8, 2, 8, 8]), torch.Size([4, 8]), torch.Size([4, 3]))
        >>> batch["td_error"] = torch.rand(4)
        >>> rb.update_tensordict_priority(batch)
        >>> rb.close()
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int = 1,
        *,
        burn_in: int = 40,
        learning_length: int = 80,
        period: int = 40,
        recurrent_state: str = "stored",
        state_dim: int | None = None,
        state_dtype: torch.dtype = torch.float16,
        recurrent_state_keys: Sequence[NestedKey] = (
            keys.RECURRENT_STATE_H,
            keys.RECURRENT_STATE_C,
        ),
        sequence_mask_key: NestedKey = keys.SEQUENCE_MASK,
        learn_mask_key: NestedKey = keys.LEARN_MASK,
        **kwargs: Any,
    ) -> None:
        for name, value, low in (
            ("burn_in", burn_in, 0),
            ("learning_length", learning_length, 1),
            ("period", period, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        if recurrent_state not in RECURRENT_STATE_MODES:
            raise ValueError(
                f"recurrent_state must be one of {RECURRENT_STATE_MODES}, got {recurrent_state!r}."
            )
        bad_dim = not isinstance(state_dim, int) or isinstance(state_dim, bool) or state_dim < 1
        if recurrent_state == "stored" and bad_dim:
            raise ValueError(
                "recurrent_state='stored' needs state_dim, the LSTM hidden size (e.g. "
                f"net.lstm_hidden), as an integer >= 1; got {state_dim!r}."
            )
        if state_dtype not in (torch.float16, torch.float32, torch.bfloat16):
            raise ValueError(
                f"state_dtype must be torch.float16, torch.bfloat16 or torch.float32, got "
                f"{state_dtype}."
            )
        recurrent_state_keys = tuple(_buffer._as_key(k) for k in recurrent_state_keys)
        if len(recurrent_state_keys) != 2:
            raise ValueError(
                f"recurrent_state_keys must be the two keys (h, c), got {recurrent_state_keys!r}."
            )
        for name in ("context_length", "embedding_key"):
            if kwargs.get(name):
                raise ValueError(
                    f"SequenceReplayBuffer stores no embeddings (the recurrent baseline learns "
                    f"from pixels); drop {name}."
                )
        kwargs["context_length"] = 0
        kwargs["embedding_key"] = None
        # set before the base constructor: it sizes the storage through _field_specs()
        self.burn_in = burn_in
        self.learning_length = learning_length
        self.period = period
        self.recurrent_state = recurrent_state
        self.state_dim = int(state_dim) if state_dim is not None else 0
        self.state_dtype = state_dtype
        self.recurrent_state_keys = recurrent_state_keys
        self.sequence_mask_key = _buffer._as_key(sequence_mask_key)
        self.learn_mask_key = _buffer._as_key(learn_mask_key)
        super().__init__(capacity, num_envs, **kwargs)
        need = self.sequence_length + self.frame_stack
        if self.lane_capacity < need:
            self.close()
            raise ValueError(
                f"capacity={capacity} over num_envs={num_envs} leaves {self.lane_capacity} records "
                f"per env; a sequence needs burn_in + learning_length + n_step + frame_stack = "
                f"{need}. Raise capacity to at least {need * num_envs}."
            )

    # ------------------------------------------------------------------ layout
    @property
    def sequence_length(self) -> int:
        """``T``: positions per sampled sequence (burn-in + learning + n-step bootstrap tail)."""
        return self.burn_in + self.learning_length + self.n_step

    @property
    def stores_state(self) -> bool:
        return self.recurrent_state == "stored"

    def _field_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        specs = super()._field_specs()
        if self.stores_state:
            for name in _STATE_FIELDS:
                specs[name] = (self.state_dtype, (self.state_dim,))
        return specs

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["sequence"] = {
            "burn_in": self.burn_in,
            "learning_length": self.learning_length,
            "period": self.period,
            "recurrent_state": self.recurrent_state,
            "state_dim": self.state_dim,
            "state_dtype": str(self.state_dtype),
        }
        return config

    def _scratch_files(self) -> list[Path]:
        files = super()._scratch_files()
        extra = [self.scratch_dir / f"{name}.memmap" for name in _STATE_FIELDS]
        return files + [p for p in extra if p.exists()]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.capacity}, num_envs={self.num_envs}, "
            f"burn_in={self.burn_in}, learning_length={self.learning_length}, "
            f"period={self.period}, n_step={self.n_step}, frame_stack={self.frame_stack}, "
            f"recurrent_state={self.recurrent_state!r}, len={len(self)}, "
            f"scratch_dir={str(self.scratch_dir)!r})"
        )

    # ------------------------------------------------------------------ writing
    def _states(self, td: TensorDictBase, E: int, T: int) -> list[torch.Tensor]:
        out = []
        for key in self.recurrent_state_keys:
            value = td.get(key, None)
            if value is None:
                raise KeyError(
                    f"extend() needs the actor's recurrent state {key!r} at every step "
                    "(make_recurrent_actor writes it), or build the buffer with "
                    "recurrent_state='zero'."
                )
            if value.numel() != E * T * self.state_dim:
                raise ValueError(
                    f"{key!r} must be [..., {self.state_dim}] per step (state_dim), got shape "
                    f"{list(value.shape)} for a batch of [{E}, {T}]."
                )
            out.append(value.reshape(E, T, self.state_dim).to(self.state_dtype))
        return out

    @torch.no_grad()
    def extend(self, td: TensorDictBase) -> None:
        """Write consecutive steps of every env (see :class:`RiseReplayBuffer`), and the
        recurrent state each step was acted from (``recurrent_state="stored"``)."""
        self._check_open()
        lanes = self._lanes_view(td)
        E, T = lanes.batch_size
        states = self._states(lanes, E, T) if self.stores_state and T else None
        old_next = self._lane_next.clone()
        super().extend(td)
        if states is None:
            return
        # The step records this call wrote are each lane's non-final records in
        # [old_next, new_next), in time order: T per lane.
        L = self.lane_capacity
        width = int((self._lane_next - old_next).max())
        q = old_next[:, None] + torch.arange(width)
        slot = self._lane_base[:, None] + q % L
        keep = (q < self._lane_next[:, None]) & ~self._fields["final"][slot]
        slot = slot[keep].reshape(E, T)
        for name, value in zip(_STATE_FIELDS, states):
            self._fields[name][slot.reshape(-1)] = value.reshape(E * T, -1)

    # ------------------------------------------------------------------ readiness
    def _refresh_readiness(self, old_next: torch.Tensor, max_written: int) -> None:
        """As :class:`RiseReplayBuffer`'s, over the starts a write can have changed: those whose
        sequence reaches the new records, and the oldest ``S - 1`` records (frame stacks)."""
        L, S = self.lane_capacity, self.frame_stack
        reach = self.learning_length + self.n_step
        new_next = self._lane_next
        oldest = new_next - L
        recent = new_next[:, None] - torch.arange(reach + max_written, 0, -1)
        seam = oldest[:, None] + torch.arange(S - 1)
        steps = torch.cat([recent, seam], 1)
        lanes = torch.arange(self.num_envs)[:, None].expand_as(steps)
        keep = (steps >= oldest.clamp_min(0)[:, None]) & (steps < new_next[:, None])
        steps, lanes = steps[keep], lanes[keep]
        slot = lanes * L + steps % L
        slot, first = _buffer._unique_first(slot)
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
        L, S = self.lane_capacity, self.frame_stack
        f = self._fields
        oldest = self._lane_next[lanes] - L
        ep = f["episode_step"][slot]
        ok = ~f["final"][slot] & (ep % self.period == 0)
        ok &= torch.maximum(s - (S - 1), s - ep) >= oldest  # the start's frame stack is stored
        # every position up to the last bootstrap is written, or the episode ended before it
        q = s[:, None] + torch.arange(self.learning_length + self.n_step)
        qslot = (lanes * L)[:, None] + q % L
        valid = (f["lane_step"][qslot] == q) & (f["episode"][qslot] == f["episode"][slot][:, None])
        count = valid.long().cumprod(1).sum(1)
        last = qslot.gather(1, (count - 1).clamp_min(0)[:, None]).squeeze(1)
        return ok & (count > 0) & ((count == q.shape[1]) | f["final"][last])

    # ------------------------------------------------------------------ sampling
    def _gather(self, index: torch.Tensor, weight: torch.Tensor) -> TensorDict:
        L, n, S = self.lane_capacity, self.n_step, self.frame_stack
        T, burn = self.sequence_length, self.burn_in
        f = self._fields
        B = index.numel()
        lane_base = index - index % L
        s = f["lane_step"][index]
        ep = f["episode_step"][index]
        episode = f["episode"][index]
        oldest = (self._lane_next[index // L] - L)[:, None]

        off = torch.arange(T) - burn
        q = s[:, None] + off  # lane steps of the positions [B, T]
        ep_q = ep[:, None] + off  # their episode steps (where in the episode)
        slot = lane_base[:, None] + q % L
        valid = (f["lane_step"][slot] == q) & (f["episode"][slot] == episode[:, None])
        valid &= q - ep_q.clamp(0, S - 1) >= oldest  # the position's frame stack is stored
        safe = torch.where(valid, slot, self._zero)
        final = f["final"][safe]
        learn = valid & ~final
        learn[:, :burn] = False
        learn[:, burn + self.learning_length :] = False

        # frame stacks, clamped at the episode's first frame
        c, h, w = self.frame_shape
        back = torch.arange(-S + 1, 1)
        frame_q = q[..., None] + back.maximum(-ep_q[..., None])  # [B, T, S]
        frame_slot = torch.where(
            valid[..., None], lane_base[:, None, None] + frame_q % L, self._zero
        )
        pixels = _buffer._rows(f["frame"], frame_slot).view(B, T, S * c, h, w)

        # n-step return, discount and bootstrap offset of every position, inside the sequence
        reward = f["reward"][safe]
        if self.reward_clip is not None:
            reward = reward.clamp(-self.reward_clip, self.reward_clip)
        terminated, truncated = f["terminated"][safe], f["truncated"][safe]
        window = torch.arange(T)[:, None] + torch.arange(n)  # [T, n] positions
        inside = window < T
        window = window.clamp(max=T - 1)
        ends = (terminated | truncated)[:, window] & inside
        m = _buffer._steps_taken(ends)  # [B, T]
        taken = torch.arange(n) < m[..., None]
        ret = (reward.double()[:, window] * self._gamma_pow[:n] * taken * inside).sum(-1)
        last = (torch.arange(T) + m - 1).clamp(max=T - 1)
        term_m = terminated.gather(1, last)
        trunc_m = truncated.gather(1, last)
        discount = self._gamma_pow[m] * (~term_m)

        out = {
            self.pixels_key: pixels,
            self.action_key: f["action"][safe],
            ("next", *_buffer._tuple(self.reward_key)): ret.float()[..., None],
            ("next", keys.DISCOUNT): discount.float()[..., None],
            ("next", *_buffer._tuple(self.terminated_key)): term_m[..., None],
            ("next", *_buffer._tuple(self.truncated_key)): trunc_m[..., None],
            ("next", *_buffer._tuple(self.done_key)): (term_m | trunc_m)[..., None],
            keys.STEPS_TO_NEXT: m[..., None],
            self.sequence_mask_key: valid,
            self.learn_mask_key: learn,
            keys.INDEX: index,
            keys.WEIGHT: weight,
        }
        # the state before the first valid position (R2D2's stored state), or zeros
        if self.stores_state:
            first = valid.long().argmax(1)
            start_slot = slot[torch.arange(B), first]
            for key, name in zip(self.recurrent_state_keys, _STATE_FIELDS):
                out[key] = f[name][start_slot].float()
        elif self.state_dim:  # zeros of the network's size; without state_dim the network
            for key in self.recurrent_state_keys:  # starts from zeros itself
                out[key] = torch.zeros(B, self.state_dim)
        return TensorDict(out, batch_size=[B])
