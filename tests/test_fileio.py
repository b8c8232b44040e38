"""Durable-file primitives: atomic writes, descriptions, verification, disk-full detection."""

from __future__ import annotations

import errno

import pytest
import torch

from torchrl_rise._fileio import (
    CheckpointCorruptError,
    describe_file,
    is_disk_full,
    verify_files,
    write_atomic,
)


def test_write_atomic_describes_what_it_wrote(tmp_path):
    desc = write_atomic(tmp_path / "s.pt", lambda f: torch.save({"a": torch.arange(5)}, f))
    assert desc == describe_file(tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["a"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["s.pt"]  # no temp file left behind


def test_write_atomic_keeps_the_old_file_when_the_writer_fails(tmp_path):
    write_atomic(tmp_path / "f", b"old")

    def broken(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "f", broken)
    assert (tmp_path / "f").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("damage", ["truncate", "pad", "flip", "delete"])
def test_verify_files_names_the_damaged_file(tmp_path, damage):
    entries = {"a.bin": write_atomic(tmp_path / "a.bin", bytes(range(200)))}
    verify_files(tmp_path, entries)
    path = tmp_path / "a.bin"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[:-1])
    elif damage == "pad":
        path.write_bytes(data + b"\0")
    elif damage == "flip":
        data[7] ^= 1
        path.write_bytes(data)
    else:
        path.unlink()
    with pytest.raises(CheckpointCorruptError, match=r"a\.bin"):
        verify_files(tmp_path, entries)


def test_is_disk_full_sees_wrapped_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
