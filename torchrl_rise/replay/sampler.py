"""A prioritized sampler with a per-slot readiness switch and BTR's sampling rules.

The context-window buffer allocates every slot of its storage up front (one ring per env lane), and
only some slots hold a transition that may be sampled: its n-step future must be written and its
frame history must not have been overwritten. :class:`ReadinessSampler` follows TorchRL's
:class:`~torchrl.data.PrioritizedSampler` (sum/min segment trees, the ``(p + eps) ** alpha``
priority transform, the running maximum priority) and adds a way to switch a slot off exactly: a slot that is
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

Trees: ``tree="torchrl"`` uses TorchRL's C++ ``SumSegmentTreeFp32``/``MinSegmentTreeFp32`` (CPU);
``tree="torch"`` the pure-torch :class:`~torchrl_rise.replay.sum_tree.TorchSumTree` and
:class:`~torchrl_rise.replay.sum_tree.TorchMinTree` (CPU or GPU, ``device=``), which give the same
sums and the same draws; ``"auto"`` (default) takes TorchRL's when its extension loads and the
sampler is on the CPU, else the torch trees.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler

from torchrl_rise._fileio import write_atomic
from torchrl_rise.replay import _torchrl_adapter
from torchrl_rise.replay.sum_tree import TorchMinTree, TorchSumTree

__all__ = ["IMPORTANCE_WEIGHTS", "TREES", "ReadinessSampler"]

logger = logging.getLogger(__name__)

IMPORTANCE_WEIGHTS = ("btr", "torchrl")
TREES = ("auto", "torchrl", "torch")
_MAX_REDRAWS = 64
_FLOAT_MAX = float(torch.finfo(torch.float32).max)


def _make_trees(capacity: int, tree: str, device: torch.device) -> tuple[Any, Any, str]:
    """The (sum, min) trees of ``capacity`` leaves and the name of the kind chosen."""
    if tree not in TREES:
        raise ValueError(f"tree must be one of {TREES}, got {tree!r}.")
    native = _torchrl_adapter.native_trees()
    if tree == "torchrl":
        if native is None:
            raise RuntimeError(
                "tree='torchrl' needs TorchRL's C++ segment trees, which this torchrl install "
                "does not provide (its extension did not load); use tree='torch' or 'auto'."
            )
        if device.type != "cpu":
            raise ValueError(
                f"tree='torchrl' runs on the CPU only, got device={device}; use tree='torch' for "
                "device-resident priorities."
            )
    if tree == "torchrl" or (tree == "auto" and native is not None and device.type == "cpu"):
        sum_cls, min_cls = native
        return sum_cls(capacity), min_cls(capacity), "torchrl"
    if tree == "auto":
        logger.info("Using the pure-torch segment trees on %s.", device)
    return TorchSumTree(capacity, device=device), TorchMinTree(capacity, device=device), "torch"


class ReadinessSampler(Sampler):
    """A prioritized sampler whose slots can be switched off and on.

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
        tree: ``"auto"`` (default), ``"torchrl"`` or ``"torch"``; see the module docstring.
        device: where the priorities live (``"cuda"`` needs ``tree="torch"`` or ``"auto"``).
            Sampled indices and weights are returned on the CPU.
        generator: the random generator of the draws (a fresh unseeded one if ``None``).

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
        tree: str = "auto",
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if importance_weights not in IMPORTANCE_WEIGHTS:
            raise ValueError(
                f"importance_weights must be one of {IMPORTANCE_WEIGHTS}, got "
                f"{importance_weights!r}."
            )
        if not max_priority_floor >= 0:
            raise ValueError(f"max_priority_floor must be >= 0, got {max_priority_floor}.")
        if not isinstance(max_capacity, int) or max_capacity < 1:
            raise ValueError(f"max_capacity must be a positive integer, got {max_capacity!r}.")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
        super().__init__()
        self.device = torch.device(device)
        self._sum_tree, self._min_tree, self.tree = _make_trees(max_capacity, tree, self.device)
        self._max_capacity = max_capacity
        self._alpha = float(alpha)
        self._beta = float(beta)
        self._eps = float(eps)
        self._max_priority: tuple[float | None, int | None] = (None, None)
        self._rng = generator if generator is not None else torch.Generator()
        self.importance_weights = importance_weights
        self.stratified = bool(stratified)
        self.max_priority_floor = float(max_priority_floor)

    # ---------------------------------------------------------------- settings
    @property
    def alpha(self) -> float:
        """The priority exponent."""
        return self._alpha

    @property
    def beta(self) -> float:
        """The importance-sampling exponent of ``importance_weights="torchrl"``."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = float(value)

    @property
    def generator(self) -> torch.Generator:
        """The random generator the draws use (part of a checkpoint's state)."""
        return self._rng

    @generator.setter
    def generator(self, value: torch.Generator) -> None:
        self._rng = value

    @property
    def max_capacity(self) -> int:
        """Number of slots."""
        return self._max_capacity

    @property
    def default_priority(self) -> float:
        """The priority new slots enter at: ``max(max_priority_floor, largest priority set)``."""
        value = self._max_priority[0]
        return max(1.0 if value is None else float(value), self.max_priority_floor)

    # ---------------------------------------------------------------- priorities
    def _tree_index(self, index: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        return index if self.tree == "torchrl" else index.to(self.device)

    def _tree_get(self, tree: Any, index: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(tree[self._tree_index(index)]).reshape(-1).cpu()

    @torch.no_grad()
    def update_priority(
        self, index: torch.Tensor | int, priority: torch.Tensor | float, **kwargs: Any
    ) -> None:
        """Store ``(priority + eps) ** alpha`` at ``index`` and raise the running maximum.

        ``priority`` is one value or one per index; negative indices are skipped (TorchRL's
        convention for entries not to update).
        """
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
        priority = torch.as_tensor(priority, dtype=torch.float32).detach().reshape(-1).cpu()
        if priority.numel() == 1:
            priority = priority.expand(index.shape)
        if priority.shape != index.shape:
            raise ValueError(
                f"update_priority() got {priority.numel()} priorities for {index.numel()} indices."
            )
        keep = index >= 0
        if not keep.all():
            index, priority = index[keep], priority[keep]
        if index.numel() == 0:
            return
        max_p, where = priority.max(0)
        current = self._max_priority[0]
        if current is None or float(max_p) > current:
            self._max_priority = (float(max_p), int(index[where]))
        value = torch.pow(priority + self._eps, self._alpha)
        self._sum_tree[self._tree_index(index)] = value.to(self._tree_device())
        self._min_tree[self._tree_index(index)] = value.to(self._tree_device())

    def _tree_device(self) -> torch.device:
        return torch.device("cpu") if self.tree == "torchrl" else self.device

    def mark_update(self, index: torch.Tensor, **kwargs: Any) -> None:
        """TorchRL's hook for written slots: readiness is set by the buffer, so a no-op."""

    def mark_ready(self, index: torch.Tensor) -> None:
        """Make ``index`` sampleable at the current maximum priority (PER's insertion rule)."""
        if index.numel():
            self.update_priority(index, self.default_priority)

    def mark_unready(self, index: torch.Tensor) -> None:
        """Make ``index`` unsampleable: it is never drawn and never normalises a weight."""
        if index.numel():
            n, dev = index.numel(), self._tree_device()
            self._sum_tree[self._tree_index(index)] = torch.zeros(n, device=dev)
            self._min_tree[self._tree_index(index)] = torch.full((n,), _FLOAT_MAX, device=dev)

    # ---------------------------------------------------------------- sampling
    def _mass(self, p_sum: float, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Sampling masses for the draws ``rows`` of a batch (float32, the tree's dtype)."""
        u = torch.rand(rows.numel(), generator=self._rng)
        if not self.stratified:
            return u * p_sum
        segment = p_sum / batch_size
        return ((rows.double() + u.double()) * segment).float()

    def _scan(self, mass: torch.Tensor) -> torch.Tensor:
        mass = mass if self.tree == "torchrl" else mass.to(self.device)
        return torch.as_tensor(self._sum_tree.scan_lower_bound(mass)).reshape(-1).long().cpu()

    def sample(self, storage: Any, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Draw ``batch_size`` slots; ``info["priority_weight"]`` holds their importance weights.

        Slots ``[0, len(storage))`` are drawn from (all ``max_capacity`` slots if ``storage`` is
        ``None``).
        """
        size = self._max_capacity if storage is None else len(storage)
        if size == 0:
            raise RuntimeError("Cannot sample from an empty storage: extend the buffer first.")
        p_sum = float(self._sum_tree.query(0, size))
        if not p_sum > 0:
            raise RuntimeError(
                "Cannot sample: no slot has a positive priority (none is ready); mark slots ready "
                "(or extend the buffer) first."
            )
        rows = torch.arange(batch_size)
        index = self._scan(self._mass(p_sum, rows, batch_size))
        tree = self._tree_get(self._sum_tree, index.clamp(max=size - 1))
        for _ in range(_MAX_REDRAWS):
            bad = (tree <= 0) | (index >= size)
            if not bad.any():
                break
            redo = rows[bad]
            index[redo] = self._scan(self._mass(p_sum, redo, batch_size))
            tree[redo] = self._tree_get(self._sum_tree, index[redo].clamp(max=size - 1))
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
            p_min = float(self._min_tree.query(0, size))
            weight = torch.pow(tree / p_min, -self._beta)
        return index, {"priority_weight": weight}

    def tree_values(self, index: torch.Tensor) -> torch.Tensor:
        """The sum-tree entries ``(p + eps) ** alpha`` at ``index`` (0 where not ready)."""
        return self._tree_get(self._sum_tree, torch.as_tensor(index))

    # ---------------------------------------------------------------- TorchRL's Sampler API
    def _empty(self) -> None:
        every = torch.arange(self._max_capacity)
        self.mark_unready(every)
        self._max_priority = (None, None)

    def state_dict(self) -> dict[str, Any]:
        every = torch.arange(self._max_capacity)
        value, where = self._max_priority
        return {
            "alpha": self._alpha,
            "beta": self._beta,
            "eps": self._eps,
            "max_capacity": self._max_capacity,
            "max_priority": (
                None if value is None else float(value),
                None if where is None else int(where),
            ),
            "sum_tree": self._tree_get(self._sum_tree, every),
            "min_tree": self._tree_get(self._min_tree, every),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict
        if state["max_capacity"] != self._max_capacity:
            raise ValueError(
                f"The saved sampler has {state['max_capacity']} slots, this one "
                f"{self._max_capacity}."
            )
        self._alpha, self._beta, self._eps = state["alpha"], state["beta"], state["eps"]
        value, where = state["max_priority"]
        self._max_priority = (value, where) if value is not None else (None, None)
        for tree, values in (
            (self._sum_tree, state["sum_tree"]),
            (self._min_tree, state["min_tree"]),
        ):
            if isinstance(tree, (TorchSumTree, TorchMinTree)):
                tree.set_all(values)
            else:
                tree[torch.arange(self._max_capacity)] = values

    def dumps(self, path: str | Path) -> dict[str, Any]:
        """Save priorities and settings to ``path/"sampler.pt"`` (atomically).

        The file is the same whichever tree is used, so a dump moves between the two.

        Returns:
            The file's description, ``{"size": int, "crc32": str}``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
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
        self.load_state_dict(torch.load(source, weights_only=True))
