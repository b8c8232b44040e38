"""Learner objectives: BTR's IQN + Munchausen loss (transitions and sequences), its functional
target and its hard target update."""

from __future__ import annotations

from torchrl_rise.objectives.iqn import IQNLoss, quantile_huber_loss
from torchrl_rise.objectives.sequence_iqn import SequenceIQNLoss
from torchrl_rise.objectives.target import HardTargetUpdate, iqn_target, sequence_bootstrap

__all__ = [
    "HardTargetUpdate",
    "IQNLoss",
    "SequenceIQNLoss",
    "iqn_target",
    "quantile_huber_loss",
    "sequence_bootstrap",
]
