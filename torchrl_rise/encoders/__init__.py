"""Frozen observation encoders for RISE's context stream.

Build one by name with :func:`make_encoder`; :func:`available_encoders` lists the names:

- ``resnet18`` (default, 512-d) and ``efficientnet_b0`` (1280-d): torchvision ImageNet CNNs, penultimate
  layer; ``weights`` = ``"imagenet"``, a state-dict path, ``"random"`` or ``"auto"``;
  ``precision`` = ``"fp32"`` (default), ``"bf16"`` or ``"int8"`` (resnet18, CPU) and ``fuse=True``
  choose a faster variant (:mod:`torchrl_rise.encoders.optimize`).
- ``downsample`` and ``random_projection``: the paper's cheap, weight-free encoders.
- ``online``: the agent's own learnable CNN used without gradient (stale-embedding ablation).

Every encoder is a :class:`FrozenEncoder`: ``enc(pixels)`` maps uint8/float ``[..., S*C, H, W]`` to
float32 ``[..., D]`` without autograd (float pixels outside ``[0, 1]`` or a layout that does not
match ``channels_last`` raise :class:`PixelFormatError`); ``enc.embedding_dim``, ``enc.weights_source`` and
``enc.describe()`` say what it is.

Example:
    >>> import torch
    >>> from torchrl_rise.encoders import make_encoder
    >>> enc = make_encoder("resnet18", weights="random", seed=0)
    >>> enc(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

from torchrl_rise.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenEncoder,
    PixelFormatError,
    PixelPreprocessor,
    available_encoders,
    make_encoder,
    register_encoder,
)
from torchrl_rise.encoders.online import OnlineEncoder
from torchrl_rise.encoders.optimize import PRECISIONS, synthetic_frames
from torchrl_rise.encoders.pixels import DownsampleEncoder, RandomProjectionEncoder
from torchrl_rise.encoders.torchvision_models import (
    TorchvisionEncoder,
    WeightsFileError,
    WeightsUnavailableError,
    load_state_dict_file,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRECISIONS",
    "DownsampleEncoder",
    "FrozenEncoder",
    "OnlineEncoder",
    "PixelFormatError",
    "PixelPreprocessor",
    "RandomProjectionEncoder",
    "TorchvisionEncoder",
    "WeightsFileError",
    "WeightsUnavailableError",
    "available_encoders",
    "load_state_dict_file",
    "make_encoder",
    "register_encoder",
    "synthetic_frames",
]
