"""Pure-torch sum and min segment trees: the prioritized sampler's trees where TorchRL's C++ ones
do not load, and on a GPU (device-resident priorities).

The layout and arithmetic copy TorchRL's ``SumSegmentTreeFp32``/``MinSegmentTreeFp32`` (its C++
``SegmentTree``): ``P`` leaves, ``P`` the smallest power of two ``>= size``, stored in one float32
array of ``2 * P`` nodes (node ``i`` has children ``2i`` and ``2i + 1``, leaf ``j`` is node
``P + j``), every inner node the sum (min) of its two children in float32. Same node values, same
``query`` order of additions and the same descent in ``scan_lower_bound``, so both trees give the
same sums and the same indices for the same masses (tested against TorchRL's on the CPU).

Everything is vectorised: an update writes the leaves and then recomputes the touched parents one
level at a time; ``scan_lower_bound`` descends the ``log2 P`` levels for the whole batch at once.
"""

from __future__ import annotations

import torch

__all__ = ["TorchMinTree", "TorchSumTree"]


class _TorchSegmentTree:
    _identity: float

    def __init__(self, size: int, *, device: torch.device | str | None = None) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}.")
        self.size = size
        self.capacity = 1 << max(size - 1, 0).bit_length()
        self.depth = self.capacity.bit_length() - 1
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.values = torch.full(
            (2 * self.capacity,), self._identity, dtype=torch.float32, device=self.device
        )

    def __len__(self) -> int:
        return self.size

    def _op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _index(self, index: torch.Tensor | int) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.device).long().reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            raise IndexError(f"segment tree index out of range [0, {self.size}).")
        return index

    def __getitem__(self, index: torch.Tensor | int) -> torch.Tensor:
        return self.values[self._index(index) + self.capacity]

    def __setitem__(self, index: torch.Tensor | int, value: torch.Tensor | float) -> None:
        index = self._index(index)
        if index.numel() == 0:
            return
        value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        value = value.expand(index.shape) if value.numel() == 1 else value.reshape(-1)
        if value.shape != index.shape:
            raise ValueError(f"got {value.numel()} values for {index.numel()} indices.")
        # Repeated indices: the last value wins (as in TorchRL's tree), on every device.
        index, inverse = torch.unique(index, return_inverse=True)
        last = torch.full(index.shape, -1, dtype=torch.long, device=self.device)
        last.scatter_reduce_(0, inverse, torch.arange(inverse.numel(), device=self.device), "amax")
        node = index + self.capacity
        self.values[node] = value[last]
        # Parents: a parent listed twice gets the same value twice (no dedup needed per level).
        for _ in range(self.depth):
            node = node >> 1
            self.values[node] = self._op(self.values[2 * node], self.values[2 * node + 1])

    def set_all(self, value: torch.Tensor) -> None:
        """Replace every leaf (``value`` of shape ``[size]``) and rebuild the tree level by level."""
        self.values[self.capacity : self.capacity + self.size] = value.to(
            device=self.device, dtype=torch.float32
        )
        width = self.capacity
        while width > 1:
            children = self.values[width : 2 * width]
            width //= 2
            self.values[width : 2 * width] = self._op(children[0::2], children[1::2])

    def query(self, start: int, end: int) -> float:
        """``op`` over the leaves ``[start, end)``, in the C++ tree's order of operations."""
        if not 0 <= start <= end <= self.size:
            raise IndexError(f"query range [{start}, {end}) is outside [0, {self.size}].")
        lo, hi = start + self.capacity, end + self.capacity
        # The handful of nodes (at most 2 per level) is read in one transfer.
        nodes = []
        while lo < hi:
            if lo & 1:
                nodes.append(lo)
                lo += 1
            if hi & 1:
                hi -= 1
                nodes.append(hi)
            lo >>= 1
            hi >>= 1
        ret = torch.tensor(self._identity, dtype=torch.float32)
        for v in self.values[torch.tensor(nodes, dtype=torch.long, device=self.device)].cpu():
            ret = self._op(ret, v)
        return float(ret)


class TorchSumTree(_TorchSegmentTree):
    """A float32 sum segment tree in plain torch (CPU or GPU), a stand-in for TorchRL's
    ``SumSegmentTreeFp32`` with the same results.

    Args:
        size: number of leaves.

    Keyword Args:
        device: where the tree lives.

    Example:
        >>> import torch
        >>> tree = TorchSumTree(5)
        >>> tree[torch.arange(5)] = torch.tensor([1.0, 0.0, 2.0, 3.0, 4.0])
        >>> tree.query(0, 5)
        10.0
        >>> tree.scan_lower_bound(torch.tensor([0.5, 1.5, 9.5])).tolist()
        [0, 2, 4]
    """

    _identity = 0.0

    def _op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def scan_lower_bound(self, mass: torch.Tensor) -> torch.Tensor:
        """For each mass ``v``, the smallest leaf ``i`` with ``sum(leaves[: i + 1]) >= v``
        (``size`` where ``v`` exceeds the total), as TorchRL's tree computes it."""
        mass = torch.as_tensor(mass, dtype=torch.float32, device=self.device).reshape(-1).clone()
        node = torch.ones(mass.shape, dtype=torch.long, device=self.device)
        over = mass > self.values[1]
        for _ in range(self.depth):
            left = 2 * node
            lv = self.values[left]
            go_left = mass <= lv
            mass = torch.where(go_left, mass, mass - lv)
            node = torch.where(go_left, left, left + 1)
        index = node - self.capacity
        return torch.where(over, torch.full_like(index, self.size), index)


class TorchMinTree(_TorchSegmentTree):
    """A float32 min segment tree in plain torch (CPU or GPU); TorchRL's ``MinSegmentTreeFp32``.

    Example:
        >>> import torch
        >>> tree = TorchMinTree(4)
        >>> tree[torch.arange(4)] = torch.tensor([3.0, 1.0, 2.0, 5.0])
        >>> tree.query(0, 4), tree.query(2, 4)
        (1.0, 2.0)
    """

    _identity = float(torch.finfo(torch.float32).max)

    def _op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.minimum(a, b)
