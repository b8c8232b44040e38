"""Sequence replay for the R2D2-style recurrent baseline: every env step stored once, sequences of
burn-in + learning steps assembled at sample time, with the actor's stored LSTM state.

:class:`SequenceReplayBuffer` is a :class:`~torchrl_rise.replay.RiseReplayBuffer` (same lanes,
records, final observations, ``extend``, PER sampler, scratch lock and snapshots) whose sampleable
unit is a *sequence start* instead of a transition, and which stores one more field per record: the
recurrent state the actor acted from at that step. It composes the same roles with the sequence
ones of :mod:`~torchrl_rise.replay.sequence_parts`. See ``docs/recurrent.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from torchrl_rise import keys
from torchrl_rise.replay.buffer import RiseReplayBuffer
from torchrl_rise.replay.options import as_key
from torchrl_rise.replay.sequence_parts import (
    STATE_FIELDS,
    SequenceAssembler,
    SequenceLayout,
    SequenceReadiness,
)

__all__ = ["RECURRENT_STATE_MODES", "SequenceReplayBuffer"]

logger = logging.getLogger(__name__)

RECURRENT_STATE_MODES = ("stored", "zero")


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
        recurrent_state_keys = tuple(as_key(k) for k in recurrent_state_keys)
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
        self.sequence_mask_key = as_key(sequence_mask_key)
        self.learn_mask_key = as_key(learn_mask_key)
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
        """Whether the actor's recurrent state is stored (``recurrent_state="stored"``)."""
        return self.recurrent_state == "stored"

    def _field_specs(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        specs = super()._field_specs()
        if self.stores_state:
            for name in STATE_FIELDS:
                specs[name] = (self.state_dtype, (self.state_dim,))
        return specs

    def _make_readiness(self) -> SequenceReadiness:
        return SequenceReadiness(
            self.writer,
            self.step_storage,
            self.sampler,
            frame_stack=self.frame_stack,
            lookahead=self.learning_length + self.n_step,
            period=self.period,
        )

    def _make_assembler(self) -> SequenceAssembler:
        layout = SequenceLayout(
            burn_in=self.burn_in,
            learning_length=self.learning_length,
            period=self.period,
            stores_state=self.stores_state,
            state_dim=self.state_dim,
            recurrent_state_keys=self.recurrent_state_keys,
            sequence_mask_key=self.sequence_mask_key,
            learn_mask_key=self.learn_mask_key,
        )
        return SequenceAssembler(self.options, layout, self.step_storage, self.writer)

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
        lanes = self.writer.lanes_view(td)
        E, T = lanes.batch_size
        states = self._states(lanes, E, T) if self.stores_state and T else None
        old_next = self.writer.lane_next.clone()
        super().extend(td)
        if states is None:
            return
        # The step records this call wrote are each lane's non-final records in
        # [old_next, new_next), in time order: T per lane.
        L, new_next = self.lane_capacity, self.writer.lane_next
        width = int((new_next - old_next).max())
        q = old_next[:, None] + torch.arange(width)
        slot = self.writer.lane_base[:, None] + q % L
        keep = (q < new_next[:, None]) & ~self._fields["final"][slot]
        slot = slot[keep].reshape(E, T)
        for name, value in zip(STATE_FIELDS, states):
            self._fields[name][slot.reshape(-1)] = value.reshape(E * T, -1)

    # ------------------------------------------------------------------ sampling
    def _gather(self, index: torch.Tensor, weight: torch.Tensor) -> TensorDict:
        return self.assembler.gather(index, weight)
