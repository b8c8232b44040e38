"""Unit tests of torchrl_rise.training.checkpoint_policy: saves, crash checkpoints, full disks."""

from __future__ import annotations

import errno
import logging

import pytest

from torchrl_rise.training import (
    checkpoint_policy,
    find_latest_checkpoint,
    list_checkpoints,
    load_config,
)
from torchrl_rise.training.checkpoint_policy import (
    CheckpointPolicy,
    DiskFullError,
    crash_checkpoint_veto,
)


def _policy(tmp_path, **checkpoint):
    return CheckpointPolicy(load_config({"checkpoint": {"keep": 2, **checkpoint}}), tmp_path)


def test_regular_saves_are_pruned_to_keep_and_crash_ones_are_never_latest(tmp_path):
    policy = _policy(tmp_path)
    for frames in (8, 16, 24):
        policy.save({"counters": {"frames": frames}}, replay=None, frames=frames, env_steps=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "frames_000000000024",
        "frames_000000000016",
    ]
    crash = policy.save({"counters": {}}, replay=None, frames=30, env_steps=0, crash=True)
    assert crash.name.startswith("crash_frames_")
    assert find_latest_checkpoint(tmp_path).name == "frames_000000000024"


def test_a_full_disk_names_the_intact_checkpoint(tmp_path, monkeypatch):
    policy = _policy(tmp_path)
    policy.save({"counters": {}}, replay=None, frames=8, env_steps=0)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_policy, "save_checkpoint", full)
    with pytest.raises(DiskFullError, match="frames_000000000008 is intact") as info:
        policy.save({"counters": {}}, replay=None, frames=16, env_steps=0)
    assert "resume=true" in str(info.value) and "at 16 frames" in str(info.value)
    empty = _policy(tmp_path / "new")
    with pytest.raises(DiskFullError, match="no earlier checkpoint"):
        empty.save({"counters": {}}, replay=None, frames=8, env_steps=0)


def test_other_errors_pass_through(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("not finite")

    monkeypatch.setattr(checkpoint_policy, "save_checkpoint", broken)
    with pytest.raises(ValueError, match="not finite"):
        _policy(tmp_path).save({}, replay=None, frames=8, env_steps=0)


def test_crash_checkpoint_only_of_a_consistent_state_and_not_on_a_full_disk(tmp_path, caplog):
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    assert "disk full" in crash_checkpoint_veto(disk_full, consistent=True)
    assert "disk full" in crash_checkpoint_veto(DiskFullError("x"), consistent=True)
    assert "half updated" in crash_checkpoint_veto(RuntimeError("x"), consistent=False)
    assert crash_checkpoint_veto(RuntimeError("x"), consistent=True) is None

    policy = _policy(tmp_path)
    saved = []
    with caplog.at_level(logging.ERROR):
        assert (
            policy.crash_checkpoint(
                RuntimeError("x"), consistent=False, save=lambda: saved.append(1)
            )
            is None
        )
        assert saved == [] and "no crash checkpoint" in caplog.text
        path = policy.crash_checkpoint(
            RuntimeError("x"), consistent=True, save=lambda: tmp_path / "crash_frames_8"
        )
        assert path == tmp_path / "crash_frames_8" and "crash checkpoint" in caplog.text

        def failing():
            raise OSError("read-only")

        assert policy.crash_checkpoint(RuntimeError("x"), consistent=True, save=failing) is None
        assert "could not write a crash checkpoint" in caplog.text


def test_pruning_without_a_chunk_store_does_nothing(tmp_path):
    policy = _policy(tmp_path)
    assert policy.chunk_store == tmp_path / "checkpoints" / "replay_chunks"
    policy.prune_unreferenced_chunks()  # no store yet
    assert not policy.chunk_store.exists()
