"""Learnable modules: IMPALA CNN, noisy layers, IQN head, context stream, the network family, actor.

:class:`RiseContextStream` (and its TensorDict module :class:`RiseContextModule`) adds RISE's
context stream to any feature extractor / Q-head pair; :func:`make_q_network` builds the
networks of the paper from the same pieces.
"""

from __future__ import annotations

from torchrl_rise.modules.actor import (
    BTREGreedyModule,
    EvalEGreedyModule,
    make_actor,
    make_eval_actor,
)
from torchrl_rise.modules.context import ContextLSTM, StreamFusion, left_align_window
from torchrl_rise.modules.diagnostics import gate_statistics
from torchrl_rise.modules.impala import ImpalaCNN
from torchrl_rise.modules.iqn import CosineEmbedding, DuelingIQNHead
from torchrl_rise.modules.networks import (
    NETWORK_KINDS,
    IQNNetworkBase,
    RecurrentBaselineQNetwork,
    RiseQNetwork,
    make_q_network,
)
from torchrl_rise.modules.noisy import NoisyLinear, resample_noise, reset_noise
from torchrl_rise.modules.recurrent_actor import RecurrentQStep, make_recurrent_actor
from torchrl_rise.modules.stream import RiseContextModule, RiseContextStream

__all__ = [
    "NETWORK_KINDS",
    "BTREGreedyModule",
    "ContextLSTM",
    "CosineEmbedding",
    "DuelingIQNHead",
    "EvalEGreedyModule",
    "IQNNetworkBase",
    "ImpalaCNN",
    "NoisyLinear",
    "RecurrentBaselineQNetwork",
    "RecurrentQStep",
    "RiseContextModule",
    "RiseContextStream",
    "RiseQNetwork",
    "StreamFusion",
    "gate_statistics",
    "left_align_window",
    "make_actor",
    "make_eval_actor",
    "make_q_network",
    "make_recurrent_actor",
    "resample_noise",
    "reset_noise",
]
