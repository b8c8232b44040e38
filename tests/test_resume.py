"""What a resume may change (training/resume.py) and what a start does with a run directory
(training/rundir.py): unit tests on configs and fabricated run directories, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from torchrl_rise.training.checkpoint import list_checkpoints, save_checkpoint
from torchrl_rise.training.config import (
    ConfigError,
    EncoderConfig,
    EvalConfig,
    NetworkConfig,
    ReplayConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    validate_config,
)
from torchrl_rise.training.resume import (
    HISTORY_FILE,
    check_resume,
    diff_configs,
    record_config,
    trained_config,
)
from torchrl_rise.training.rundir import inspect_run_dir, no_checkpoint_message, prepare_run_dir

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"


def _cfg(method="rise", k=8, batch=16, width=0.25, total=200_000_000, allow=(), **more):
    return TrainConfig(
        method=method,
        total_frames=total,
        encoder=EncoderConfig(context_length=k),
        replay=ReplayConfig(batch_size=batch),
        network=NetworkConfig(kwargs={"width_scale": width}),
        resume_allow_changes=list(allow),
        **more,
    )


def _kinds(trained, now):
    return {c.key: c.kind for c in diff_configs(config_to_dict(trained), config_to_dict(now))}


# ------------------------------------------------------------------------------ comparison


def test_each_difference_is_sorted_into_free_guarded_or_fixed():
    now = _cfg(k=16, batch=32, width=0.5, total=300_000_000, num_threads=3)
    now.loss.gamma = 0.99
    now.eval.episodes = 7
    now.env.num_envs = 8
    assert _kinds(_cfg(), now) == {
        "encoder.context_length": "guarded",
        "env.num_envs": "fixed",
        "eval.episodes": "free",
        "loss.gamma": "guarded",
        "network.kwargs.width_scale": "fixed",
        "num_threads": "free",
        "replay.batch_size": "guarded",
        "total_frames": "free",
    }


def test_where_the_run_is_and_sections_the_method_ignores_are_not_compared(tmp_path):
    now = _cfg(resume=str(tmp_path))
    now.logging.run_dir = str(tmp_path)
    now.logging.root = "elsewhere"
    now.recurrent.burn_in = 9  # method=rise never reads recurrent.*
    assert _kinds(_cfg(), now) == {}
    # btr reads no encoder: its context length is no change; rise's is
    assert _kinds(_cfg(method="btr"), _cfg(method="btr", k=32)) == {}
    assert _kinds(_cfg(), _cfg(k=32)) == {"encoder.context_length": "guarded"}


def test_missing_keys_are_compared_with_the_default_and_kwargs_keys_with_unset():
    trained = config_to_dict(_cfg())
    del trained["optim"]["bf16"]  # a field added after the checkpoint was written
    trained["obsolete_field"] = 3  # a field the schema no longer has
    assert diff_configs(trained, config_to_dict(_cfg())) == []
    now = _cfg()
    now.optim.bf16 = True
    now.network.kwargs = {"mlp_hidden": 32}
    changes = {c.key: (c.trained, c.now) for c in diff_configs(trained, config_to_dict(now))}
    assert changes == {
        "optim.bf16": (False, True),
        "network.kwargs.mlp_hidden": ("<unset>", 32),
        "network.kwargs.width_scale": (0.25, "<unset>"),
    }


def test_refusal_is_one_message_naming_every_key_with_both_values():
    with pytest.raises(ConfigError) as info:
        check_resume(
            config_to_dict(_cfg()),
            _cfg(k=4, batch=32, width=0.5, total=100),
            frames=512,
            checkpoint="run/checkpoints/frames_000000000512",
        )
    message = str(info.value)
    assert message.startswith("cannot resume from run/checkpoints/frames_000000000512")
    for line in (
        "encoder.context_length: 8 (trained) -> 4 (now)",
        "replay.batch_size: 16 (trained) -> 32 (now)",
        "network.kwargs.width_scale: 0.25 (trained) -> 0.5 (now)  [cannot change on a resume]",
        "total_frames: 100 is below the 512 frames trained",
    ):
        assert line in message
    # what works: the trained values as overrides
    assert (
        "network.kwargs.width_scale=0.25 encoder.context_length=8 replay.batch_size=16 "
        "total_frames=512" in message
    )


def test_guarded_changes_pass_when_allowed_fixed_ones_never():
    trained = config_to_dict(_cfg())
    with pytest.raises(ConfigError, match=r"resume_allow_changes=\[encoder\.context_length\]"):
        check_resume(trained, _cfg(k=16), frames=8, checkpoint="c")
    allowed = _cfg(k=16, batch=32, allow=["encoder.context_length", "replay"])
    changes = check_resume(trained, allowed, frames=8, checkpoint="c")
    assert [(c.key, c.trained, c.now) for c in changes] == [
        ("encoder.context_length", 8, 16),
        ("replay.batch_size", 16, 32),
    ]
    # free changes need no allowance; total_frames may go down to the frames trained
    changes = check_resume(trained, _cfg(total=512, eval=EvalConfig(episodes=5)), frames=512,
                           checkpoint="c")  # fmt: skip
    assert {c.key for c in changes} == {"total_frames", "eval.episodes"}
    with pytest.raises(ConfigError, match=r"total_frames: 511 is below the 512 frames trained"):
        check_resume(trained, _cfg(total=511), frames=512, checkpoint="c")


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        (["nope.x"], "'nope.x', which is not a config key"),
        (["network.kwargs.width_scale"], "can never change"),
        (["encoder"], r"encoder\.name, encoder\.weights.*Name only the keys"),
        ("replay.batch_size", "must be a list of config keys"),
    ],
)
def test_allow_list_names_config_keys_a_resume_may_change(allow, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(TrainConfig(resume_allow_changes=allow))


def test_allow_list_parses_as_a_command_line_override():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = compose(
            config_name="memory",
            overrides=["preset=tiny", "resume_allow_changes=[encoder.context_length,optim]"],
        )
    assert load_config(composed).resume_allow_changes == ["encoder.context_length", "optim"]


def test_record_config_keeps_the_original_and_appends_each_change(tmp_path):
    first = json.loads(json.dumps(config_to_dict(_cfg())))
    record_config(tmp_path, first, [], frames=0, checkpoint=None)
    ckpt = tmp_path / "checkpoints" / "frames_000000000256"
    assert record_config(tmp_path, {"other": 1}, [], frames=256, checkpoint=ckpt) is None
    changes = check_resume(first, _cfg(batch=32, allow=["replay"]), frames=256, checkpoint=ckpt)
    record_config(tmp_path, {"other": 2}, changes, frames=256, checkpoint=ckpt)
    assert json.loads((tmp_path / "config.json").read_text()) == first  # never rewritten
    lines = (tmp_path / HISTORY_FILE).read_text().splitlines()
    entry = json.loads(lines[0])
    assert len(lines) == 1 and entry["frames"] == 256
    assert entry["checkpoint"] == "checkpoints/frames_000000000256"
    assert entry["changes"] == {"replay.batch_size": {"from": 16, "to": 32}}


def test_trained_config_prefers_the_checkpoint_then_config_json_then_the_identity(tmp_path):
    assert trained_config({"config": {"seed": 1}}, tmp_path) == ({"seed": 1}, True)
    state = {"method": "btr", "suite": "memory", "env_id": "cue-L6"}
    partial, complete = trained_config(state, tmp_path)
    assert not complete and partial == {
        "method": "btr",
        "env": {"suite": "memory", "env_id": "cue-L6"},
    }
    with pytest.raises(ConfigError, match=r"env\.env_id: \"cue-L6\" \(trained\) -> \"Pong\""):
        check_resume(partial, _cfg(method="btr"), frames=1, checkpoint="c", complete=False)
    (tmp_path / "config.json").write_text(json.dumps({"seed": 2}))
    assert trained_config(state, tmp_path) == ({"seed": 2}, True)


# ------------------------------------------------------------------------------ run directory


def _partial_run(run: Path, *, status: str | None = None) -> dict[str, str]:
    """What a run killed (or failed) before its first checkpoint leaves, plus a launcher's file."""
    run.mkdir(parents=True, exist_ok=True)
    files = {"config.json": "{}", "train.csv": "frames\n128\n", "train.log": "started\n"}
    if status:
        files["summary.json"] = json.dumps({"status": status, "frames": 128})
    for name, text in files.items():
        (run / name).write_text(text)
    (run / "benchmark.log").write_text("the launcher's own log\n")
    return files


def _checkpoint(run: Path, frames: int, *, crash: bool = False) -> Path:
    return save_checkpoint(run / "checkpoints", {"counters": {"frames": frames}}, step=frames,
                           crash=crash)  # fmt: skip


def test_an_empty_run_dir_starts_a_new_run_and_resume_true_says_so(tmp_path):
    assert prepare_run_dir(tmp_path, resume=False, explicit=None) == ([], None)
    candidates, note = prepare_run_dir(tmp_path, resume=True, explicit=None)
    assert candidates == [] and "nothing to resume" in note and "frame 0" in note


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("status", [None, "failed", "interrupted"])
def test_a_run_without_checkpoint_is_set_aside_and_starts_again(tmp_path, resume, status):
    files = _partial_run(tmp_path, status=status)
    (tmp_path / "checkpoints" / "replay_chunks").mkdir(parents=True)  # orphan chunks only
    (tmp_path / "checkpoints" / "replay_chunks" / "c0.bin").write_bytes(b"x" * 10)
    candidates, note = prepare_run_dir(tmp_path, resume=resume, explicit=None)
    assert candidates == []
    assert "stopped before its first checkpoint" in note and "partial-1" in note
    assert {p.name: p.read_text() for p in (tmp_path / "partial-1").iterdir()} == files
    assert not (tmp_path / "checkpoints").exists()  # no checkpoint in it: nothing kept
    assert (tmp_path / "benchmark.log").exists()  # not the run's: stays
    assert not inspect_run_dir(tmp_path).found
    # killed again before its first checkpoint: the next folder
    _partial_run(tmp_path)
    prepare_run_dir(tmp_path, resume=resume, explicit=None)
    assert (tmp_path / "partial-2" / "train.csv").exists() and (tmp_path / "partial-1").exists()


def test_crash_checkpoints_and_a_checkpoint_a_dead_save_moved_aside_are_kept(tmp_path):
    _partial_run(tmp_path, status="failed")
    crash = _checkpoint(tmp_path, 100, crash=True)
    _, note = prepare_run_dir(tmp_path, resume=True, explicit=None)
    assert (tmp_path / "partial-1" / "checkpoints" / crash.name / "state.pt").exists()
    assert crash.name in note
    # a save of the same frame count died between moving the only checkpoint aside and the rename
    other = tmp_path / "other"
    _partial_run(other)
    ckpt = _checkpoint(other, 256)
    ckpt.rename(ckpt.with_name(f".tmp-replaced-{ckpt.name}-123"))
    assert prepare_run_dir(other, resume=True, explicit=None) == ([ckpt], None)


def test_a_run_with_checkpoints_is_refused_to_a_new_run_naming_the_command(tmp_path):
    _partial_run(tmp_path)
    ckpt = _checkpoint(tmp_path, 256)
    with pytest.raises(
        ConfigError, match=rf"To continue it: logging\.run_dir={tmp_path} resume=true\."
    ):
        prepare_run_dir(tmp_path, resume=False, explicit=None)
    assert prepare_run_dir(tmp_path, resume=True, explicit=None) == ([ckpt], None)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "frames": 256}))
    with pytest.raises(
        ConfigError,
        match=r"already holds a run, finished \(256 frames.*resume=true total_frames=<more than 256>",
    ):
        prepare_run_dir(tmp_path, resume=False, explicit=None)
    assert list_checkpoints(tmp_path) == [ckpt] and not (tmp_path / "partial-1").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_finished_run_whose_checkpoints_are_gone_is_refused(tmp_path, resume):
    _partial_run(tmp_path, status="finished")
    with pytest.raises(ConfigError, match=r"checkpoints are gone.*Choose another logging\.run_dir"):
        prepare_run_dir(tmp_path, resume=resume, explicit=None)
    assert (tmp_path / "train.csv").exists() and not (tmp_path / "partial-1").exists()


def test_an_explicit_resume_path_without_checkpoint_names_the_command(tmp_path):
    _partial_run(tmp_path)
    message = no_checkpoint_message(str(tmp_path))
    assert "stopped before its first checkpoint" in message
    assert message.endswith(f"logging.run_dir={tmp_path} resume=true.")
    assert "To start a new run there" in no_checkpoint_message(str(tmp_path / "nowhere"))
