"""Restarts and resumes of real (tiny) memory-recipe runs: a run without checkpoint starts again
from frame 0 with its files kept, a changed config is refused naming its keys, an allowed change
is recorded in config_history.jsonl (docs/training.md, "Checkpoints and resume")."""

from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers import CONFIG_DIR, hook_updates, needs_memory
from torchrl_rise.training import ConfigError, Trainer, load_checkpoint, train
from torchrl_rise.training.checkpoint import RunInUseError, RunLock
from torchrl_rise.training.loop import DiskFullError

SHORT = [
    "preset=tiny",
    "env.env_id=cue-L6",
    "env.frame_size=16",
    "total_frames=256",
    "checkpoint.interval_frames=256",
    "eval.interval_frames=256",
    "logging.interval_frames=64",
    "replay.learning_starts=64",
    "replay.batch_size=8",
    "method=rise",
]


pytestmark = needs_memory


def _cfg(run: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="memory",
            overrides=[*SHORT, f"logging.root={run.parent}", f"logging.run_dir={run}", *overrides],
        )


def _frames(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["frames"]) for r in csv.DictReader(f)]


def _fail_before_the_first_checkpoint(monkeypatch, run: Path) -> None:
    """A run that dies inside a step at 128 frames: logs and config, no checkpoint at all."""

    def after_update(trainer, learner):
        if trainer.counters.frames >= 128:
            raise RuntimeError("died before the first checkpoint")

    with monkeypatch.context() as patch:
        hook_updates(patch, after_update)
        with pytest.raises(RuntimeError, match="died before"):
            train(_cfg(run))
    assert not list(run.glob("checkpoints/*frames_*"))


@pytest.mark.parametrize("resume", ["true", "false"])
def test_a_run_stopped_before_its_first_checkpoint_starts_again_keeping_its_files(
    tmp_path, monkeypatch, resume
):
    run = tmp_path / "run"
    _fail_before_the_first_checkpoint(monkeypatch, run)
    before = {n: (run / n).read_bytes() for n in ("config.json", "train.csv", "summary.json")}
    trainer = Trainer(_cfg(run, f"resume={resume}"))
    summary = trainer.run()
    assert summary["status"] == "finished" and trainer.resumed_from is None
    kept = run / "partial-1"
    assert {n: (kept / n).read_bytes() for n in before} == before
    assert json.loads((kept / "summary.json").read_text())["status"] == "failed"
    assert "died before" in (kept / "train.log").read_text()
    assert _frames(run / "train.csv") == [64, 128, 192, 256]  # from frame 0, once each
    log = (run / "train.log").read_text()
    assert "stopped before its first checkpoint" in log and str(kept) in log
    assert "died before" not in log  # the new run's own log


def test_a_live_run_without_checkpoint_is_never_set_aside(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _fail_before_the_first_checkpoint(monkeypatch, run)
    with RunLock(run), pytest.raises(RunInUseError, match="in use by process"):
        train(_cfg(run, "resume=true"))
    assert not (run / "partial-1").exists() and (run / "train.csv").exists()


def test_a_full_disk_at_the_first_checkpoint_says_to_start_again_and_that_works(
    tmp_path, monkeypatch
):
    from torchrl_rise.training import checkpoint as ckpt_module

    run = tmp_path / "run"
    real = ckpt_module.write_atomic

    def write_atomic(path, write):
        if Path(path).name == "state.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt_module, "write_atomic", write_atomic)
        with pytest.raises(DiskFullError) as info:
            train(_cfg(run))
    message = str(info.value)
    assert "no earlier checkpoint, so nothing to resume from" in message
    assert (
        f"start the run again from frame 0 (its logs are kept in partial-<n>/): logging.run_dir={run} resume=true"
        in message
    )
    assert "is intact" not in message
    assert train(_cfg(run, "resume=true"))["status"] == "finished"
    assert (run / "partial-1" / "train.csv").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 256-frame rise run (K=8, batch 8, width_scale 0.25), its checkpoint at 256."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(_cfg(run))
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def test_a_changed_config_is_refused_naming_each_key_before_anything_loads(trained, tmp_path):
    run = _copy(trained, tmp_path)
    config = (run / "config.json").read_bytes()
    overrides = [
        "total_frames=512",
        "encoder.context_length=4",
        "replay.batch_size=16",
        "network.kwargs.width_scale=0.5",
    ]
    with pytest.raises(ConfigError) as info:
        train(_cfg(run, "resume=true", *overrides))
    message = str(info.value)
    for line in (
        "encoder.context_length: 8 (trained) -> 4 (now)",
        "replay.batch_size: 8 (trained) -> 16 (now)",
        "network.kwargs.width_scale: 0.25 (trained) -> 0.5 (now)  [cannot change on a resume]",
    ):
        assert line in message
    assert "size mismatch" not in message and "layout" not in message
    assert "total_frames" not in message.split("\n", 1)[1]  # upwards: free
    # one key at a time: each named with both values, K and the batch allowable
    for override, line in (
        ("encoder.context_length=16", "encoder.context_length: 8 (trained) -> 16 (now)"),
        ("replay.batch_size=16", "replay.batch_size: 8 (trained) -> 16 (now)"),
        ("network.kwargs.width_scale=0.5", "network.kwargs.width_scale: 0.25 (trained) -> 0.5"),
    ):
        with pytest.raises(ConfigError, match="cannot resume from") as info:
            train(_cfg(run, "resume=true", "total_frames=512", override))
        assert line in str(info.value) and "size mismatch" not in str(info.value)
    with pytest.raises(ConfigError, match="total_frames: 128 is below the 256 frames trained"):
        train(_cfg(run, "resume=true", "total_frames=128"))
    assert (run / "config.json").read_bytes() == config and not (
        run / "config_history.jsonl"
    ).exists()
    # a new run there is refused, naming the one command that works
    with pytest.raises(ConfigError, match=r"total_frames=<more than 256>"):
        train(_cfg(run, "resume=false"))


def test_an_allowed_change_is_recorded_in_the_history_not_in_config_json(trained, tmp_path):
    run = _copy(trained, tmp_path)
    original = json.loads((run / "config.json").read_text())
    overrides = ["total_frames=384", "replay.batch_size=16"]
    summary = train(
        _cfg(run, "resume=true", *overrides, "resume_allow_changes=[replay.batch_size]")
    )
    assert summary["status"] == "finished" and summary["frames"] == 384
    assert json.loads((run / "config.json").read_text()) == original  # the original record
    (entry,) = [
        json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()
    ]
    assert entry["frames"] == 256 and entry["checkpoint"] == "checkpoints/frames_000000000256"
    assert entry["changes"] == {
        "replay.batch_size": {"from": 8, "to": 16},
        "total_frames": {"from": 256, "to": 384},
    }
    assert load_checkpoint(run)["state"]["config"]["replay"]["batch_size"] == 16
    assert summary["config"]["replay"]["batch_size"] == 16
    # the next resume compares with what the checkpoint trained with: batch 16 needs no allowance
    train(_cfg(run, "resume=true", "total_frames=448", "replay.batch_size=16"))
    lines = (run / "config_history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["changes"] == {"total_frames": {"from": 384, "to": 448}}


def test_a_finished_run_requeued_with_resume_true_ends_finished_at_once(trained, tmp_path):
    run = _copy(trained, tmp_path)
    evals = (run / "eval.csv").read_text()
    trainer = Trainer(_cfg(run, "resume=true"))
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["frames"] == 256
    assert trainer.resumed_from.name == "frames_000000000256"
    assert (run / "eval.csv").read_text() == evals  # the final evaluation is not repeated
    assert not (run / "config_history.jsonl").exists() and not (run / "partial-1").exists()
