"""The storage role: every env step's record kept once, in a TorchRL ``LazyMemmapStorage`` (and,
optionally, some fields in device-resident tensors).

The storage holds ``capacity + 1`` records; the last one stays all zeros and pads invalid window
entries (a gather of it needs no masking pass). :attr:`StepStorage.fields` are plain-tensor views of
the memmaps (and the device tensors), which the assemblers index directly.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections.abc import Mapping

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage

from torchrl_rise._fileio import is_disk_full
from torchrl_rise.replay import _torchrl_adapter
from torchrl_rise.replay.scratch import InsufficientDiskSpaceError, ScratchDir

__all__ = ["FIELD_NAMES", "StepStorage", "record_nbytes", "step_field_specs"]

logger = logging.getLogger(__name__)

# The memmap files a step storage writes into its scratch_dir (TorchRL names them after the fields).
FIELD_NAMES = (
    "frame",
    "embedding",
    "action",
    "reward",
    "terminated",
    "truncated",
    "final",
    "episode",
    "lane_step",
    "episode_step",
)

FieldSpecs = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def step_field_specs(
    frame_shape: tuple[int, ...], embedding: tuple[torch.dtype, int] | None
) -> FieldSpecs:
    """dtype and per-record shape of every stored field of a step record, in snapshot order.

    Args:
        frame_shape: ``(C, H, W)`` of one frame.
        embedding: ``(dtype, dim)`` of the stored embedding, or ``None`` when none is stored.
    """
    specs = {
        "frame": (torch.uint8, frame_shape),
        "action": (torch.int64, ()),
        "reward": (torch.float32, ()),
        "terminated": (torch.bool, ()),
        "truncated": (torch.bool, ()),
        "final": (torch.bool, ()),
        "episode": (torch.int64, ()),
        "lane_step": (torch.int64, ()),
        "episode_step": (torch.int64, ()),
    }
    if embedding is not None:
        dtype, dim = embedding
        specs["embedding"] = (dtype, (dim,))
    return specs


def record_nbytes(specs: FieldSpecs) -> int:
    """Bytes of one record over every field of ``specs``."""
    return sum(
        math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        for dtype, shape in specs.values()
    )


class StepStorage:
    """``capacity`` step records plus one all-zero pad record, on a ``LazyMemmapStorage``.

    Args:
        capacity: records the lanes use (the pad record is slot ``capacity``).
        specs: the fields (:func:`step_field_specs`, plus any a subclass stores).
        scratch: the locked directory of the memmap files.

    Keyword Args:
        device: keep ``device_names`` in tensors on this device instead of the memmap.
        device_names: the fields kept on ``device``.
        zero_names: fields whose pad record is zeroed again after binding (device-resident
            tensors start as zeros already; memmaps are written with the pad).

    Example:
        >>> from torchrl_rise.replay.scratch import ScratchDir
        >>> scratch = ScratchDir(None, field_names=FIELD_NAMES)
        >>> storage = StepStorage(8, step_field_specs((1, 2, 2), None), scratch)
        >>> storage.nbytes_per_record
        43
        >>> storage.close(); scratch.release()
    """

    def __init__(
        self,
        capacity: int,
        specs: FieldSpecs,
        scratch: ScratchDir,
        *,
        device: torch.device | None = None,
        device_names: tuple[str, ...] = (),
        zero_names: tuple[str, ...] = (),
    ) -> None:
        self.capacity = capacity
        self.zero = capacity
        self.specs = specs
        self.scratch = scratch
        self.device = device
        self.device_names = device_names
        self.zero_names = zero_names
        self.fields: dict[str, torch.Tensor] = {}
        self.memmap: LazyMemmapStorage | None = LazyMemmapStorage(
            capacity + 1, scratch_dir=scratch.path, auto_cleanup=scratch.owned
        )

    @property
    def nbytes_per_record(self) -> int:
        """Bytes of one record over every field."""
        return record_nbytes(self.specs)

    @property
    def initialized(self) -> bool:
        """Whether the memmap files exist (the first write creates them)."""
        return self.memmap is not None and self.memmap.initialized

    def write(self, index: torch.Tensor, data: Mapping[str, torch.Tensor]) -> None:
        """Write ``data`` (one row per slot of ``index``), creating the files on the first call."""
        data = dict(data)
        on_device = {name: data.pop(name) for name in self.device_names}
        batch = TensorDict(data, batch_size=[index.numel()])
        if not self.memmap.initialized:
            self.initialize()
        self.memmap.set(index, batch)
        if on_device:
            where = index.to(self.device)
            for name, value in on_device.items():
                self.fields[name][where] = value.to(self.device)
        # Every slot of every lane is allocated: the sampler must see the whole range.
        _torchrl_adapter.set_storage_len(self.memmap, self.capacity)

    def initialize(self) -> None:
        """Create the memmap files (writing the all-zero pad record) and allocate their blocks."""
        pad = TensorDict(
            {
                name: torch.zeros(1, *shape, dtype=dtype)
                for name, (dtype, shape) in self.specs.items()
                if name not in self.device_names
            },
            batch_size=[1],
        )
        self.memmap.set(torch.tensor([self.zero]), pad)
        _torchrl_adapter.set_storage_len(self.memmap, self.capacity)
        self._bind_fields()
        self._preallocate()

    def _preallocate(self) -> None:
        """Allocate every memmap file's blocks now (they are sparse): a disk without room fails
        here with a clear error instead of killing the process with SIGBUS at some later write."""
        total = (self.capacity + 1) * self.nbytes_per_record
        for name, value in _torchrl_adapter.storage_fields(self.memmap).items():
            filename = value.filename
            size = value.numel() * value.element_size()
            fd = os.open(filename, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as err:
                if is_disk_full(err):
                    raise InsufficientDiskSpaceError(
                        errno.ENOSPC,
                        f"No room to allocate the replay memmaps in {str(self.scratch.path)!r}: "
                        f"the {name!r} field needs {size / 2**30:.2f} GiB of the buffer's "
                        f"{total / 2**30:.2f} GiB. Free disk space, point scratch_dir to a "
                        "disk with more room or lower capacity (this buffer is closed: build a new "
                        "one).",
                    ) from err
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    logger.warning(
                        "The file system of %s cannot preallocate files (%s): a disk that "
                        "fills up later may end the process with SIGBUS.",
                        self.scratch.path,
                        err,
                    )
                    return
                raise
            finally:
                os.close(fd)

    def _bind_fields(self) -> None:
        td = _torchrl_adapter.storage_fields(self.memmap)
        # Plain-tensor views of the memmaps (skips the subclass's Python-level indexing).
        self.fields = {key: value.as_subclass(torch.Tensor) for key, value in td.items()}
        for name in self.device_names:
            dtype, shape = self.specs[name]
            self.fields[name] = torch.zeros(
                self.capacity + 1, *shape, dtype=dtype, device=self.device
            )
        for name in self.zero_names:
            self.fields[name][self.zero].zero_()

    def snapshot_fields(self) -> dict[str, torch.Tensor]:
        """The fields in snapshot order."""
        return {name: self.fields[name] for name in self.specs}

    def close(self) -> None:
        """Drop the fields and the TorchRL storage (its files are deleted with the scratch dir)."""
        self.fields = {}
        memmap, self.memmap = self.memmap, None
        if memmap is not None and memmap.initialized and self.scratch.owned:
            memmap.cleanup()
        del memmap
