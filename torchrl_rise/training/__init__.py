"""The training loop shared by the recipes: config, builders, loop, evaluation, checkpoints, logs.

A recipe builds the pieces with :mod:`torchrl_rise.training.builders` and runs
``Trainer.from_components(cfg, assembly).run()``: collector -> replay -> learner -> target update
-> evaluation -> logging -> checkpoint. ``train(cfg)`` does the same for a :class:`TrainConfig`
(or a dict / hydra config), building the pieces with ``build_assembly``; see docs/training.md.
"""

from __future__ import annotations

from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.training.checkpoint import (
    NonFiniteStateError,
    RunInUseError,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from torchrl_rise.training.config import (
    CheckpointConfig,
    CollectorConfig,
    ConfigError,
    EncoderConfig,
    EnvConfig,
    EvalConfig,
    ExplorationConfig,
    LoggingConfig,
    LossConfig,
    NetworkConfig,
    OptimConfig,
    ReplayConfig,
    TrainConfig,
    load_config,
    register_configs,
    validate_config,
)
from torchrl_rise.training.evaluation import EvalResult, evaluate
from torchrl_rise.training.learner import DeviceMismatchError, Learner
from torchrl_rise.training.loggers import RunLogger
from torchrl_rise.training.loop import CollectorExhaustedError, DiskFullError, Trainer, train
from torchrl_rise.training.summary import make_summary, write_summary

__all__ = [
    "CheckpointConfig",
    "CheckpointCorruptError",
    "CollectorConfig",
    "CollectorExhaustedError",
    "ConfigError",
    "DeviceMismatchError",
    "DiskFullError",
    "EncoderConfig",
    "EnvConfig",
    "EvalConfig",
    "EvalResult",
    "ExplorationConfig",
    "Learner",
    "LoggingConfig",
    "LossConfig",
    "NetworkConfig",
    "NonFiniteStateError",
    "OptimConfig",
    "ReplayConfig",
    "RunInUseError",
    "RunLogger",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "make_summary",
    "register_configs",
    "save_checkpoint",
    "train",
    "validate_config",
    "verify_checkpoint",
    "write_summary",
]

register_configs()  # `train_schema`, the base of every recipe's defaults list
