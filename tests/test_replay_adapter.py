"""TorchRL internals the replay code relies on: all in one adapter, each checked by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage

from torchrl_rise.replay import _torchrl_adapter

REPLAY = Path(__file__).resolve().parents[1] / "torchrl_rise" / "replay"


def test_every_torchrl_internal_used_is_still_there():
    _torchrl_adapter.check()  # fails naming the attribute after a TorchRL upgrade removes it


def test_a_removed_attribute_is_named():
    class Upgraded:  # a storage of a future TorchRL without the private fields
        pass

    with pytest.raises(AttributeError, match=r"'_storage'.*_torchrl_adapter\.py"):
        _torchrl_adapter.storage_fields(Upgraded())
    with pytest.raises(AttributeError, match=r"'_len'.*_torchrl_adapter\.py"):
        _torchrl_adapter.set_storage_len(Upgraded(), 3)


def test_set_storage_len_and_fields():
    storage = LazyTensorStorage(6)
    storage.set(torch.arange(2), TensorDict({"x": torch.ones(2)}, batch_size=[2]))
    _torchrl_adapter.set_storage_len(storage, 6)
    assert len(storage) == 6
    assert torch.equal(_torchrl_adapter.storage_fields(storage)["x"][:2], torch.ones(2))


def test_no_other_replay_module_reads_a_torchrl_private_attribute():
    pattern = re.compile(
        r"\b(storage|sampler)\._(len|storage|rng|sum_tree|min_tree|max_priority)\b"
    )
    offenders = [
        f"{path.name}:{i}"
        for path in REPLAY.glob("*.py")
        if path.name != "_torchrl_adapter.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == [], offenders
