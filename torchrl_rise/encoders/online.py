"""``online``: the agent's own learnable CNN used as the context encoder, without gradient.

This is the paper's stale-embedding ablation: embeddings are computed at collection with the CNN's
weights *at that time* and stored, so later replays see embeddings from older weights. The encoder
keeps a reference to the agent's module (it is not copied, not registered as a submodule, never
frozen and never moved by ``.to()``), so every call uses the current weights.

Keep it in the learner's process (a :class:`~torchrl_rise.transforms.RiseContextTransform` on top of
a batched env, in a single-process collector): a copy pickled into a ``ParallelEnv`` worker or a
multi-process collector would keep the weights it was sent with unless the module's parameters
live in shared memory (``module.share_memory()``) and are updated in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchrl_rise.encoders.base import FrozenEncoder, PixelPreprocessor, register_encoder

__all__ = ["OnlineEncoder"]


class OnlineEncoder(FrozenEncoder):
    """Embeds with a live, learnable module under ``torch.no_grad()``.

    The module receives what the agent's network receives: by default the whole frame stack
    (``frame_index=None``) in its stored dtype (``to_float=False``). Its output is flattened to
    ``[B, D]``. During the call the module is put in eval mode (``eval_mode=True``, so e.g.
    spectral-norm power iterations or BatchNorm statistics are not updated by collection) and its
    previous mode is restored afterwards.

    Args:
        module: the agent's CNN (shared, not copied).
        embedding_dim: its output size; inferred from ``input_shape`` when not given.
        input_shape: one observation's shape ``[S*C, H, W]`` used to infer ``embedding_dim``.
        frame_channels, frame_index, channels_last: input options (see :class:`PixelPreprocessor`).
        to_float: convert uint8 pixels to float in ``[0, 1]`` before the module.
        eval_mode: run the module in eval mode.
        chunk_size: largest batch pushed through at once.

    Example:
        >>> cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8))
        >>> from torchrl_rise.encoders import make_encoder
        >>> enc = make_encoder("online", module=cnn, input_shape=(4, 12, 12), to_float=True)
        >>> enc.embedding_dim, enc(torch.zeros(3, 4, 12, 12, dtype=torch.uint8)).shape
        (8, torch.Size([3, 8]))
    """

    # the live module stays where the agent keeps it; inputs are moved to it instead
    follows_data_device = False
    # the agent's live module (parameters shared with the learner): plain no_grad, as before
    use_inference_mode = False

    def __init__(
        self,
        module: nn.Module,
        *,
        embedding_dim: int,
        preprocessor: PixelPreprocessor,
        eval_mode: bool = True,
        chunk_size: int | None = 1024,
    ) -> None:
        super().__init__(
            name="online",
            embedding_dim=embedding_dim,
            weights_source="online (the agent's current weights, no gradient)",
            preprocessor=preprocessor,
            chunk_size=chunk_size,
        )
        # a plain attribute: not a submodule, so not frozen, not saved, not moved with this encoder
        self.__dict__["module"] = module
        self.eval_mode = bool(eval_mode)

    @property
    def device(self) -> torch.device:
        """The live module's device: inputs go there, embeddings come back to the input's device."""
        for tensor in self.module.parameters():
            return tensor.device
        for tensor in self.module.buffers():
            return tensor.device
        return torch.device("cpu")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        module = self.module
        was_training = module.training
        if self.eval_mode and was_training:
            module.train(False)
        try:
            out = module(images)
        finally:
            if self.eval_mode and was_training:
                module.train(True)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "module": type(self.module).__name__}


@register_encoder("online")
def make_online(
    *,
    module: nn.Module | None = None,
    embedding_dim: int | None = None,
    input_shape: Sequence[int] | None = None,
    frame_channels: int = 1,
    frame_index: int | None = None,
    channels_last: bool = False,
    to_float: bool = False,
    eval_mode: bool = True,
    weights: str | None = None,
    seed: int | None = None,
    chunk_size: int | None = 1024,
    **unused: Any,
) -> OnlineEncoder:
    """The agent's live CNN as encoder (see :class:`OnlineEncoder`).

    ``weights``/``seed`` are accepted so one config can drive every encoder; the weights are the
    module's own. Options that only make sense for image models (``resize``,
    ``imagenet_normalize``) must be left at ``None``.
    """
    del seed
    if module is None or not isinstance(module, nn.Module):
        raise TypeError(
            "make_encoder('online', module=...) needs the agent's CNN (an nn.Module) as `module`."
        )
    if weights not in (None, "auto", "online"):
        raise ValueError(
            f"the online encoder uses the module's own weights, got weights={weights!r}."
        )
    bad = {k: v for k, v in unused.items() if v is not None}
    if set(unused) - {"resize", "imagenet_normalize"} or bad:
        raise TypeError(
            f"options {sorted(unused)} are not supported by the online encoder (it feeds the "
            "module what the agent's network sees)."
        )
    preprocessor = PixelPreprocessor(
        frame_channels=frame_channels,
        frame_index=frame_index,
        channels_last=channels_last,
        convert=to_float,
    )
    if embedding_dim is None:
        if input_shape is None:
            raise ValueError(
                "the online encoder needs embedding_dim=... or input_shape=(S*C, H, W) to infer it."
            )
        encoder = OnlineEncoder(
            module, embedding_dim=1, preprocessor=preprocessor, eval_mode=eval_mode
        )
        # observations arrive as uint8 pixels, as the agent's network receives them
        probe = torch.zeros(1, *input_shape, dtype=torch.uint8, device=encoder.device)
        with torch.no_grad():
            embedding_dim = int(encoder.encode(preprocessor(probe)).shape[-1])
    encoder = OnlineEncoder(
        module,
        embedding_dim=embedding_dim,
        preprocessor=preprocessor,
        eval_mode=eval_mode,
        chunk_size=chunk_size,
    )
    encoder._extra_description = {"to_float": to_float, "eval_mode": eval_mode}
    return encoder
