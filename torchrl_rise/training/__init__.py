"""The training loop shared by the recipes: config, builders, loop, evaluation, checkpoints, logs.

``train(cfg)`` runs collector -> replay -> learner -> target update -> evaluation -> logging ->
checkpoint for a :class:`TrainConfig` (or the dict / hydra config the recipes compose); see
docs/training.md.
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
from torchrl_rise.training.loggers import RunLogger
from torchrl_rise.training.loop import CollectorExhaustedError, DiskFullError, Trainer, train
from torchrl_rise.training.summary import make_summary, write_summary

__all__ = [
    "CheckpointConfig",
    "CheckpointCorruptError",
    "CollectorConfig",
    "CollectorExhaustedError",
    "ConfigError",
    "DiskFullError",
    "EncoderConfig",
    "EnvConfig",
    "EvalConfig",
    "EvalResult",
    "ExplorationConfig",
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
