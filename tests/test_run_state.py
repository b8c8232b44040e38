"""Unit tests of torchrl_rise.training.run_state: what a checkpoint holds, and restoring it."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.training import list_checkpoints, load_config, save_checkpoint
from torchrl_rise.training.counters import STATE_FORMAT, Counters, Schedule
from torchrl_rise.training.run_state import RunProgress, checkpoint_state, restore_first_good

CFG = {"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4"}}


def _comps(seed):
    torch.manual_seed(seed)
    actor, loss = nn.Linear(3, 2), nn.Linear(2, 2)
    return SimpleNamespace(
        actor=actor,
        loss=loss,
        optimizer=torch.optim.Adam(loss.parameters(), lr=1e-3),
        target_updater=SimpleNamespace(counter=seed),
        replay=None,
    )


def _save(cfg, comps, run, frames, *, evaluations=None):
    state = checkpoint_state(
        cfg,
        comps,
        counters=Counters(frames=frames, updates=frames // 4),
        schedule=Schedule(next_eval=frames + 8),
        evaluations=evaluations or {"evaluations": [], "final_eval": {}},
        recent={"scores": [1.0], "lengths": [4.0], "success": []},
    )
    return save_checkpoint(run / "checkpoints", state, step=frames)


def test_the_state_holds_format_config_weights_counters_and_rng(tmp_path):
    cfg = load_config(CFG)
    comps = _comps(1)
    state = checkpoint_state(
        cfg,
        comps,
        counters=Counters(frames=8),
        schedule=Schedule(next_log=16),
        evaluations={"evaluations": [{"frames": 8}], "final_eval": {"frames": 8}},
        recent={"scores": [], "lengths": [], "success": []},
    )
    assert state["format"] == STATE_FORMAT and state["method"] == "btr"
    assert state["config"]["env"]["env_id"] == "cue-L4"
    assert state["counters"]["frames"] == 8 and state["schedule"]["next_log"] == 16
    assert state["evaluations"] == [{"frames": 8}] and state["target_updater_counter"] == 1
    assert set(state["actor"]) == {"weight", "bias"}
    assert {"python", "numpy", "torch"} <= set(state["rng"])


def test_restores_weights_counters_and_rng_and_a_new_run_restores_nothing(tmp_path):
    cfg = load_config(CFG)
    saved = _comps(1)
    random.seed(5)
    _save(cfg, saved, tmp_path, 16, evaluations={"evaluations": [{"frames": 8}], "final_eval": {}})
    expected = random.random()
    fresh = _comps(2)
    progress = restore_first_good(
        cfg, fresh, list_checkpoints(tmp_path), run_dir=tmp_path, chunk_store=tmp_path / "none"
    )
    assert random.random() == expected  # the RNG state of the save
    assert torch.equal(fresh.actor.weight, saved.actor.weight)
    assert fresh.target_updater.counter == 1
    assert progress.counters.frames == 16 and progress.schedule.next_eval == 24
    assert progress.evaluations["evaluations"] == [{"frames": 8}]
    assert progress.recent["scores"] == [1.0] and progress.path.name.endswith("16")
    new = restore_first_good(cfg, _comps(3), [], run_dir=tmp_path, chunk_store=tmp_path)
    assert new == RunProgress() and new.path is None


def test_resume_true_falls_back_from_a_damaged_checkpoint_an_explicit_one_does_not(tmp_path):
    cfg = load_config({**CFG, "resume": True})
    comps = _comps(1)
    _save(cfg, comps, tmp_path, 8)
    newest = _save(cfg, comps, tmp_path, 16)
    (newest / "state.pt").write_bytes(b"damaged")
    progress = restore_first_good(
        cfg, _comps(2), list_checkpoints(tmp_path), run_dir=tmp_path, chunk_store=tmp_path
    )
    assert progress.counters.frames == 8
    explicit = load_config({**CFG, "resume": str(newest)})
    with pytest.raises(CheckpointCorruptError):
        restore_first_good(explicit, _comps(2), [newest], run_dir=tmp_path, chunk_store=tmp_path)
    with pytest.raises(CheckpointCorruptError, match="every checkpoint"):
        restore_first_good(cfg, _comps(2), [newest], run_dir=tmp_path, chunk_store=tmp_path)
