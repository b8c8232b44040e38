"""Learner objectives: BTR's IQN + Munchausen loss."""

from __future__ import annotations

from torchrl_rise.objectives.iqn import IQNLoss, quantile_huber_loss

__all__ = ["IQNLoss", "quantile_huber_loss"]
