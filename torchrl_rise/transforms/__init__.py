"""TorchRL transforms of torchrl_rise.

:class:`RiseContextTransform` embeds each observation with a frozen encoder once, at collection, and
keeps the rolling per-env window of the last ``K`` embeddings that acting needs.
"""

from __future__ import annotations

from torchrl_rise.transforms.context import RiseContextTransform

__all__ = ["RiseContextTransform"]
