"""The one place where torchrl_rise.replay touches TorchRL internals.

Everything TorchRL does not expose publicly and the replay code still needs goes through the
functions here, and :func:`check` names each such attribute: ``tests/test_replay_adapter.py`` calls
it, so a TorchRL upgrade that renames one fails there loudly, with the attribute's name, rather
than somewhere inside a sample.

What is used:

- ``TensorStorage._storage``: the storage's TensorDict of tensors (memmaps for
  ``LazyMemmapStorage``), read to bind plain-tensor views of the fields and to preallocate their
  files. TorchRL has no public accessor for it.
- ``TensorStorage._len``: the buffer allocates every slot of every lane up front, so it sets the
  storage's length to its capacity (TorchRL's ``set`` only grows it to the largest index written).
- ``SumSegmentTreeFp32``/``MinSegmentTreeFp32`` from ``torchrl.data.replay_buffers.samplers``:
  public names, ``None`` when TorchRL's C++ extension did not load.
"""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase

__all__ = ["check", "native_trees", "set_storage_len", "storage_fields"]

# (owner, attribute) pairs this module relies on; check() verifies each one.
PRIVATE_ATTRIBUTES = (
    ("torchrl.data.TensorStorage", "_storage"),
    ("torchrl.data.TensorStorage", "_len"),
)


def storage_fields(storage: Any) -> TensorDictBase:
    """The TensorDict that holds a TorchRL tensor storage's data (``storage._storage``)."""
    try:
        return storage._storage
    except AttributeError as err:
        raise _missing("TensorStorage", "_storage") from err


def set_storage_len(storage: Any, length: int) -> None:
    """Set the number of slots TorchRL considers written (``storage._len``)."""
    if not hasattr(storage, "_len"):
        raise _missing("TensorStorage", "_len")
    storage._len = length


def native_trees() -> tuple[type, type] | None:
    """TorchRL's float32 (sum, min) segment tree classes, or ``None`` where its extension is
    missing (TorchRL then raises "SumSegmentTreeFp32 is not available" when one is built)."""
    try:
        from torchrl.data.replay_buffers.samplers import MinSegmentTreeFp32, SumSegmentTreeFp32
    except ImportError:
        return None
    if SumSegmentTreeFp32 is None or MinSegmentTreeFp32 is None:
        return None
    return SumSegmentTreeFp32, MinSegmentTreeFp32


def check() -> None:
    """Raise if any TorchRL internal this module uses is gone (names the attribute)."""
    import torch
    from tensordict import TensorDict
    from torchrl.data import LazyMemmapStorage, LazyTensorStorage

    for cls in (LazyTensorStorage, LazyMemmapStorage):
        storage = cls(4)
        storage.set(torch.arange(2), TensorDict({"x": torch.zeros(2)}, batch_size=[2]))
        for _, name in PRIVATE_ATTRIBUTES:
            if not hasattr(storage, name):
                raise _missing(cls.__name__, name)
        if not isinstance(storage_fields(storage), TensorDictBase):
            raise _missing(cls.__name__, "_storage (a TensorDict of the stored fields)")
        before = len(storage)
        set_storage_len(storage, 4)
        if len(storage) != 4 or before != 2:
            raise AttributeError(
                f"TorchRL's {cls.__name__}._len no longer sets len(storage) (this replay buffer "
                "sets it to its capacity); torchrl_rise/replay/_torchrl_adapter.py needs updating."
            )


def _missing(owner: str, name: str) -> AttributeError:
    return AttributeError(
        f"TorchRL's {owner} has no attribute {name!r} any more (a TorchRL upgrade?): "
        "torchrl_rise/replay/_torchrl_adapter.py, the one place that reads it, needs updating."
    )
