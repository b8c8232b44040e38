"""torchrl_rise: RISE (Recurrent Integration via Simplified Encodings) for TorchRL.

A frozen encoder embeds each observation once, at collection; a context-window replay buffer stores
those embeddings once per step; a dual-stream Q-network (IMPALA CNN + LSTM over the embedding window,
fused by a sigmoid gate) is trained with the Beyond The Rainbow (BTR) agent.

The public pieces are importable from the top level. They are loaded lazily (PEP 562), so
``import torchrl_rise`` does not import torch, torchrl, torchvision or hydra; the first access to a
name imports the subpackage that defines it.

Example:
    >>> import torchrl_rise
    >>> from torchrl_rise import RiseContextTransform, make_encoder
    >>> RiseContextTransform is torchrl_rise.transforms.RiseContextTransform
    True
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from torchrl_rise import keys

__version__ = "0.1.0"

# public name -> the subpackage that defines it (one home per name; see docs/index.md)
_EXPORTS: dict[str, str] = {
    # frozen encoders and the collection-time transform
    "FrozenEncoder": "torchrl_rise.encoders",
    "make_encoder": "torchrl_rise.encoders",
    "available_encoders": "torchrl_rise.encoders",
    "RiseContextTransform": "torchrl_rise.transforms",
    # replay
    "RiseReplayBuffer": "torchrl_rise.replay",
    # networks and actors
    "RiseContextStream": "torchrl_rise.modules",
    "RiseContextModule": "torchrl_rise.modules",
    "ContextLSTM": "torchrl_rise.modules",
    "StreamFusion": "torchrl_rise.modules",
    "make_q_network": "torchrl_rise.modules",
    "make_actor": "torchrl_rise.modules",
    "make_eval_actor": "torchrl_rise.modules",
    "gate_statistics": "torchrl_rise.modules",
    "resample_noise": "torchrl_rise.modules",
    "reset_noise": "torchrl_rise.modules",
    # loss
    "IQNLoss": "torchrl_rise.objectives",
    # environments
    "make_env": "torchrl_rise.envs",
    "describe_env": "torchrl_rise.envs",
    # training
    "Trainer": "torchrl_rise.training",
    "train": "torchrl_rise.training",
    "TrainConfig": "torchrl_rise.training",
    "load_config": "torchrl_rise.training",
    # evaluation
    "aggregate_scores": "torchrl_rise.evaluation",
    "build_report": "torchrl_rise.evaluation",
}
_SUBPACKAGES = (
    "encoders",
    "envs",
    "evaluation",
    "modules",
    "objectives",
    "replay",
    "training",
    "transforms",
)

__all__ = [
    "ContextLSTM",
    "FrozenEncoder",
    "IQNLoss",
    "RiseContextModule",
    "RiseContextStream",
    "RiseContextTransform",
    "RiseReplayBuffer",
    "StreamFusion",
    "TrainConfig",
    "Trainer",
    "__version__",
    "aggregate_scores",
    "available_encoders",
    "build_report",
    "describe_env",
    "gate_statistics",
    "keys",
    "load_config",
    "make_actor",
    "make_encoder",
    "make_env",
    "make_eval_actor",
    "make_q_network",
    "resample_noise",
    "reset_noise",
    "train",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from torchrl_rise.encoders import FrozenEncoder, available_encoders, make_encoder
    from torchrl_rise.envs import describe_env, make_env
    from torchrl_rise.evaluation import aggregate_scores, build_report
    from torchrl_rise.modules import (
        ContextLSTM,
        RiseContextModule,
        RiseContextStream,
        StreamFusion,
        gate_statistics,
        make_actor,
        make_eval_actor,
        make_q_network,
        resample_noise,
        reset_noise,
    )
    from torchrl_rise.objectives import IQNLoss
    from torchrl_rise.replay import RiseReplayBuffer
    from torchrl_rise.training import TrainConfig, Trainer, load_config, train
    from torchrl_rise.transforms import RiseContextTransform


def __getattr__(name: str) -> Any:
    """Import a public name's subpackage on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(
        f"module 'torchrl_rise' has no attribute {name!r}; the top-level names are "
        f"{sorted(_EXPORTS)} and the subpackages {list(_SUBPACKAGES)}."
    )


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})


logging.getLogger(__name__).addHandler(logging.NullHandler())
