"""End-to-end runs of the recipes on tiny configs: logs, checkpoints, summary, resume, interrupts."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.helpers import (
    CONFIG_DIR,
    ROOT,
    SIMULATORS,
    hook_updates,
    load_by_path,
    needs_memory,
    recipe_cmd,
    signal_once_logging,
)
from torchrl_rise._optional import MissingDependencyError
from torchrl_rise.training import ConfigError, Trainer, load_checkpoint, load_config, train
from torchrl_rise.training.builders import build_assembly, build_components, make_env_factory

RECIPES = ("atari", "vizdoom", "procgen", "miniworld", "memorygym", "memory")

# Per-suite additions to preset=tiny that keep a run to seconds.
# Simulators that are slow to start or step: two envs, one short evaluation episode.
_SMALL = ["env.num_envs=2", "eval.num_envs=1", "eval.episodes=1", "eval.max_steps=30"]
_SMALL += ["replay.learning_starts=32", "replay.batch_size=8", "total_frames=256"]
FAST = {
    "atari": ["env.frame_size=42", "env.max_episode_frames=400"],
    "memory": ["env.env_id=cue-L6", "env.frame_size=16"],
    "vizdoom": ["env.frame_size=42", "env.max_episode_frames=120", *_SMALL],
    "procgen": ["eval.max_steps=60", "eval.episodes=1"],
    "miniworld": ["env.max_episode_frames=30", "env.kwargs.backend=serial", *_SMALL],
    "memorygym": ["env.frame_size=42", *_SMALL],
}


def make_cfg(recipe: str, tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name=recipe,
            overrides=["preset=tiny", f"logging.root={tmp_path}", *FAST[recipe], *overrides],
        )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_run(run_dir: Path, *, method: str, frames: int, status: str = "finished") -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == status
    assert summary["method"] == method and summary["frames"] == frames
    assert summary["walltime_s"] > 0 and summary["config"]["method"] == method
    assert set(summary["versions"]) == {"torchrl_rise", "torch", "torchrl", "tensordict", "python"}
    train_rows = read_csv(run_dir / "train.csv")
    assert train_rows and int(train_rows[-1]["frames"]) == frames
    assert [int(r["frames"]) for r in train_rows] == sorted(int(r["frames"]) for r in train_rows)
    ckpt = load_checkpoint(run_dir)
    assert ckpt["state"]["counters"]["frames"] == frames
    assert ckpt["state"]["counters"]["updates"] == summary["updates"]
    assert (run_dir / "train.log").exists() and (run_dir / "config.json").exists()
    return summary


# ------------------------------------------------------------------------------ configs compose


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_recipe_configs_compose_and_validate(recipe, method):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(compose(config_name=recipe, overrides=[f"method={method}"]))
        tiny = load_config(
            compose(config_name=recipe, overrides=["preset=tiny", f"method={method}"])
        )
    assert cfg.env.suite == recipe and cfg.method == method
    assert tiny.total_frames <= 4096 and tiny.env.num_envs == 4


def test_atari_defaults_are_btr_and_quickstart_is_short():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        full = load_config(compose(config_name="atari"))
        quick = load_config(compose(config_name="atari", overrides=["preset=quickstart"]))
    assert (full.env.num_envs, full.replay.capacity, full.replay.batch_size) == (64, 2**20, 256)
    assert (full.replay.learning_starts, full.eval.interval_frames) == (200_000, 1_000_000)
    assert full.optim.updates_per_vector_step == 1.0 and full.env.frame_stack == 4
    assert quick.method == "rise" and quick.env.env_id == "Pong"
    assert 20_000 <= quick.total_frames <= 50_000


def _recipe_module(recipe: str):
    return load_by_path(f"_recipe_{recipe}", ROOT / "recipes" / f"{recipe}.py")


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


@needs_memory
@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_a_recipe_assembles_what_train_cfg_builds(tmp_path, method):
    """A recipe's assembly and train(cfg)'s build_assembly are the same experiment."""
    cfg = load_config(make_cfg("memory", tmp_path, f"method={method}"))
    torch.manual_seed(0)
    mine = _recipe_module("memory").assemble(cfg)
    torch.manual_seed(0)
    package = build_assembly(cfg)
    for name in ("net", "actor", "loss", "target_updater", "optimizer", "eval_env_factory"):
        assert type(getattr(mine, name)) is type(getattr(package, name)), name
    assert mine.env_info == package.env_info and mine.encoder_info == package.encoder_info
    a, b = _weights(mine.loss), _weights(package.loss)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert mine.eval_env_factory.eval_mode and mine.eval_env_factory.seed != cfg.seed
    # and it trains: the trainer runs on the recipe's pieces
    summary = Trainer.from_components(cfg, mine).run()
    assert summary["status"] == "finished" and summary["frames"] == cfg.total_frames
    if method == "rise":
        assert summary["encoder"]["name"] == "downsample"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_the_one_assembly(recipe):
    """No recipe keeps an assembly of its own: they run build_assembly, as train(cfg) does."""
    assert _recipe_module(recipe).assemble is build_assembly


def test_procgen_recipe_evaluates_on_levels_training_never_sees(tmp_path):
    pytest.importorskip("procgen")
    cfg = load_config(make_cfg("procgen", tmp_path, "env.kwargs.num_levels=50"))
    parts = _recipe_module("procgen").assemble(cfg)
    train_env = make_env_factory(cfg).make_base()
    eval_env = parts.eval_env_factory.make_base()
    try:
        # the suite's defaults (torchrl_rise/envs/procgen.py): levels [0, 50) for training, the
        # evaluation envs start at the first level after them
        assert (train_env.base_env.start_level, train_env.base_env.num_levels) == (0, 50)
        assert eval_env.base_env.start_level == 50
    finally:
        train_env.close()
        eval_env.close()


def test_miniworld_recipe_renders_headless(monkeypatch):
    monkeypatch.delenv("PYGLET_HEADLESS", raising=False)
    _recipe_module("miniworld")  # importing the recipe must not need a display
    assert os.environ["PYGLET_HEADLESS"] == "true"


# ------------------------------------------------------------------------------ end to end


@pytest.mark.atari
@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_atari_recipe_end_to_end(tmp_path, method):
    trainer = Trainer(make_cfg("atari", tmp_path, f"method={method}"))
    summary = trainer.run()
    run = trainer.run_dir
    assert run.parent.parent.parent.parent == tmp_path / "atari"  # runs/<suite>/<env>/<method>/seed
    check_run(run, method=method, frames=2048)
    assert summary["updates"] > 0 and summary["suite"] == "atari"
    evals = read_csv(run / "eval.csv")
    assert [int(r["frames"]) for r in evals] == [1024, 2048]
    assert all(int(r["n"]) == 2 for r in evals)
    assert summary["scores"]["final"]["episodes"] and len(summary["scores"]["evaluations"]) == 2
    columns = read_csv(run / "train.csv")[0].keys()
    if method == "rise":
        assert summary["encoder"]["name"] == "downsample"
        assert summary["encoder"]["embedding_dim"] == 64
        assert "gate_mean" in columns and "gate_saturated_frac" in columns
    else:
        assert summary["encoder"] is None and "gate_mean" not in columns
    assert not (run / "replay_scratch").exists()  # the checkpoint holds the buffer


@needs_memory
@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_memory_recipe_end_to_end(tmp_path, method):
    trainer = Trainer(make_cfg("memory", tmp_path, f"method={method}"))
    summary = trainer.run()
    check_run(trainer.run_dir, method=method, frames=2048)
    assert summary["episodes"] > 0
    assert summary["scores"]["final"]["mean"] is not None
    assert "success" in summary and 0.0 <= summary["success"]["final"] <= 1.0
    assert read_csv(trainer.run_dir / "train.csv")[-1]["success_recent"] != ""


def _suite_runs(methods: dict[str, tuple[str, ...]]) -> list:
    """(recipe, method) parameters, each marked with its suite's marker."""
    return [
        pytest.param(recipe, method, marks=getattr(pytest.mark, recipe))
        for recipe, names in methods.items()
        for method in names
    ]


# (method=recurrent: 2 envs x 32 learning-start transitions = 16 steps each >= 8 + 3)
@pytest.mark.parametrize(
    ("recipe", "method"),
    _suite_runs(
        {
            "vizdoom": ("rise", "recurrent"),
            "procgen": ("btr", "recurrent"),
            "miniworld": ("rise", "recurrent"),
            "memorygym": ("rise", "recurrent"),
        }
    ),
)
def test_suite_recipe_end_to_end(tmp_path, recipe, method):
    pytest.importorskip(SIMULATORS[recipe])
    frames = 512 if recipe == "procgen" else 256  # the others' total_frames=256 is in FAST
    trainer = Trainer(make_cfg(recipe, tmp_path, f"total_frames={frames}", f"method={method}"))
    trainer.run()
    check_run(trainer.run_dir, method=method, frames=frames)


CPU_PRESETS = {"vizdoom": "cpu_vizdoom", "miniworld": "cpu_miniworld", "memorygym": "cpu_memorygym"}


@pytest.mark.parametrize("recipe", sorted(CPU_PRESETS))
@pytest.mark.parametrize("method", ["rise", "btr", "recurrent"])
def test_cpu_presets_of_the_results_grid_validate(recipe, method):
    """docs/results.md's presets: each composes with its recipe and passes validation."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(
            compose(
                config_name=recipe, overrides=[f"preset={CPU_PRESETS[recipe]}", f"method={method}"]
            )
        )
    assert cfg.num_threads == 1 and cfg.total_frames <= 200_000
    assert cfg.encoder.name == "downsample" and cfg.encoder.weights is None


# ------------------------------------------------------------------------------ resume


def _replay_snapshot(cfg, run: Path, scratch: Path):
    """Sampleable slots and their transitions in the replay of ``run``'s latest checkpoint.

    (The trainer closes its buffer when the run ends; a fresh one loads the checkpoint.)
    """
    comps = build_components(load_config(cfg), scratch_dir=scratch)
    try:
        comps.replay.loads(load_checkpoint(run)["replay_dir"])
        index = comps.replay.sampleable_index()
        batch = comps.replay.gather(index)
        return index, batch.clone(), comps.replay.sampler.tree_values(index).clone()
    finally:
        comps.replay.close()


@pytest.mark.atari
def test_resume_continues_counters_and_buffer(tmp_path):
    cfg = make_cfg("atari", tmp_path, "total_frames=1024")
    first = Trainer(cfg)
    first.run()
    run = first.run_dir
    index, batch, _ = _replay_snapshot(cfg, run, tmp_path / "s1")
    assert index.numel() > 0

    # Resuming at the same budget restores everything and trains no further.
    same = Trainer(make_cfg("atari", tmp_path, "total_frames=1024", f"resume={run}"))
    same.run()
    assert same.run_dir == run
    for key in ("frames", "env_steps", "updates", "episodes", "iterations"):
        assert getattr(same.counters, key) == getattr(first.counters, key), key
    index2, batch2, _ = _replay_snapshot(cfg, run, tmp_path / "s2")
    torch.testing.assert_close(index2, index)
    for key in ("pixels", "action", ("next", "reward"), ("next", "pixels"), "rise_context"):
        torch.testing.assert_close(batch2.get(key), batch.get(key), msg=str(key))
    assert same.components.actor.module[-1].eps.item() == pytest.approx(
        first.components.actor.module[-1].eps.item()
    )
    first_params = dict(first.components.loss.named_parameters())
    for name, param in same.components.loss.named_parameters():
        torch.testing.assert_close(param, first_params[name], msg=name)

    # resume=true finds the latest run with the same suite/env/method/seed and goes on.
    more = Trainer(make_cfg("atari", tmp_path, "total_frames=2048", "resume=true"))
    summary = more.run()
    assert more.run_dir == run
    check_run(run, method="rise", frames=2048)
    assert summary["updates"] > first.counters.updates
    assert [int(r["frames"]) for r in read_csv(run / "eval.csv")] == [1024, 2048]


def test_an_explicit_resume_path_without_checkpoint_is_an_error(tmp_path):
    # (resume=true without a checkpoint starts a new run: tests/test_resume_runs.py)
    with pytest.raises(ConfigError, match=r"no checkpoint there.*To start a new run there"):
        train(make_cfg("atari", tmp_path, f"resume={tmp_path / 'nowhere'}"))


# ------------------------------------------------------------------------------ interrupts


@pytest.mark.atari
def test_stop_request_checkpoints_flushes_and_summarises(tmp_path):
    trainer = Trainer(make_cfg("atari", tmp_path, "method=btr"))
    trainer.request_stop("test")  # as the SIGINT/SIGTERM handler does: stop after this step
    summary = trainer.run()
    frames = 4 * 4  # one vector step of 4 envs, frame skip 4
    check_run(trainer.run_dir, method="btr", frames=frames, status="interrupted")
    assert summary["status"] == "interrupted" and summary["scores"]["evaluations"] == []


@pytest.mark.atari
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    cmd = recipe_cmd(
        "atari",
        "preset=tiny",
        *FAST["atari"],
        "method=btr",
        "total_frames=10_000_000",
        "eval.interval_frames=10_000_000",
        f"logging.run_dir={run_dir}",
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    returncode, out = signal_once_logging(
        cmd, run_dir, signal.SIGINT, cwd=tmp_path, env=env, wait_s=180, poll_s=0.2
    )
    assert returncode == 0, out.decode()
    summary = check_run(
        run_dir,
        method="btr",
        frames=json.loads((run_dir / "summary.json").read_text())["frames"],
        status="interrupted",
    )
    assert 0 < summary["frames"] < 10_000_000


# ------------------------------------------------------------------------------ collectors


@pytest.mark.atari
def test_multi_process_collector(tmp_path):
    trainer = Trainer(
        make_cfg(
            "atari",
            tmp_path,
            "method=rise",
            "total_frames=512",
            "replay.learning_starts=64",
            "collector.backend=multi_sync",
            "collector.num_workers=2",
        )
    )
    summary = trainer.run()
    check_run(trainer.run_dir, method="rise", frames=512)
    assert summary["updates"] > 0


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_backend_without_ray_names_the_install(tmp_path):
    with pytest.raises(ConfigError, match="pip install ray"):
        train(make_cfg("atari", tmp_path, "collector.backend=ray"))


# ------------------------------------------------------------------------------ bad input


def test_unknown_env_id_is_explained(tmp_path):
    with pytest.raises(ValueError, match="NotAGame"):
        train(make_cfg("atari", tmp_path, "env.env_id=NotAGame"))


def test_missing_optional_suite_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "vizdoom" or m.startswith("vizdoom.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vizdoom", None)  # `import vizdoom` now fails
    with pytest.raises(MissingDependencyError, match=r"torchrl_rise\[vizdoom\]"):
        train(make_cfg("vizdoom", tmp_path))


def test_replay_that_does_not_fit_on_disk(tmp_path):
    with pytest.raises(ConfigError, match="GiB"):
        train(
            make_cfg(
                "atari", tmp_path, "replay.capacity=68_719_476_736", "total_frames=300_000_000"
            )
        )
    assert not (tmp_path / "atari").exists()  # the failed start removed the run dir it made


# ------------------------------------------------------------------------------ issue 10: survival

SHORT = [
    "total_frames=512",
    "checkpoint.interval_frames=256",
    "eval.interval_frames=256",
    "logging.interval_frames=128",
    "replay.learning_starts=64",
    "replay.batch_size=8",
    "method=btr",
]


def _short(tmp_path: Path, run: Path, *overrides: str):
    return make_cfg("memory", tmp_path, *SHORT, f"logging.run_dir={run}", *overrides)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@needs_memory
def test_used_run_dir_refused_refused_resume_keeps_config_failed_start_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    train(_short(tmp_path, run, "total_frames=256"))
    before = {n: (run / n).read_text() for n in ("config.json", "train.csv", "eval.csv")}
    with pytest.raises(ConfigError, match=r"already holds a run.*resume=true"):
        train(_short(tmp_path, run, "total_frames=256"))
    with pytest.raises(ConfigError, match="cannot resume"):
        train(_short(tmp_path, run, "total_frames=512", "method=rise", "resume=true"))
    assert {n: (run / n).read_text() for n in before} == before  # config.json not rewritten
    fresh = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(ConfigError, match="GiB"):
        train(_short(tmp_path, fresh, "replay.capacity=68_719_476_736"))
    assert not (tmp_path / "new").exists()


@needs_memory
def test_run_dir_in_use_is_refused_naming_the_pid(tmp_path):
    from torchrl_rise.training.checkpoint import RunInUseError, RunLock

    run = tmp_path / "run"
    train(_short(tmp_path, run, "total_frames=256"))
    with RunLock(run), pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
        train(_short(tmp_path, run, "resume=true"))


@needs_memory
def test_resume_falls_back_loudly_from_a_damaged_latest_and_logs_each_frame_once(tmp_path, caplog):
    from torchrl_rise._fileio import CheckpointCorruptError

    run = tmp_path / "run"
    train(_short(tmp_path, run, "total_frames=768"))
    latest = run / "checkpoints" / "frames_000000000768"
    assert load_checkpoint(run)["path"] == latest
    data = (latest / "state.pt").read_bytes()
    (latest / "state.pt").write_bytes(data[: len(data) // 3])
    # an explicit path is never replaced by another checkpoint
    with pytest.raises(CheckpointCorruptError, match=r"frames_000000000768/state\.pt"):
        train(_short(tmp_path, run, "total_frames=1024", f"resume={latest}"))
    # resume=true goes back to the newest good checkpoint, with a warning naming the bad one
    with caplog.at_level("WARNING", logger="torchrl_rise"):
        trainer = Trainer(_short(tmp_path, run, "total_frames=1024", "resume=true"))
        trainer.run()
    assert trainer.resumed_from.name == "frames_000000000512"
    warned = [r.getMessage() for r in caplog.records if "CHECKPOINT DAMAGED" in r.getMessage()]
    assert warned and "frames_000000000768" in warned[0] and "state.pt" in warned[0]
    for name in ("train.csv", "eval.csv"):
        frames = [int(r["frames"]) for r in read_csv(run / name)]
        assert frames == sorted(set(frames)), name  # rows past 512 were dropped, logged again
    assert [int(r["frames"]) for r in read_csv(run / "eval.csv")] == [256, 512, 768, 1024]
    check_run(run, method="btr", frames=1024)


@needs_memory
def test_error_inside_a_step_writes_no_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def after_update(trainer, learner):
        if trainer.counters.frames > 300:
            raise RuntimeError("boom inside the step")

    hook_updates(monkeypatch, after_update)
    with pytest.raises(RuntimeError, match="boom"):
        train(_short(tmp_path, run))
    summary = _summary(run)
    assert summary["status"] == "failed" and "boom inside the step" in summary["reason"]
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["frames_000000000256", "replay_chunks"]  # no crash checkpoint
    assert load_checkpoint(run)["state"]["counters"]["frames"] == 256


@needs_memory
def test_error_at_a_step_boundary_writes_a_crash_checkpoint_resume_ignores(tmp_path, monkeypatch):
    from torchrl_rise.training.loggers import RunLogger

    run = tmp_path / "run"
    real = RunLogger.log_train

    def log_train(self, row):
        if row["frames"] > 300:
            raise OSError("logging backend went away")
        real(self, row)

    monkeypatch.setattr(RunLogger, "log_train", log_train)
    with pytest.raises(OSError, match="went away"):
        train(_short(tmp_path, run))
    monkeypatch.undo()
    crash = list((run / "checkpoints").glob("crash_frames_*"))
    assert len(crash) == 1 and load_checkpoint(crash[0])["state"]["counters"]["frames"] > 300
    assert _summary(run)["status"] == "failed"
    assert load_checkpoint(run)["path"].name == "frames_000000000256"  # latest: the regular one
    trainer = Trainer(_short(tmp_path, run, "resume=true"))
    trainer.run()
    assert trainer.resumed_from.name == "frames_000000000256"
    assert crash[0].exists()  # never pruned with the regular ones
    check_run(run, method="btr", frames=512)


@needs_memory
def test_non_finite_weights_never_replace_the_only_good_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def after_update(trainer, learner):
        if trainer.counters.frames == 512:  # just before the periodic save at 512
            for state in learner.optimizer.state.values():
                state["exp_avg"].fill_(float("nan"))

    hook_updates(monkeypatch, after_update)
    with pytest.raises(ValueError, match="NaN/inf"):
        train(_short(tmp_path, run, "checkpoint.keep=1", "total_frames=768"))
    good = load_checkpoint(run)
    assert good["path"].name == "frames_000000000256"
    assert all(
        torch.isfinite(t).all() for t in good["state"]["loss"].values() if t.is_floating_point()
    )
    assert _summary(run)["status"] == "failed"
    assert list((run / "checkpoints").glob("crash_frames_*"))  # the NaN state, for a post-mortem


@needs_memory
def test_full_disk_during_a_save_fails_the_run_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch
):
    import errno

    from torchrl_rise.training import checkpoint as ckpt_module
    from torchrl_rise.training.loop import DiskFullError

    run = tmp_path / "run"
    real = ckpt_module.write_atomic
    calls = []

    def write_atomic(path, write):
        if Path(path).name == "state.pt":
            calls.append(path)
            if len(calls) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(ckpt_module, "write_atomic", write_atomic)
    with pytest.raises(DiskFullError, match="is full"):
        train(_short(tmp_path, run))
    summary = _summary(run)
    assert summary["status"] == "failed" and "full" in summary["reason"]
    assert load_checkpoint(run)["path"].name == "frames_000000000256"
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not list((run / "checkpoints").glob("crash_frames_*"))


class _ShortCollector:
    """A collector that yields ``n`` batches of the real one, then stops."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i >= self.n:
                return
            yield batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


@needs_memory
@pytest.mark.parametrize(("n", "message"), [(3, "after 3 batches"), (0, "yielded nothing")])
def test_a_collector_that_stops_early_fails_the_run(tmp_path, n, message):
    from torchrl_rise.training.loop import CollectorExhaustedError

    run = tmp_path / "run"
    cfg = load_config(_short(tmp_path, run))
    parts = build_assembly(cfg)
    real = parts.make_collector
    parts.make_collector = lambda **k: _ShortCollector(real(**k), n)
    with pytest.raises(CollectorExhaustedError, match=message):
        Trainer.from_components(cfg, parts).run()
    summary = _summary(run)
    assert summary["status"] == "failed" and message in summary["reason"]
    assert summary["frames"] == 4 * n


class _DyingCollector(_ShortCollector):
    """Yields ``n`` batches, then a stop request arrives and the workers die (SIGTERM to all)."""

    def __init__(self, inner, n, trainer):
        super().__init__(inner, n)
        self.trainer = trainer

    def __iter__(self):
        yield from super().__iter__()
        if self.trainer is not None:
            self.trainer.request_stop("SIGTERM")
        raise RuntimeError("a collector worker died")


@needs_memory
def test_a_collector_failing_after_a_stop_request_ends_the_run_as_interrupted(tmp_path):
    def dying(run: Path, stop: bool) -> Trainer:
        cfg = load_config(_short(tmp_path, run))
        parts = build_assembly(cfg)
        real = parts.make_collector
        trainer = Trainer(cfg, components=parts)
        parts.make_collector = lambda **k: _DyingCollector(real(**k), 3, trainer if stop else None)
        return trainer

    trainer = dying(tmp_path / "run", stop=True)
    summary = trainer.run()
    assert summary["status"] == "interrupted" and summary["frames"] == 12
    assert load_checkpoint(trainer.run_dir)["state"]["counters"]["frames"] == 12
    assert not list((trainer.run_dir / "checkpoints").glob("crash_frames_*"))
    with pytest.raises(RuntimeError, match="worker died"):  # without a stop request: an error
        dying(tmp_path / "run2", stop=False).run()


@needs_memory
def test_stop_request_abandons_a_running_evaluation(tmp_path, monkeypatch):
    from torchrl_rise.training import loop

    real = loop.evaluate
    trainer = Trainer(_short(tmp_path, tmp_path / "run", "eval.episodes=1000"))

    def evaluate(*args, **kwargs):
        trainer.request_stop("test")  # as SIGTERM would, while the evaluation runs
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    t0 = time.monotonic()
    summary = trainer.run()
    assert time.monotonic() - t0 < 60
    assert summary["status"] == "interrupted" and summary["scores"]["evaluations"] == []
    assert read_csv(trainer.run_dir / "eval.csv") == []
    assert load_checkpoint(trainer.run_dir)["state"]["counters"]["frames"] == 256


@needs_memory
def test_disk_budget_counts_the_checkpoints_kept_at_once(tmp_path, monkeypatch):
    import shutil as shutil_module

    cfg = _short(tmp_path, tmp_path / "probe")
    comps = build_components(load_config(cfg), scratch_dir=tmp_path / "probe_scratch")
    nbytes = comps.replay.nbytes
    comps.replay.close()
    usage = shutil_module.disk_usage(tmp_path)
    # room for the scratch memmaps and one replay snapshot, not for keep + 1 snapshots
    fake = type(usage)(usage.total, usage.used, int(2.5 * nbytes))
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: fake)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"checkpoint\.keep=2 kept \+ 1 during a save"):
        train(_short(tmp_path, run, "checkpoint.interval_frames=100000"))
    assert not run.exists()


def test_recipe_help_lists_the_presets(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        recipe_cmd("memory", "--help"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    ).stdout
    groups = out.split("== Config ==")[0]
    assert "preset: cpu_memorygym, cpu_miniworld, cpu_vizdoom, debug, quickstart, tiny" in groups


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_as_a_script_from_its_folder(tmp_path, recipe):
    """``python recipes/<x>.py`` puts recipes/ first on sys.path, where TorchRL's import of procgen
    would find recipes/procgen.py; each recipe must drop its folder (no PYTHONSAFEPATH here)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        recipe_cmd(recipe, "--help"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "== Config ==" in done.stdout


def test_a_multirun_writes_nothing_in_the_working_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run(
        recipe_cmd(
            "memory",
            "--multirun",
            "env.num_envs=-1",  # fails at validation: no training
            f"logging.root={tmp_path / 'runs'}",
        ),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert "env.num_envs must be > 0" in done.stderr + done.stdout
    assert list(cwd.iterdir()) == []
    assert list((tmp_path / "runs" / ".hydra_sweeps").rglob("multirun.yaml"))
