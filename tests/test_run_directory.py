"""Unit tests of torchrl_rise.training.rundir.RunDirectory: where a run goes, its lock, cleanup."""

from __future__ import annotations

import logging

import pytest

from torchrl_rise.training import load_config
from torchrl_rise.training.checkpoint import RunInUseError, save_checkpoint
from torchrl_rise.training.config import ConfigError
from torchrl_rise.training.rundir import RunDirectory


def _cfg(tmp_path, **logging_cfg):
    return load_config(
        {
            "env": {"suite": "memory", "env_id": "cue/L4"},
            "method": "btr",
            "seed": 3,
            "logging": {"root": str(tmp_path / "runs"), **logging_cfg},
        }
    )


def test_a_new_run_gets_a_stamped_folder_under_the_parent(tmp_path):
    run = RunDirectory(_cfg(tmp_path))
    assert run.open() == ([], None)
    try:
        assert run.path.parent == tmp_path / "runs" / "memory" / "cue_L4" / "btr" / "seed3"
        assert run.locked and run.checkpoints == run.path / "checkpoints"
        with pytest.raises(RunInUseError):  # a second start in the same directory
            RunDirectory(_cfg(tmp_path, run_dir=str(run.path))).open()
        assert run.path.is_dir()  # the refused start removed nothing
    finally:
        run.close(remove=True)
    assert not run.locked and not (tmp_path / "runs").exists()  # only what this start made


def test_close_removes_only_the_parents_it_made(tmp_path):
    (tmp_path / "runs").mkdir()
    run = RunDirectory(_cfg(tmp_path, run_dir=str(tmp_path / "runs" / "a" / "b")))
    run.open()
    run.close(remove=True)
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "a").exists()


def test_release_keeps_a_run_that_wrote_something(tmp_path):
    target = tmp_path / "runs" / "r"
    run = RunDirectory(_cfg(tmp_path, run_dir=str(target)))
    run.open()
    run.release(wrote=True)
    assert target.is_dir() and not run.locked
    empty = RunDirectory(_cfg(tmp_path, run_dir=str(tmp_path / "empty")))
    empty.open()
    empty.release(wrote=False)
    assert not (tmp_path / "empty").exists()


def test_resume_true_finds_the_run_with_checkpoints_and_a_new_run_is_refused_there(tmp_path):
    cfg = _cfg(tmp_path)
    first = RunDirectory(cfg)
    first.open()
    save_checkpoint(first.checkpoints, {"counters": {}}, step=8)
    first.release(wrote=True)
    resumed = RunDirectory(load_config({**_plain(cfg), "resume": True}))
    candidates, note = resumed.open()
    try:
        assert resumed.path == first.path and [c.name for c in candidates] == [
            "frames_000000000008"
        ]
        assert note is None
    finally:
        resumed.release(wrote=True)
    with pytest.raises(ConfigError, match="already holds"):
        RunDirectory(_cfg(tmp_path, run_dir=str(first.path))).open()


def _plain(cfg):
    from torchrl_rise.training.config import config_to_dict

    return config_to_dict(cfg)


def test_reclaim_removes_a_dead_runs_scratch_and_file_log_writes_train_log(tmp_path, caplog):
    run = RunDirectory(_cfg(tmp_path, run_dir=str(tmp_path / "r")))
    run.open()
    try:
        (run.path / "replay_scratch").mkdir()
        (run.path / "replay_scratch" / "obs.memmap").write_bytes(b"x" * 10)
        with caplog.at_level(logging.WARNING):
            run.reclaim(own_scratch=True)
        assert not (run.path / "replay_scratch").exists()
        assert "reclaimed what a dead run" in caplog.text
        with run.file_log():
            logging.getLogger("torchrl_rise.test").info("hello train.log")
        logging.getLogger("torchrl_rise.test").info("not any more")
        text = (run.path / "train.log").read_text()
        assert "hello train.log" in text and "not any more" not in text
    finally:
        run.close(remove=True)
