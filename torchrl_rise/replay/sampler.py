"""TorchRL's prioritized sampler with a per-slot readiness switch and BTR's sampling rules.

The context-window buffer allocates every slot of its storage up front (one ring per env lane), and
only some slots hold a transition that may be sampled: its n-step future must be written and its
frame history must not have been overwritten. :class:`ReadinessSampler` keeps TorchRL's
:class:`~torchrl.data.PrioritizedSampler` (its C++ sum/min segment trees, the ``(p + eps) ** alpha``
priority transform) and adds a way to switch a slot off exactly: a slot that is
not ready holds 0 in the sum tree (never drawn) and the largest float in the min tree (never the
minimum used to normalise the importance weights). ``update_priority`` alone cannot do that: it
stores ``(p + eps) ** alpha``, which is positive for ``p = 0``.

It also draws and weights batches the way BTR's code does (each rule has TorchRL's behaviour as an
option):

- ``stratified=True``: the total mass is cut into ``batch_size`` equal segments and one slot is
  drawn per segment (TorchRL: ``batch_size`` independent draws over the whole mass);
- ``importance_weights="btr"``: ``w_i = (capacity * P(i)) ** -alpha`` normalised by the batch's
  largest weight, with ``P(i)`` the sampling probability and ``capacity`` the fixed number of slots
  (BTR's code uses its capacity constant whether the buffer is full or not; after normalising by
  the batch maximum the constant cancels: ``w_i = (P(i) / min_batch P) ** -alpha``). ``"torchrl"``:
  ``(P(i) / min P) ** -beta`` with the minimum over every ready slot;
- ``max_priority_floor=1.0``: new slots enter at ``max(1, largest priority ever set)`` (BTR's code
  starts its running maximum at 1); ``0`` gives TorchRL's rule (1 before the first update, then the
  largest priority ever set).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torchrl.data import PrioritizedSampler

from torchrl_rise._fileio import write_atomic

__all__ = ["IMPORTANCE_WEIGHTS", "ReadinessSampler"]

IMPORTANCE_WEIGHTS = ("btr", "torchrl")
_MAX_REDRAWS = 64


class ReadinessSampler(PrioritizedSampler):
    """A :class:`~torchrl.data.PrioritizedSampler` whose slots can be switched off and on.

    With ``alpha=0`` every ready slot has the same weight, so the same class gives uniform sampling
    over the ready slots. Sampling is vectorised (one tree scan for the batch); a draw that lands on
    a slot without mass (possible only through float rounding at a segment edge) is redrawn.

    Args:
        max_capacity: number of slots.
        alpha: priority exponent (0 gives uniform sampling); also the exponent of BTR's importance
            weights.
        beta: importance-sampling exponent of ``importance_weights="torchrl"``.

    Keyword Args:
        eps: added to every priority before the exponent.
        importance_weights: ``"btr"`` (default) or ``"torchrl"``; see the module docstring.
        stratified: one draw per segment of the total mass (BTR) or independent draws.
        max_priority_floor: new slots enter at ``max(max_priority_floor, largest priority set)``.

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

    def __init__(
        self,
        max_capacity: int,
        alpha: float,
        beta: float,
        *,
        eps: float = 1e-6,
        importance_weights: str = "btr",
        stratified: bool = True,
        max_priority_floor: float = 1.0,
    ) -> None:
        if importance_weights not in IMPORTANCE_WEIGHTS:
            raise ValueError(
                f"importance_weights must be one of {IMPORTANCE_WEIGHTS}, got "
                f"{importance_weights!r}."
            )
        if not max_priority_floor >= 0:
            raise ValueError(f"max_priority_floor must be >= 0, got {max_priority_floor}.")
        super().__init__(max_capacity, alpha, beta, eps=eps, dtype=torch.float32)
        self.importance_weights = importance_weights
        self.stratified = bool(stratified)
        self.max_priority_floor = float(max_priority_floor)

    @property
    def default_priority(self) -> float:
        """The priority new slots enter at: ``max(max_priority_floor, largest priority set)``."""
        return max(float(super().default_priority), self.max_priority_floor)

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

    def _mass(self, p_sum: float, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Sampling masses for the draws ``rows`` of a batch (float32, the tree's dtype)."""
        u = torch.rand(rows.numel(), generator=self._rng)
        if not self.stratified:
            return u * p_sum
        segment = p_sum / batch_size
        return ((rows.double() + u.double()) * segment).float()

    def sample(self, storage, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Draw ``batch_size`` slots; ``info["priority_weight"]`` holds their importance weights."""
        size = len(storage)
        if size == 0:
            raise RuntimeError("Cannot sample from an empty storage: extend the buffer first.")
        p_sum = float(self._sum_tree.query(0, size))
        if not p_sum > 0:
            raise RuntimeError(
                "Cannot sample: no slot has a positive priority (none is ready); mark slots ready "
                "(or extend the buffer) first."
            )
        rows = torch.arange(batch_size)
        index = torch.as_tensor(
            self._sum_tree.scan_lower_bound(self._mass(p_sum, rows, batch_size))
        )
        tree = torch.as_tensor(self._sum_tree[index.clamp(max=size - 1)])
        for _ in range(_MAX_REDRAWS):
            bad = (tree <= 0) | (index >= size)
            if not bad.any():
                break
            redo = rows[bad]
            index[redo] = torch.as_tensor(
                self._sum_tree.scan_lower_bound(self._mass(p_sum, redo, batch_size))
            )
            tree[redo] = torch.as_tensor(self._sum_tree[index[redo].clamp(max=size - 1)])
        else:
            raise RuntimeError(
                "the sum tree kept returning slots without mass; its totals are inconsistent "
                f"(total {p_sum})."
            )
        if self.importance_weights == "btr":
            # BTR's code: (capacity * P(i)) ** -alpha over the batch maximum.
            weight = (self._max_capacity * tree.double() / p_sum) ** -self._alpha
            weight = (weight / weight.max()).float()
        else:
            # TorchRL's: (P(i) / min_j P(j)) ** -beta, the minimum over every ready slot.
            p_min = self._min_tree.query(0, size)
            weight = torch.pow(tree / p_min, -self._beta)
        return index, {"priority_weight": weight}

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
