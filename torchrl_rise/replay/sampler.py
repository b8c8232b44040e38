"""TorchRL's prioritized sampler, with a per-slot readiness switch.

The context-window buffer allocates every slot of its storage up front (one ring per env lane), and
only some slots hold a transition that may be sampled: its n-step future must be written and its
frame history must not have been overwritten. :class:`ReadinessSampler` keeps TorchRL's
:class:`~torchrl.data.PrioritizedSampler` (its C++ sum/min segment trees, importance weights,
max-priority insertion) and adds a way to switch a slot off exactly: a slot that is
not ready holds 0 in the sum tree (never drawn) and the largest float in the min tree (never the
minimum used to normalise the importance weights). ``update_priority`` alone cannot do that: it
stores ``(p + eps) ** alpha``, which is positive for ``p = 0``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torchrl.data import PrioritizedSampler

from torchrl_rise._fileio import write_atomic

__all__ = ["ReadinessSampler"]


class ReadinessSampler(PrioritizedSampler):
    """A :class:`~torchrl.data.PrioritizedSampler` whose slots can be switched off and on.

    With ``alpha=0`` every ready slot has the same weight, so the same class gives uniform sampling
    over the ready slots.

    Args:
        max_capacity: number of slots.
        alpha: priority exponent (0 gives uniform sampling).
        beta: importance-sampling exponent.

    Keyword Args:
        eps: added to every priority before the exponent.

    Example:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage
        >>> storage = LazyTensorStorage(8)
        >>> _ = storage.set(torch.arange(8), torch.zeros(8))
        >>> sampler = ReadinessSampler(8, alpha=1.0, beta=1.0)
        >>> sampler.mark_ready(torch.tensor([2, 5]))
        >>> index, info = sampler.sample(storage, 100)
        >>> sorted(set(index.tolist()))
        [2, 5]
        >>> sampler.mark_unready(torch.tensor([2]))
        >>> sorted(set(sampler.sample(storage, 100)[0].tolist()))
        [5]
    """

    def __init__(self, max_capacity: int, alpha: float, beta: float, *, eps: float = 1e-6) -> None:
        super().__init__(max_capacity, alpha, beta, eps=eps, dtype=torch.float32)

    def mark_ready(self, index: torch.Tensor) -> None:
        """Make ``index`` sampleable at the current maximum priority (PER's insertion rule)."""
        if index.numel():
            self.update_priority(index, self.default_priority)

    def mark_unready(self, index: torch.Tensor) -> None:
        """Make ``index`` unsampleable: it is never drawn and never normalises a weight."""
        if index.numel():
            n = index.numel()
            self._sum_tree[index] = torch.zeros(n, dtype=torch.float32)
            self._min_tree[index] = torch.full(
                (n,), torch.finfo(torch.float32).max, dtype=torch.float32
            )

    def tree_values(self, index: torch.Tensor) -> torch.Tensor:
        """The sum-tree entries ``(p + eps) ** alpha`` at ``index`` (0 where not ready)."""
        return torch.as_tensor(self._sum_tree[index])

    def dumps(self, path: str | Path) -> dict[str, Any]:
        """Save priorities and settings to ``path/"sampler.pt"`` (atomically).

        Replaces TorchRL's version, which copies the trees one entry at a time from Python (seconds
        for 2^20 slots) and fails before any priority was set.

        Returns:
            The file's description, ``{"size": int, "crc32": str}``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        every = torch.arange(self._max_capacity)
        value, where = self._max_priority
        state = {
            "alpha": self._alpha,
            "beta": self._beta,
            "eps": self._eps,
            "max_capacity": self._max_capacity,
            "max_priority": (
                None if value is None else float(value),
                None if where is None else int(where),
            ),
            "sum_tree": torch.as_tensor(self._sum_tree[every]),
            "min_tree": torch.as_tensor(self._min_tree[every]),
        }
        return write_atomic(path / "sampler.pt", lambda f: torch.save(state, f))

    def loads(self, path: str | Path, *, data: bytes | None = None) -> None:
        """Restore what :meth:`dumps` saved.

        Args:
            path: the directory :meth:`dumps` wrote.

        Keyword Args:
            data: the bytes of ``path/"sampler.pt"``, if the caller has already read (and
                verified) them; the file is then not read again.
        """
        source = Path(path) / "sampler.pt" if data is None else io.BytesIO(data)
        state = torch.load(source, weights_only=True)
        if state["max_capacity"] != self._max_capacity:
            raise ValueError(
                f"The saved sampler has {state['max_capacity']} slots, this one "
                f"{self._max_capacity}."
            )
        self._alpha, self._beta, self._eps = state["alpha"], state["beta"], state["eps"]
        value, where = state["max_priority"]
        self._max_priority = (value, where) if value is not None else None
        every = torch.arange(self._max_capacity)
        self._sum_tree[every] = state["sum_tree"]
        self._min_tree[every] = state["min_tree"]
