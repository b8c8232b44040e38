"""The writer role: per-env lanes written as rings, and the episode index.

Env ``e`` owns the contiguous *lane* of slots ``[e * L, (e + 1) * L)`` and writes it as a ring: the
record with lane step ``s`` lives in slot ``e * L + s % L``. :class:`LaneWriter` turns collector
output (``[num_envs, T]``) into the records to store (one per step, plus one *final* record per
finished episode holding the observation it ended in) and keeps each lane's cursor and open
episode. It writes nothing itself: the buffer hands the records to its storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

from torchrl_rise.replay.options import ReplayOptions, next_key

__all__ = ["LaneWrite", "LaneWriter"]


@dataclass
class LaneWrite:
    """The records one :meth:`LaneWriter.prepare` call produced, and the cursors they move.

    Attributes:
        index: the slot of every record ``[N]``.
        data: field name -> ``[N, ...]`` values.
        n_rec: records written per lane ``[E]``.
        end: ``[E, T]`` where an episode ended.
        episode, ep_step: ``[E, T]`` episode id and episode step of each step record.
        n_starts: episodes started per lane ``[E]``.
    """

    index: torch.Tensor
    data: dict[str, torch.Tensor]
    n_rec: torch.Tensor
    end: torch.Tensor
    episode: torch.Tensor
    ep_step: torch.Tensor
    n_starts: torch.Tensor


class LaneWriter:
    """Lane cursors and the episode index of ``num_envs`` ring lanes of ``lane_capacity`` slots.

    Args:
        options: the replay's options (lanes, frame and embedding layout, keys).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> writer = LaneWriter(ReplayOptions(16, 1, frame_shape=(1, 2, 2), frame_stack=1,
        ...                                   context_length=0))
        >>> td = TensorDict({"pixels": torch.zeros(3, 1, 2, 2, dtype=torch.uint8),
        ...                  "action": torch.zeros(3, dtype=torch.long),
        ...                  ("next", "reward"): torch.zeros(3, 1),
        ...                  ("next", "terminated"): torch.zeros(3, 1, dtype=torch.bool)}, [3])
        >>> write = writer.prepare(writer.lanes_view(td))
        >>> write.index.tolist()
        [0, 1, 2]
    """

    def __init__(self, options: ReplayOptions) -> None:
        self.options = options
        E = options.num_envs
        self.lane_capacity = options.lane_capacity
        self.lane_base = torch.arange(E, dtype=torch.long) * self.lane_capacity
        self.lane_next = torch.zeros(E, dtype=torch.long)
        self.episode_open = torch.zeros(E, dtype=torch.bool)
        self.episode_id = torch.full((E,), -1, dtype=torch.long)
        self.episode_step = torch.zeros(E, dtype=torch.long)
        self.next_episode_id = 0

    # ------------------------------------------------------------------ reading collector output
    def lanes_view(self, td: TensorDictBase) -> TensorDictBase:
        """Reshape collector output to ``[num_envs, T]``."""
        shape = tuple(td.batch_size)
        num_envs = self.options.num_envs
        if len(shape) == 2:
            if shape[0] != num_envs:
                raise ValueError(
                    f"extend() got a batch of shape {list(shape)}; expected [num_envs, T] with "
                    f"num_envs={num_envs} (TorchRL collectors over a batched env put the env "
                    f"dim first and time last)."
                )
            return td
        if len(shape) == 1:
            if num_envs == 1:
                return td.unsqueeze(0)
            if shape[0] == num_envs:
                return td.unsqueeze(1)
            raise ValueError(
                f"extend() got a 1-d batch of {shape[0]} steps, but the buffer has "
                f"num_envs={num_envs} lanes: pass [num_envs, T] (or [num_envs] for one "
                f"vector step). Flattened collector output cannot be split into envs; keep the "
                f"collector's [num_envs, T] layout."
            )
        raise ValueError(
            f"extend() expects a batch of [num_envs, T], [T] (num_envs == 1) or [num_envs]; "
            f"got {list(shape)}."
        )

    @staticmethod
    def read(td: TensorDictBase, key: NestedKey, *, required: bool = True) -> Any:
        """``td[key]``; a clear ``KeyError`` when it is missing and required."""
        value = td.get(key, None)
        if value is None and required:
            raise KeyError(
                f"extend() needs the key {key!r}, which the data does not have (keys: "
                f"{sorted(map(str, td.keys(True, True)))})."
            )
        return value

    @staticmethod
    def _flag(td: TensorDictBase, key: NestedKey, E: int, T: int) -> torch.Tensor | None:
        value = td.get(next_key(key), None)
        if value is None:
            return None
        if value.numel() != E * T:
            raise ValueError(
                f"{next_key(key)!r} must have one flag per step (shape [..., 1]), got "
                f"{list(value.shape)}."
            )
        return value.reshape(E, T).to(torch.bool)

    def _frames(self, pixels: torch.Tensor, key: NestedKey) -> torch.Tensor:
        c, h, w = self.options.frame_shape
        stack = self.options.frame_stack
        want = (stack * c, h, w)
        if pixels.dtype != torch.uint8:
            raise TypeError(
                f"{key!r} must be uint8 frames, got {pixels.dtype}; keep the env's uint8 pixels "
                f"(scale to float inside the network)."
            )
        if tuple(pixels.shape[2:]) != want:
            raise ValueError(
                f"{key!r} must have shape [..., S * C, H, W] = [..., {want[0]}, {h}, {w}] "
                f"(frame_stack={stack}, frame_shape={self.options.frame_shape}); got "
                f"{list(pixels.shape[2:])}."
            )
        return pixels[:, :, -c:]

    def _embeddings(self, emb: torch.Tensor, key: NestedKey) -> torch.Tensor:
        dim = self.options.embedding_dim
        if emb.shape[-1] != dim or emb.ndim != 3:
            raise ValueError(
                f"{key!r} must have shape [..., {dim}] (embedding_dim), got {list(emb.shape[2:])}."
            )
        return emb.to(self.options.embedding_dtype)

    def _action_reward(
        self, td: TensorDictBase, E: int, T: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        action = self.read(td, o.action_key)
        if action.dtype.is_floating_point or action.dtype == torch.bool:
            raise TypeError(
                f"{o.action_key!r} must hold integer action indices (TorchRL Categorical), got "
                f"{action.dtype}."
            )
        if action.numel() != E * T:
            raise ValueError(
                f"{o.action_key!r} must be one integer index per step (shape [] or [1]), got "
                f"shape {list(action.shape[2:])}; one-hot actions are not supported: store "
                f"action.argmax(-1)."
            )
        reward = self.read(td, next_key(o.reward_key))
        if reward.numel() != E * T:
            raise ValueError(
                f"{next_key(o.reward_key)!r} must be one scalar per step, got shape "
                f"{list(reward.shape[2:])}."
            )
        return action.reshape(E, T).to(torch.long), reward.reshape(E, T).to(torch.float32)

    def _flags(self, td: TensorDictBase, E: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``terminated`` and ``truncated`` per step (exclusive: a termination is no truncation)."""
        o = self.options
        terminated = self._flag(td, o.terminated_key, E, T)
        truncated = self._flag(td, o.truncated_key, E, T)
        done = self._flag(td, o.done_key, E, T)
        if terminated is None and done is None:
            raise KeyError(
                f"extend() needs {next_key(o.terminated_key)!r} or {next_key(o.done_key)!r} to "
                f"know where episodes end."
            )
        if terminated is None:
            terminated = done
        if truncated is None:
            truncated = torch.zeros_like(terminated)
        if done is not None:
            # done without terminated is a truncation of some other kind: bootstrap it.
            truncated = truncated | (done & ~terminated)
        return terminated, truncated & ~terminated

    # ------------------------------------------------------------------ records
    def prepare(self, td: TensorDictBase) -> LaneWrite:
        """The records of ``td`` (``[num_envs, T]``, ``T > 0``) and their slots; the cursors move
        in :meth:`commit`, after the records are stored."""
        E, T = td.batch_size
        L = self.lane_capacity
        frame = self._frames(self.read(td, self.options.pixels_key), self.options.pixels_key)
        action, reward = self._action_reward(td, E, T)
        terminated, truncated = self._flags(td, E, T)
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
        start[:, 0] = ~self.episode_open
        start[:, 1:] = end[:, :-1]
        k = start.long().cumsum(1)
        n_starts = k[:, -1]
        id_base = self.next_episode_id + n_starts.cumsum(0) - n_starts
        episode = torch.where(k == 0, self.episode_id[:, None], id_base[:, None] + k - 1)
        t_start = torch.where(start, t_idx, -1).cummax(1).values
        ep_step = torch.where(k == 0, self.episode_step[:, None] + t_idx, t_idx - t_start)
        lane_step = self.lane_next[:, None] + rec_off

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
        if self.options.use_embeddings:
            key = self.options.embedding_key
            records["embedding"] = self._embeddings(self.read(td, key), key)
        slot = self.lane_base[:, None] + lane_step % L
        index = slot.reshape(-1)
        data = {name: value.reshape(E * T, *value.shape[2:]) for name, value in records.items()}
        if bool(end.any()):
            index, data = self._add_finals(td, index, data, records, end)
        return LaneWrite(index, data, n_rec, end, episode, ep_step, n_starts)

    def _add_finals(
        self,
        td: TensorDictBase,
        index: torch.Tensor,
        data: dict[str, torch.Tensor],
        records: dict[str, torch.Tensor],
        end: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Append the observation each finished episode ended in: one extra record, never
        sampled."""
        E, T = end.shape
        pixels_key = next_key(self.options.pixels_key)
        final_frame = self._frames(self.read(td, pixels_key), pixels_key)[end]
        n_fin = final_frame.shape[0]
        lane_step = records["lane_step"][end]
        finals = {
            "frame": final_frame,
            "action": torch.zeros(n_fin, dtype=torch.long),
            "reward": torch.zeros(n_fin),
            "terminated": records["terminated"][end],
            "truncated": records["truncated"][end],
            "final": torch.ones(n_fin, dtype=torch.bool),
            "episode": records["episode"][end],
            "lane_step": lane_step + 1,
            "episode_step": records["episode_step"][end] + 1,
        }
        if self.options.use_embeddings:
            key = next_key(self.options.embedding_key)
            finals["embedding"] = self._embeddings(self.read(td, key), key)[end]
        final_slot = (
            self.lane_base[:, None].expand(E, T)[end] + (lane_step + 1) % self.lane_capacity
        )
        index = torch.cat([index, final_slot])
        data = {name: torch.cat([data[name], finals[name]]) for name in data}
        return index, data

    def commit(self, write: LaneWrite) -> torch.Tensor:
        """Move the cursors past ``write``; returns the lane cursors before it."""
        old_next = self.lane_next.clone()
        self.lane_next += write.n_rec
        self.episode_open = ~write.end[:, -1]
        self.episode_id = write.episode[:, -1].clone()
        self.episode_step = write.ep_step[:, -1] + 1
        self.next_episode_id += int(write.n_starts.sum())
        return old_next

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The cursors and the episode index (for a snapshot)."""
        return {
            "lane_next": self.lane_next,
            "episode_open": self.episode_open,
            "episode_id": self.episode_id,
            "episode_step": self.episode_step,
            "next_episode_id": self.next_episode_id,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.lane_next = state["lane_next"].clone()
        self.episode_open = state["episode_open"].clone()
        self.episode_id = state["episode_id"].clone()
        self.episode_step = state["episode_step"].clone()
        self.next_episode_id = int(state["next_episode_id"])

    def reset(self) -> None:
        """Forget every record (the lanes start empty)."""
        self.lane_next.zero_()
        self.episode_open.zero_()
        self.episode_id.fill_(-1)
        self.episode_step.zero_()
