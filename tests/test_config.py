"""One home per default: the config's defaults agree with those of the modules they configure.

``TrainConfig`` is the home of every training default; the classes it configures keep defaults
of their own (for use without the config). When the two disagree, ``train(cfg)`` and a direct
use of the class silently run different experiments: each test here names the pair that drifted.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchrl_rise.modules import (
    RecurrentBaselineQNetwork,
    RiseContextStream,
    RiseQNetwork,
    make_actor,
    make_q_network,
)
from torchrl_rise.objectives import HardTargetUpdate, IQNLoss
from torchrl_rise.replay import RiseReplayBuffer, SequenceReplayBuffer
from torchrl_rise.training import TrainConfig
from torchrl_rise.training.builders import embedding_dtype, recurrent_state_dim
from torchrl_rise.training.config import ConfigError, validate_config
from torchrl_rise.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def _default(target: Callable[..., Any], name: str) -> Any:
    return inspect.signature(target).parameters[name].default


def _config_default(key: str) -> Any:
    node: Any = TrainConfig()
    for part in key.split("."):
        node = getattr(node, part)
    return node


# (config key, the class or function it configures, its parameter, how the builder converts it)
AGREEMENTS = [
    ("loss.gamma", IQNLoss, "gamma", None),
    ("loss.gamma", RiseReplayBuffer, "gamma", None),
    ("loss.n_step", RiseReplayBuffer, "n_step", None),
    ("loss.munchausen", IQNLoss, "munchausen", None),
    ("loss.priority_reduction", IQNLoss, "priority_reduction", None),
    ("loss.target_update_interval", HardTargetUpdate, "interval", None),
    ("replay.batch_size", RiseReplayBuffer, "batch_size", None),
    ("replay.prioritized", RiseReplayBuffer, "prioritized", None),
    ("replay.alpha", RiseReplayBuffer, "alpha", None),
    ("replay.beta", RiseReplayBuffer, "beta", None),
    ("replay.importance_weights", RiseReplayBuffer, "importance_weights", None),
    ("replay.stratified", RiseReplayBuffer, "stratified", None),
    ("replay.max_priority_floor", RiseReplayBuffer, "max_priority_floor", None),
    ("encoder.context_length", RiseReplayBuffer, "context_length", None),
    ("encoder.dtype", RiseReplayBuffer, "embedding_dtype", embedding_dtype),
    ("recurrent.burn_in", SequenceReplayBuffer, "burn_in", None),
    ("recurrent.burn_in", RecurrentBaselineQNetwork, "burn_in", None),
    ("recurrent.learning_length", SequenceReplayBuffer, "learning_length", None),
    ("recurrent.period", SequenceReplayBuffer, "period", None),
    ("recurrent.recurrent_state", SequenceReplayBuffer, "recurrent_state", None),
    ("recurrent.state_dtype", SequenceReplayBuffer, "state_dtype", embedding_dtype),
    ("recurrent.sequence_priority_eta", IQNLoss, "sequence_priority_eta", None),
    ("exploration.schedule", make_actor, "eps_schedule", None),
    ("exploration.eps_start", make_actor, "eps_init", None),
    ("exploration.eps_end", make_actor, "eps_end", None),
    ("exploration.eps_decay_frames", make_actor, "eps_decay_frames", None),
    ("exploration.eps_off_after_frames", make_actor, "eps_off_after_frames", None),
    ("eval.eps", evaluate, "eps", None),
    ("eval.max_steps", evaluate, "max_steps", None),
]


@pytest.mark.parametrize(
    "key, target, parameter, convert",
    AGREEMENTS,
    ids=[f"{key}~{target.__name__}.{parameter}" for key, target, parameter, _ in AGREEMENTS],
)
def test_a_config_default_is_the_default_of_what_it_configures(key, target, parameter, convert):
    value = _config_default(key)
    if convert is not None:
        value = convert(value)
    module_default = _default(target, parameter)
    assert module_default == value, (
        f"TrainConfig's {key}={value!r} but {target.__name__}({parameter}=...) defaults to "
        f"{module_default!r}: make them agree (the config is the home of the default)."
    )


def test_the_network_defaults_live_in_the_network_classes():
    """``network.kwargs`` is free-form and ``make_q_network`` forwards it: the factory repeats no
    default of the classes (``channels_last`` is the factory's own)."""
    own = {
        name
        for name, param in inspect.signature(make_q_network).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    assert own == {"channels_last"}
    for cls in (RiseQNetwork, RecurrentBaselineQNetwork):
        assert "channels_last" not in inspect.signature(cls).parameters


def test_the_context_lstm_size_has_one_default():
    """RISE's context LSTM: 256 in the network and in the stream module it is made of."""
    assert _default(RiseQNetwork, "lstm_hidden") == _default(RiseContextStream, "lstm_hidden")
    assert _default(RiseContextStream, "lstm_hidden") == 256
    # the recurrent baseline keeps R2D2's 512; its acting state is sized from the same default
    assert recurrent_state_dim(TrainConfig(method="recurrent")) == 512


def test_procgen_levels_live_in_the_suite_only():
    """The suite module holds Procgen's training levels; no recipe config or preset repeats them."""
    files = [*(ROOT / "recipes" / "config").glob("*.yaml")]
    files += (ROOT / "torchrl_rise" / "training" / "presets" / "preset").glob("*.yaml")
    for file in files:
        env = (yaml.safe_load(file.read_text()) or {}).get("env") or {}
        assert "num_levels" not in (env.get("kwargs") or {}), file.name


# ------------------------------------------------------------------ validation next to each section


SECTIONS = [
    f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.default_factory)
]


@pytest.mark.parametrize("section", [s for s in SECTIONS if s != "network"])
def test_every_section_validates_its_own_defaults(section):
    config = getattr(TrainConfig(), section)
    if section == "encoder":
        config.validate(uses_context=True, method="rise")
    else:
        config.validate()


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("env", "num_envs", 0, "env.num_envs must be > 0"),
        ("loss", "gamma", 1.5, r"loss.gamma must lie in \(0, 1\]"),
        ("optim", "lr", -1.0, "optim.lr must be > 0"),
        ("replay", "alpha", 2.0, r"replay.alpha must lie in \[0, 1\]"),
        ("recurrent", "period", 0, "recurrent.period must be an integer >= 1"),
        ("exploration", "schedule", "cosine", "exploration.schedule must be one of"),
        ("collector", "num_workers", 2, "Use collector.backend=multi_sync"),
        ("eval", "episodes", 0, "eval.episodes must be > 0"),
        ("logging", "backends", ["csv", "neptune"], "logging.backends has unknown"),
        ("checkpoint", "keep", 0, "checkpoint.keep must be > 0"),
    ],
)
def test_a_section_names_its_bad_value(section, field, value, message):
    cfg = TrainConfig(method="recurrent" if section == "recurrent" else "rise")
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=message):
        getattr(cfg, section).validate()
    with pytest.raises(ConfigError, match=message):  # and validate_config runs it
        validate_config(cfg)


# ------------------------------------------------------------------ builders pass settings by name


def test_a_free_form_option_that_a_typed_one_sets_is_refused():
    """``encoder.context_length`` is the network's K: ``network.kwargs`` cannot set another."""
    from torchrl_rise.training import load_config
    from torchrl_rise.training.builders import build_network, make_env_factory, probe_env

    cfg = load_config(
        {
            "env": {"suite": "memory", "env_id": "cue-L4", "num_envs": 2, "frame_size": 16},
            "encoder": {"name": "downsample", "weights": None, "context_length": 8},
            "network": {"kwargs": {"context_length": 4, "width_scale": 0.25, "mlp_hidden": 16}},
        }
    )
    env_info, _ = probe_env(make_env_factory(cfg))
    with pytest.raises(ConfigError, match=r"network\.kwargs.*context_length"):
        build_network(cfg, env_info=env_info, embedding_dim=16)
