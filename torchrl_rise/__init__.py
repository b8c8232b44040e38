"""torchrl_rise: RISE (Recurrent Integration via Simplified Encodings) for TorchRL.

A frozen encoder embeds each observation once, at collection; a context-window replay buffer stores
those embeddings once per step; a dual-stream Q-network (IMPALA CNN + LSTM over the embedding window,
fused by a sigmoid gate) is trained with the Beyond The Rainbow (BTR) agent.
"""

from __future__ import annotations

import logging

from torchrl_rise import keys

__version__ = "0.1.0"
__all__ = ["__version__", "keys"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
