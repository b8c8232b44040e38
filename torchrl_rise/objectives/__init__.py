"""Learner objectives: BTR's IQN + Munchausen loss and its hard target update."""

from __future__ import annotations

from torchrl_rise.objectives.iqn import IQNLoss, quantile_huber_loss
from torchrl_rise.objectives.sequence_iqn import SequenceIQNLoss
from torchrl_rise.objectives.target import HardTargetUpdate

__all__ = ["HardTargetUpdate", "IQNLoss", "SequenceIQNLoss", "quantile_huber_loss"]
