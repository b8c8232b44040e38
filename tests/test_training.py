"""Unit tests of torchrl_rise.training: config validation, checkpoints, logs, summary, evaluation."""

from __future__ import annotations

import csv
import json
import math
import pickle
import random

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule

from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.training import (
    ConfigError,
    TrainConfig,
    evaluate,
    find_latest_checkpoint,
    load_checkpoint,
    load_config,
    make_summary,
    save_checkpoint,
    validate_config,
    write_summary,
)
from torchrl_rise.training.checkpoint import get_rng_state, set_rng_state
from torchrl_rise.training.config import check_disk_space
from torchrl_rise.training.loggers import CSVTable, RunLogger

# ---------------------------------------------------------------------------------------- config


def test_defaults_are_btr_atari():
    cfg = load_config()
    assert (cfg.method, cfg.env.suite, cfg.env.num_envs, cfg.env.frame_size) == (
        "rise",
        "atari",
        64,
        84,
    )
    assert (cfg.replay.capacity, cfg.replay.batch_size, cfg.replay.learning_starts) == (
        2**20,
        256,
        200_000,
    )
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.grad_clip) == (1e-4, 1.95e-5, 10.0)
    assert (cfg.loss.gamma, cfg.loss.n_step, cfg.loss.target_update_interval) == (0.997, 3, 500)
    assert cfg.replay.alpha == 0.2 and cfg.exploration.eps_decay_frames == 8_000_000
    assert cfg.eval.eps == 0.01 and cfg.eval.interval_frames == 1_000_000


def test_load_config_merges_and_returns_dataclass():
    cfg = load_config({"method": "btr", "env": {"num_envs": 8}}, seed=3)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.method, cfg.env.num_envs, cfg.seed, cfg.env.frame_stack) == ("btr", 8, 3, 4)
    assert load_config(cfg).env.num_envs == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"nope": 1}, "Key 'nope' not in 'TrainConfig'"),
        ({"env": {"num_envs": "many"}}, "env.num_envs"),
        ({"method": "dqn"}, "method must be one of"),
        ({"env": {"suite": "mujoco"}}, "env.suite must be one of"),
        ({"env": {"num_envs": -4}}, "env.num_envs must be > 0"),
        ({"env": {"frame_size": 0}}, "env.frame_size must be a positive int"),
        ({"env": {"frame_size": [84, 84, 3]}}, "env.frame_size must be a positive int"),
        ({"env": {"frame_stack": -1}}, "env.frame_stack must be > 0"),
        ({"encoder": {"context_length": 0}}, "encoder.context_length (K) must be >= 1"),
        ({"replay": {"capacity": -1}}, "replay.capacity must be > 0"),
        ({"replay": {"batch_size": 0}}, "replay.batch_size must be > 0"),
        (
            {"replay": {"capacity": 128, "batch_size": 256, "learning_starts": 100}},
            "larger than replay.capacity",
        ),
        (
            {"replay": {"batch_size": 256, "learning_starts": 300}},
            "more than the buffer can serve when learning starts",
        ),
        ({"total_frames": 1000, "replay": {"learning_starts": 2000}}, "would never learn"),
        ({"loss": {"gamma": 1.5}}, "loss.gamma must lie in (0, 1]"),
        ({"env": {"reward_scale": 0.01}}, "scale or clip the rewards, not both"),
        (
            {"env": {"clip_rewards": False, "reward_scale": 0}},
            "env.reward_scale must be a positive",
        ),
        ({"loss": {"n_step": 0}}, "loss.n_step must be > 0"),
        ({"optim": {"lr": -1e-4}}, "optim.lr must be > 0"),
        ({"replay": {"alpha": 2.0}}, "replay.alpha must lie in [0, 1]"),
        ({"exploration": {"eps_end": -0.1}}, "exploration.eps_end must lie in [0, 1]"),
        ({"collector": {"backend": "threads"}}, "collector.backend must be one of"),
        ({"collector": {"backend": "multi_async"}}, "collector.backend must be one of"),
        ({"collector": {"num_workers": 2}}, "Use collector.backend=multi_sync"),
        (
            {"collector": {"backend": "multi_sync", "num_workers": 3}},
            "not divisible by collector.num_workers",
        ),
        (
            {"encoder": {"name": "online"}, "collector": {"backend": "multi_sync"}},
            "worker processes would keep stale copies",
        ),
        ({"method": "recurrent_baseline"}, "the method is method=recurrent"),
        ({"logging": {"backends": ["csv", "neptune"]}}, "logging.backends has unknown"),
        ({"eval": {"episodes": 0}}, "eval.episodes must be > 0"),
        ({"resume": ""}, "resume must be false, true"),
        ({"checkpoint": {"keep": 0}}, "checkpoint.keep must be > 0"),
    ],
)
def test_invalid_config_values_are_explained(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(override)
    assert message in str(err.value)


def test_context_length_only_matters_for_rise():
    cfg = load_config({"method": "btr", "encoder": {"context_length": 0}})
    assert cfg.encoder.context_length == 0


def test_validate_config_checks_a_mutated_dataclass():
    cfg = TrainConfig()
    cfg.replay.batch_size = 2**21
    with pytest.raises(ConfigError, match=r"larger than replay\.capacity"):
        validate_config(cfg)


def test_disk_space_check_names_the_sizes(tmp_path):
    check_disk_space(tmp_path / "not" / "yet" / "there", 1)
    with pytest.raises(ConfigError, match=r"needs about .* GiB .* only .* GiB is free"):
        check_disk_space(tmp_path, 2**62, hint="Lower replay.capacity.")


# ------------------------------------------------------------------------------------ checkpoint


def test_checkpoint_roundtrip_is_weights_only_and_atomic(tmp_path):
    net = torch.nn.Linear(3, 2)
    state = {"model": net.state_dict(), "counters": {"frames": 128, "updates": 2}, "tag": "x"}
    replay_calls = []

    def dump(path):
        path.mkdir()
        (path / "blob.bin").write_bytes(b"123")
        replay_calls.append(path)

    first = save_checkpoint(tmp_path, state, step=128, save_replay=dump, keep=2)
    assert first.name == "frames_000000000128" and (first / "replay" / "blob.bin").exists()
    loaded = load_checkpoint(tmp_path)
    assert loaded["path"] == first and loaded["replay_dir"] == first / "replay"
    assert loaded["state"]["counters"] == {"frames": 128, "updates": 2}
    torch.testing.assert_close(loaded["state"]["model"]["weight"], net.weight.detach())
    # no temporary folders left behind, the pointer names the newest checkpoint
    assert not list(tmp_path.glob(".tmp*"))
    assert (tmp_path / "latest").read_text().strip() == first.name

    second = save_checkpoint(tmp_path, {"counters": {"frames": 256}}, step=256, keep=2)
    third = save_checkpoint(tmp_path, {"counters": {"frames": 512}}, step=512, keep=2)
    kept = sorted(p.name for p in tmp_path.glob("frames_*"))
    assert kept == [second.name, third.name]
    assert find_latest_checkpoint(tmp_path) == third
    assert find_latest_checkpoint(tmp_path.parent / "missing") is None
    # a run directory resolves through its checkpoints/ folder
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", {"a": 1}, step=1)
    assert find_latest_checkpoint(run).name == "frames_000000000001"
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "empty")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_loading_never_executes_code(tmp_path, capsys):
    folder = save_checkpoint(tmp_path, {"x": _Evil()}, step=1)  # a valid manifest, evil payload
    with pytest.raises(CheckpointCorruptError, match=r"state\.pt") as info:
        load_checkpoint(folder)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert "code ran" not in capsys.readouterr().out


def test_rng_state_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = get_rng_state()
    path = save_checkpoint(tmp_path, {"rng": state}, step=1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["state"]["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ------------------------------------------------------------------------------------ logs


def test_csv_table_adds_columns_and_appends_on_reopen(tmp_path):
    path = tmp_path / "train.csv"
    table = CSVTable(path, columns=("frames", "loss"))
    table.write({"frames": 1, "loss": 0.5})
    table.write({"frames": 2, "gate_mean": 0.25})  # a new column widens the header
    table.close()
    again = CSVTable(path, columns=("frames", "loss"))
    again.write({"frames": 3, "loss": float("nan")})
    again.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["frames", "loss", "gate_mean"]
    assert [(r["frames"], r["loss"], r["gate_mean"]) for r in rows] == [
        ("1", "0.5", ""),
        ("2", "", "0.25"),
        ("3", "", ""),
    ]


def test_run_logger_flushes_every_row(tmp_path):
    log = RunLogger(tmp_path, backends=["csv"])
    log.log_train({"frames": 10, "updates": 1, "loss": 0.1})
    log.log_eval({"frames": 10, "mean": 2.0, "n": 3})
    # readable before close: a killed run keeps what it logged
    assert (tmp_path / "train.csv").read_text().splitlines()[1].startswith("10,1,")
    assert "2" in (tmp_path / "eval.csv").read_text().splitlines()[1]
    log.close()


def test_run_logger_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    log = RunLogger(tmp_path, backends=["csv", "tensorboard"], config={"a": 1})
    log.log_train({"frames": 10, "loss": 0.1})
    log.close()
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


# ------------------------------------------------------------------------------------ summary


def test_summary_schema_and_json_safety(tmp_path):
    evaluations = [
        {"frames": 100, "mean": 1.0, "std": 0.0, "n": 2, "success_rate": 0.5},
        {"frames": 200, "mean": 3.0, "std": 1.0, "n": 2, "success_rate": 1.0},
        {"frames": 300, "mean": float("nan"), "std": float("nan"), "n": 0},
    ]
    summary = make_summary(
        config={"method": "rise", "seed": 1, "env": {"suite": "memory", "env_id": "cue-L4"}},
        run_dir=tmp_path,
        encoder={"name": "downsample", "weights_source": "none", "embedding_dim": 64},
        frames=300,
        updates=7,
        episodes=9,
        walltime_s=1.5,
        evaluations=evaluations,
        final={"mean": 3.0, "std": 1.0, "episodes": [2.0, 4.0], "success_rate": 1.0},
    )
    path = write_summary(tmp_path / "summary.json", summary)
    data = json.loads(path.read_text())
    assert data["status"] == "finished" and data["reason"] is None
    assert (data["method"], data["suite"], data["env_id"], data["seed"]) == (
        "rise",
        "memory",
        "cue-L4",
        1,
    )
    assert set(data["versions"]) == {"torchrl_rise", "torch", "torchrl", "tensordict", "python"}
    assert data["scores"]["best"]["frames"] == 200
    assert data["scores"]["final"]["episodes"] == [2.0, 4.0]
    assert data["scores"]["evaluations"][2]["mean"] is None  # NaN is not JSON
    assert data["success"] == {"final": 1.0, "best": 1.0}
    assert data["encoder"]["embedding_dim"] == 64


# ---------------------------------------------------------------------------------- evaluation


def _cartpole(num_envs: int):
    from torchrl.envs import GymEnv, SerialEnv

    if num_envs == 1:
        return GymEnv("CartPole-v1")
    return SerialEnv(num_envs, lambda: GymEnv("CartPole-v1"))


def test_evaluate_scores_the_requested_episodes():
    env = _cartpole(2)
    env.set_seed(0)
    net = TensorDictModule(torch.nn.Linear(4, 2), ["observation"], ["action_value"])
    net.train()
    result = evaluate(net, env, episodes=3, eps=0.0, score_key=None, max_steps=600)
    assert result.n == 3 and len(result.lengths) == 3
    # CartPole pays 1 per step: the summed raw score is the episode length
    assert result.scores == [float(x) for x in result.lengths]
    assert net.training  # training mode restored
    row = result.row()
    assert row["n"] == 3 and row["min"] <= row["median"] <= row["max"]
    assert math.isclose(row["mean"], float(np.mean(result.scores)))
    env.close()


def test_evaluate_eps_one_is_uniformly_random_and_stops_at_max_steps():
    env = _cartpole(1)
    env.set_seed(0)
    calls = []

    def always_left(td):
        calls.append(1)
        td.set("action_value", torch.tensor([1.0, 0.0]))
        return td

    greedy = evaluate(always_left, env, episodes=1, eps=0.0, score_key=None)
    random_ = evaluate(always_left, env, episodes=4, eps=1.0, score_key=None)
    assert greedy.n == 1 and greedy.scores[0] < 20  # always pushing left falls fast
    assert random_.n == 4
    short = evaluate(always_left, env, episodes=1, eps=0.0, score_key=None, max_steps=3)
    assert short.n == 0 and math.isnan(short.mean)
    env.close()


def test_evaluate_rejects_zero_episodes():
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate(lambda td: td, _cartpole(1), episodes=0)


def test_run_logger_writes_evaluation_videos(tmp_path):
    pytest.importorskip("moviepy", reason="videos are written with moviepy")
    log = RunLogger(tmp_path, backends=["csv"])
    frames = np.random.default_rng(0).integers(0, 255, (6, 16, 16), dtype=np.uint8)
    path = log.log_video(frames, step=64, fps=10)
    log.close()
    assert path == tmp_path / "videos" / "eval_000000000064.mp4" and path.stat().st_size > 0


def test_wandb_backend_without_wandb_names_the_extra(tmp_path, monkeypatch):
    import sys

    from torchrl_rise._optional import MissingDependencyError

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match=r"torchrl_rise\[wandb\]"):
        RunLogger(tmp_path, backends=["csv", "wandb"])


# ---------------------------------------------------------------------------- issue 10: survival


def test_checkpoint_manifest_catches_truncation_and_bit_flips(tmp_path):
    from torchrl_rise.training.checkpoint import verify_checkpoint

    state = {"w": torch.arange(1000, dtype=torch.float32)}
    path = save_checkpoint(tmp_path, state, step=8)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"state.pt"}
    good = (path / "state.pt").read_bytes()
    (path / "state.pt").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointCorruptError, match=r"state\.pt has \d+ bytes"):
        load_checkpoint(path)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, one byte changed
    (path / "state.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointCorruptError, match=r"state\.pt is damaged"):
        verify_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointCorruptError, match=r"no manifest\.json"):
        load_checkpoint(path)


def test_non_finite_state_is_never_a_regular_checkpoint(tmp_path):
    from torchrl_rise.training.checkpoint import NonFiniteStateError, list_checkpoints

    good = save_checkpoint(tmp_path, {"actor": {"w": torch.ones(3)}}, step=1, keep=1)
    bad = {"actor": {"w": torch.tensor([1.0, float("nan"), 2.0])}, "rng": {}}
    with pytest.raises(NonFiniteStateError, match=r"actor\.w"):
        save_checkpoint(tmp_path, bad, step=2, keep=1)
    assert list_checkpoints(tmp_path) == [good] and not list(tmp_path.glob(".tmp*"))
    # a crash checkpoint may hold it (post-mortem) but is never latest, listed or pruned
    crash = save_checkpoint(tmp_path, bad, step=2, keep=1, crash=True)
    assert crash.name == "crash_frames_000000000002"
    assert find_latest_checkpoint(tmp_path) == good
    newer = save_checkpoint(tmp_path, {"actor": {"w": torch.ones(3)}}, step=3, keep=1)
    assert list_checkpoints(tmp_path) == [newer] and crash.exists()
    assert torch.isnan(load_checkpoint(crash)["state"]["actor"]["w"]).any()  # by its path


def test_failed_save_removes_its_temp_folder_and_keeps_latest(tmp_path):
    import errno

    first = save_checkpoint(tmp_path, {"a": torch.ones(1)}, step=1)

    def full_disk(path):
        path.mkdir()
        (path / "part.bin").write_bytes(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, {"a": torch.ones(1)}, step=2, save_replay=full_disk)
    assert not list(tmp_path.glob(".tmp*"))
    assert find_latest_checkpoint(tmp_path) == first and load_checkpoint(tmp_path)


def test_remove_stale_temp_removes_half_written_saves(tmp_path):
    from torchrl_rise.training.checkpoint import remove_stale_temp

    save_checkpoint(tmp_path, {"a": 1}, step=1)
    (tmp_path / ".tmp-frames_000000000002-999").mkdir()
    (tmp_path / ".latest.tmp-999").write_text("x")
    # a save replacing frames_..03 died after moving the old one aside: it is put back
    old = save_checkpoint(tmp_path, {"a": 3}, step=3)
    old.rename(tmp_path / ".tmp-replaced-frames_000000000003-999")
    removed = sorted(p.name for p in remove_stale_temp(tmp_path))
    assert removed == [".latest.tmp-999", ".tmp-frames_000000000002-999"]
    assert (tmp_path / "frames_000000000001").exists()
    assert load_checkpoint(old)["state"] == {"a": 3}
    # saving the same frame count twice replaces the checkpoint and leaves nothing aside
    save_checkpoint(tmp_path, {"a": 4}, step=3)
    assert load_checkpoint(old)["state"] == {"a": 4} and not list(tmp_path.glob(".tmp*"))


def test_run_lock_names_the_live_holder_and_is_free_after_kill_9(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from torchrl_rise.training.checkpoint import RunInUseError, RunLock

    code = (
        "import sys, time; from torchrl_rise.training.checkpoint import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=f"in use by process {child.pid}"):
            RunLock(tmp_path).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        time.sleep(0.05)
        lock = RunLock(tmp_path).acquire()  # the kernel dropped the dead holder's lock
        assert lock.previous_pid == child.pid
        lock.release()
        again = RunLock(tmp_path).acquire()
        assert again.previous_pid is None  # a clean release leaves no pid behind
        again.release()
    finally:
        if child.poll() is None:
            child.kill()


def test_csv_table_drops_rows_past_the_resumed_checkpoint(tmp_path):
    path = tmp_path / "train.csv"
    table = CSVTable(path, columns=("frames", "loss"))
    for frames in (100, 200, 300, 400):
        table.write({"frames": frames, "loss": 0.1})
    table.close()
    table = CSVTable(path, columns=("frames", "loss"), drop_after_frames=200)
    assert table.dropped == 2
    table.write({"frames": 300, "loss": 0.2})
    table.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frames"]) for r in rows] == [100, 200, 300] and rows[-1]["loss"] == "0.2"
    assert not list(tmp_path.glob(".*tmp*"))


def _memory_cfg(**replay):
    return {
        "method": "btr",
        "total_frames": 4096,
        "env": {"suite": "memory", "env_id": "cue-L4", "num_envs": 4},
        "loss": {"n_step": 3},
        "replay": {"capacity": 4096, **replay},
    }


def test_learning_starts_check_is_exact():
    # 4 envs, n_step 3: learning starts after 3 vector steps with learning_starts=12, when no
    # step has a complete 3-step future yet; the old check (12 - 4*2 = 4 >= 4) let it pass.
    with pytest.raises(ConfigError, match="0 transitions"):
        load_config(_memory_cfg(learning_starts=12, batch_size=4))
    # learning_starts=32: 8 steps per env lane, 5 of them sampleable -> 20 transitions.
    assert load_config(_memory_cfg(learning_starts=32, batch_size=20))
    with pytest.raises(ConfigError, match="20 transitions"):
        load_config(_memory_cfg(learning_starts=32, batch_size=21))
    # collector batches of 4 vector steps: learning starts after 8 steps even for 20
    cfg = _memory_cfg(learning_starts=20, batch_size=20)
    cfg["collector"] = {"steps_per_batch": 4}
    assert load_config(cfg)


def test_learning_starts_is_compared_with_total_frames_in_frames():
    # Atari: 300 transitions are 1200 frames (frame skip 4), more than total_frames=1000.
    cfg = {
        "total_frames": 1000,
        "env": {"num_envs": 4},
        "replay": {"learning_starts": 300, "batch_size": 8},
    }
    with pytest.raises(ConfigError, match="1200 frames"):
        load_config(cfg)
    cfg["total_frames"] = 1200
    assert load_config(cfg).total_frames == 1200


def test_unwritable_scratch_dir_fails_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"replay\.scratch_dir.*not a directory"):
        load_config({"replay": {"scratch_dir": str(blocker / "scratch")}})
    assert load_config({"replay": {"scratch_dir": str(tmp_path / "new" / "scratch")}})


def test_evaluate_stops_promptly_when_asked():
    from torchrl.envs import GymEnv

    env = GymEnv("CartPole-v1")
    net = TensorDictModule(torch.nn.Linear(4, 2), ["observation"], ["action_value"])
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5

    result = evaluate(net, env, episodes=50, score_key=None, should_stop=should_stop)
    assert result.interrupted and len(calls) == 6 and result.n < 50
    assert not evaluate(net, env, episodes=1, score_key=None).interrupted


def test_counters_and_schedule_load_from_both_checkpoint_formats():
    from torchrl_rise.training.loop import STATE_FORMAT, Counters, Schedule, state_counters

    old = {  # format 1: one dict of counts and schedule state
        "format": 1,
        "counters": {
            "frames": 64,
            "env_steps": 16,
            "updates": 3,
            "episodes": 2,
            "iterations": 4,
            "walltime_s": 1.5,
            "update_credit": 0.5,
            "next_eval": 128,
            "next_checkpoint": 96,
            "next_log": 80,
        },
    }
    counters, schedule = state_counters(old)
    assert counters == Counters(64, 16, 3, 2, 4, 1.5)
    assert schedule == Schedule(update_credit=0.5, next_eval=128, next_checkpoint=96, next_log=80)
    new = {"format": STATE_FORMAT, "counters": {"frames": 8}, "schedule": {"next_log": 16}}
    assert state_counters(new) == (Counters(frames=8), Schedule(next_log=16))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"format": 99, "counters": {}}, "state format 99, newer"),
        ({"format": 1, "counters": {"frames": 1, "bogus": 2}}, r"does not know: \['bogus'\]"),
    ],
)
def test_checkpoint_counters_of_another_version_are_refused_clearly(state, message):
    from torchrl_rise.training.loop import state_counters

    with pytest.raises(ConfigError, match=message):
        state_counters(state, path="ckpt")


def test_a_run_creates_no_trainer_attribute_that_init_did_not(tmp_path):
    cfg = {
        "method": "btr",
        "total_frames": 64,
        "env": {"suite": "memory", "env_id": "cue-L4", "num_envs": 4, "frame_size": 16},
        "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16, "spectral_norm": False}},
        "replay": {"capacity": 256, "batch_size": 8, "learning_starts": 32},
        "eval": {"episodes": 2, "num_envs": 2},
        "logging": {"progress": False, "root": str(tmp_path)},
    }
    from torchrl_rise.training import Trainer

    trainer = Trainer(cfg)
    before = set(vars(trainer))
    summary = trainer.run()
    assert set(vars(trainer)) == before
    assert trainer.summary == summary and trainer.counters.frames == 64
    assert trainer.counters.updates == summary["updates"] > 0


@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_the_initial_network_follows_the_seed_alone(method):
    """Two runs with one seed start from the same weights, whatever the global RNG did before."""
    from torchrl_rise.training.builders import build_assembly

    def weights(seed, noise):
        torch.rand(noise)  # the global RNG in some other state
        cfg = load_config(
            {
                "method": method,
                "seed": seed,
                "env": {"suite": "memory", "env_id": "cue-L3", "num_envs": 4, "frame_size": 16},
                "encoder": {"name": "downsample", "weights": None, "kwargs": {"size": 4}},
                "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16}},
                "total_frames": 512,
                "replay": {"capacity": 256, "batch_size": 4, "learning_starts": 64},
                "recurrent": {"learning_length": 4, "burn_in": 0, "period": 4, "batch_size": 2},
            }
        )
        state = torch.random.get_rng_state()
        net = build_assembly(cfg).net
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
        return {k: v.clone() for k, v in net.state_dict().items()}

    first, again, other = weights(0, 3), weights(0, 17), weights(1, 3)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
