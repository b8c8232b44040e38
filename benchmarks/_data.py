"""Synthetic collector batches shared by the replay benchmarks."""

from __future__ import annotations

import torch
from tensordict import TensorDict


def stacks_and_embeddings(
    num_envs: int, chunk: int, frame_shape, frame_stack: int, embedding_dim: int, g
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 frame stacks [num_envs, chunk, S * c, h, w] and fp16 embeddings.

    Only the newest frame of a stack is stored: an expanded view stands for the stack.
    """
    E, (c, h, w), S = num_envs, frame_shape, frame_stack
    frames = torch.randint(0, 256, (E, chunk, c, h, w), dtype=torch.uint8, generator=g)
    pixels = frames.unsqueeze(2).expand(E, chunk, S, c, h, w).reshape(E, chunk, S * c, h, w)
    emb = torch.randn(E, chunk, embedding_dim, generator=g).half()
    return pixels, emb


def collector_batch(pixels, emb, g, *, p_end: float, **extra: torch.Tensor) -> TensorDict:
    """A [num_envs, chunk] collector batch of ``pixels`` and ``emb`` (and ``extra`` keys), with
    random actions and rewards; each step ends its episode with probability ``p_end``."""
    E, chunk = pixels.shape[:2]
    end = torch.rand(E, chunk, 1, generator=g) < p_end
    return TensorDict(
        {
            "pixels": pixels,
            "rise_embedding": emb,
            **extra,
            "action": torch.randint(0, 18, (E, chunk), generator=g),
            ("next", "reward"): torch.randn(E, chunk, 1, generator=g),
            ("next", "terminated"): end,
            ("next", "truncated"): torch.zeros_like(end),
            ("next", "pixels"): pixels,
            ("next", "rise_embedding"): emb,
        },
        batch_size=[E, chunk],
    )
