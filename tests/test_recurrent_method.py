"""``method=recurrent`` through the trainer: config, assembly, acting/evaluation state, training,
checkpoints and resume (the R2D2-style baseline's pieces are tested on their own in
tests/test_sequence_*.py and tests/test_recurrent_*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.helpers import load_by_path
from torchrl_rise.modules import RecurrentQStep
from torchrl_rise.objectives import SequenceIQNLoss
from torchrl_rise.replay import SequenceReplayBuffer
from torchrl_rise.training import ConfigError, Trainer, load_checkpoint, load_config
from torchrl_rise.training.builders import build_assembly, evaluation_policy, recurrent_state_dim
from torchrl_rise.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"


def tiny(tmp_path: Path, **over) -> dict:
    """A memory-suite run of a few seconds (cue-L6: episodes of 7 steps)."""
    cfg = {
        "method": "recurrent",
        "total_frames": 512,
        "num_threads": 1,
        "env": {"suite": "memory", "env_id": "cue-L6", "num_envs": 4, "frame_size": 16},
        "network": {
            "kwargs": {"width_scale": 0.25, "mlp_hidden": 32, "lstm_hidden": 16, "num_cosines": 16}
        },
        "recurrent": {"burn_in": 2, "learning_length": 4, "period": 4, "batch_size": 4},
        "replay": {"capacity": 1024, "batch_size": 8, "learning_starts": 64},
        "loss": {"target_update_interval": 20},
        "eval": {"interval_frames": 256, "episodes": 4, "num_envs": 2, "max_steps": 50},
        "checkpoint": {"interval_frames": 256},
        "logging": {"root": str(tmp_path), "progress": False, "interval_frames": 128},
    }
    for key, value in over.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


# ------------------------------------------------------------------------------ config


def test_defaults_are_r2d2s_and_only_used_by_recurrent():
    cfg = load_config({"method": "recurrent"})
    rc = cfg.recurrent
    assert (rc.burn_in, rc.learning_length, rc.period, rc.batch_size) == (40, 80, 40, 64)
    assert (rc.recurrent_state, rc.state_dtype, rc.sequence_priority_eta) == (
        "stored",
        "float16",
        0.9,
    )
    assert cfg.uses_sequences and not cfg.uses_context
    assert not load_config({"method": "btr"}).uses_sequences
    # the transition batch check does not apply to sequences (and vice versa)
    load_config({"method": "recurrent", "replay": {"batch_size": 10**6, "capacity": 2**20}})


def test_the_network_name_is_refused_naming_the_method():
    with pytest.raises(ConfigError, match="method=recurrent"):
        load_config({"method": "recurrent_baseline"})


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"recurrent": {"burn_in": -1}}, "recurrent.burn_in must be an integer >= 0"),
        ({"recurrent": {"learning_length": 0}}, "recurrent.learning_length"),
        ({"recurrent": {"period": 0}}, "recurrent.period"),
        ({"recurrent": {"batch_size": 0}}, "recurrent.batch_size"),
        ({"recurrent": {"recurrent_state": "fresh"}}, "recurrent.recurrent_state must be one of"),
        ({"recurrent": {"state_dtype": "int8"}}, "recurrent.state_dtype"),
        ({"recurrent": {"sequence_priority_eta": 1.5}}, "sequence_priority_eta"),
        ({"network": {"kwargs": {"burn_in": 3}}}, "network.kwargs.burn_in=3 differs"),
        ({"replay": {"capacity": 40}}, "Raise replay.capacity to at least"),
        ({"replay": {"learning_starts": 16}}, "Raise replay.learning_starts to at least 28"),
    ],
)
def test_bad_recurrent_settings_are_explained(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny(tmp_path, **over))


@pytest.mark.parametrize("recipe", ["atari", "vizdoom", "procgen", "miniworld", "memory"])
def test_every_recipe_composes_method_recurrent(recipe):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        full = load_config(compose(config_name=recipe, overrides=["method=recurrent"]))
        quick = load_config(
            compose(config_name=recipe, overrides=["method=recurrent", "preset=quickstart"])
        )
    assert full.method == quick.method == "recurrent"
    if recipe == "atari":
        assert (full.recurrent.burn_in, full.recurrent.learning_length) == (40, 80)
        assert full.recurrent.batch_size == 64 and quick.recurrent.batch_size == 16


# ------------------------------------------------------------------------------ assembly


def test_assembly_picks_the_sequence_pieces(tmp_path):
    cfg = load_config(tiny(tmp_path))
    parts = build_assembly(cfg)
    assert type(parts.net).__name__ == "RecurrentBaselineQNetwork"
    assert parts.net.burn_in == cfg.recurrent.burn_in == 2
    assert isinstance(parts.loss, SequenceIQNLoss)
    assert parts.loss.sequence_priority_eta == cfg.recurrent.sequence_priority_eta
    assert isinstance(parts.actor.module[0], RecurrentQStep)
    assert parts.actor.module[-1].eps.item() == 1.0  # BTR's eps schedule
    replay = parts.make_replay(scratch_dir=tmp_path / "rb")
    try:
        assert isinstance(replay, SequenceReplayBuffer)
        assert (replay.burn_in, replay.learning_length, replay.period) == (2, 4, 4)
        assert replay.batch_size == 4 and replay.state_dim == recurrent_state_dim(cfg) == 16
        assert replay.prioritized and replay.n_step == cfg.loss.n_step
    finally:
        replay.close()
    # the env carries the state and the episode-start flag the actor needs
    env = parts.eval_env_factory()
    try:
        td = env.reset()
        assert td["is_init"].all() and td["recurrent_state_h"].shape == (2, 16)
    finally:
        env.close()


def test_evaluation_carries_the_lstm_state_and_resets_it(tmp_path):
    """Without the primer the state would be dropped between steps (a memoryless policy)."""
    cfg = load_config(tiny(tmp_path))
    parts = build_assembly(cfg)
    policy = evaluation_policy(cfg, parts.net)
    assert (
        isinstance(policy, RecurrentQStep)
        and evaluation_policy(load_config(tiny(tmp_path, method="btr")), parts.net) is parts.net
    )
    seen = []

    def recording(td):
        seen.append((td["is_init"].reshape(-1).clone(), td["recurrent_state_h"].clone()))
        return policy(td)

    env = parts.eval_env_factory()
    try:
        result = evaluate(recording, env, episodes=4, eps=0.0, max_steps=50)
    finally:
        env.close()
    assert result.n == 4
    for step, (is_init, state) in enumerate(seen):
        assert not state[is_init].any(), step  # zero at an episode's first step
        if step % 7:  # inside an episode (cue-L6: 7 steps): the previous step's output state
            assert state.abs().sum() > 0, step
            assert not is_init.any(), step


# ------------------------------------------------------------------------------ training


def test_trains_checkpoints_and_resumes(tmp_path):
    first = Trainer(tiny(tmp_path, total_frames=256))
    summary = first.run()
    run = first.run_dir
    assert summary["status"] == "finished" and summary["method"] == "recurrent"
    assert summary["updates"] > 0 and summary["scores"]["evaluations"]
    ckpt = load_checkpoint(run)
    assert ckpt["replay_dir"] is not None
    updates, episodes = first.counters.updates, first.counters.episodes
    # one update per vector step once learning started (BTR's replay ratio)
    assert updates == (256 - 64) // 4 + 1

    more = Trainer(tiny(tmp_path, total_frames=512, resume=str(run)))
    out = more.run()
    assert more.run_dir == run and out["frames"] == 512
    assert more.counters.updates == updates + 256 // 4 and more.counters.episodes > episodes
    replay = more.components.replay
    assert isinstance(replay, SequenceReplayBuffer)


def test_stop_request_checkpoints_a_recurrent_run(tmp_path):
    trainer = Trainer(tiny(tmp_path))
    trainer.request_stop("test")  # what the SIGINT/SIGTERM handler does
    summary = trainer.run()
    assert summary["status"] == "interrupted" and summary["frames"] == 4
    assert load_checkpoint(trainer.run_dir)["state"]["method"] == "recurrent"


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path):
    first = Trainer(tiny(tmp_path, method="btr", total_frames=128))
    first.run()
    with pytest.raises(ConfigError, match=r'method: "btr" \(trained\) -> "recurrent" \(now\)'):
        Trainer(tiny(tmp_path, total_frames=256, resume=str(first.run_dir))).run()


def test_a_sampled_batch_is_sequences(tmp_path):
    cfg = load_config(tiny(tmp_path))
    trainer = Trainer(tiny(tmp_path, total_frames=128))
    trainer.run()
    parts = build_assembly(cfg)
    replay = parts.make_replay(scratch_dir=tmp_path / "again")
    try:
        replay.loads(load_checkpoint(trainer.run_dir)["replay_dir"])
        batch = replay.sample()
        T = cfg.recurrent.burn_in + cfg.recurrent.learning_length + cfg.loss.n_step
        assert batch.batch_size == torch.Size([4]) and batch["pixels"].shape[:2] == (4, T)
        out = parts.loss(batch)
        assert torch.isfinite(out["loss"]) and batch["td_error"].shape == (4,)
    finally:
        replay.close()


def test_benchmark_grid_accepts_recurrent_and_names_the_methods():
    pytest.importorskip("rliable", reason="the grid's report needs rliable")
    import sys

    from omegaconf import OmegaConf

    bench = load_by_path("_bench_rec", ROOT / "recipes" / "benchmark.py", sys.modules.__setitem__)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="benchmark", overrides=["methods=[rise,btr,recurrent]"])
        bad = compose(config_name="benchmark", overrides=["methods=[rise,recurrent_baseline]"])
    cells = bench.build_grid(cfg)
    assert {c.method for c in cells} == {"rise", "btr", "recurrent"}
    assert "recurrent" in OmegaConf.to_container(cfg.method_overrides)
    with pytest.raises(bench.GridConfigError, match="the recurrent baseline is `recurrent`"):
        bench.build_grid(bad)


def test_multi_process_collector_carries_the_state_in_its_workers(tmp_path):
    """Worker processes build their envs with the primer and act with a copy of the actor."""
    trainer = Trainer(
        tiny(tmp_path, total_frames=256, collector={"backend": "multi_sync", "num_workers": 2})
    )
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["updates"] > 0
    cfg = load_config(tiny(tmp_path))
    replay = build_assembly(cfg).make_replay(scratch_dir=tmp_path / "again")
    try:
        replay.loads(load_checkpoint(trainer.run_dir)["replay_dir"])
        batch = replay.gather(replay.sampleable_index())
    finally:
        replay.close()
    # starts at episode step 4 (period 4) hold the state the workers' actors carried to there
    nonzero = batch["recurrent_state_h"].abs().sum(-1) > 0
    assert 0 < int(nonzero.sum()) < batch.numel()
