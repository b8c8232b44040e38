"""Faster frozen CNNs through PyTorch's own tooling: BatchNorm folding, channels-last, bfloat16, and
int8 static post-training quantisation (``torch.ao.quantization``, FX graph mode).

``make_encoder("resnet18", precision=..., fuse=...)`` applies these to the torchvision backbone
after its weights are loaded, so every weights path (``imagenet``, ``auto``, a state-dict file,
``random``) works with every variant:

- ``precision="fp32"`` (default): the network as torchvision defines it.
- ``fuse=True`` (fp32/bf16): BatchNorm folded into the convolutions (``torch.fx`` fusion) and the
  channels-last memory format, same maths up to float rounding.
- ``precision="bf16"``: weights and activations in bfloat16 (for GPUs, and CPUs with AMX/AVX512-BF16).
- ``precision="int8"``: static post-training quantisation for CPU (x86/fbgemm kernels; qnnpack on
  ARM), activations calibrated on frames the caller gives (``calibration_frames``) or on seeded
  synthetic Atari-like frames (:func:`synthetic_frames`). CPU only.

``benchmarks/bench_encoders.py`` measures their speed and their embedding drift against fp32.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchrl_rise.encoders.base import PixelPreprocessor

__all__ = ["PRECISIONS", "optimize_backbone", "quantized_engine", "synthetic_frames"]

logger = logging.getLogger(__name__)

#: the ``precision`` values :func:`optimize_backbone` (and ``make_encoder``) accept
PRECISIONS = ("fp32", "bf16", "int8")


def synthetic_frames(
    n: int,
    *,
    channels: int = 1,
    size: int | Sequence[int] = 84,
    seed: int = 0,
) -> torch.Tensor:
    """Seeded Atari-like uint8 frames ``[n, channels, H, W]``, e.g. to calibrate an int8 encoder.

    Each frame is a flat background of a random grey level with a few axis-aligned rectangles of
    other levels (paddles, blocks, a ball, a score band): large uniform areas and sharp edges, as
    in ALE frames, unlike uniform noise. The global RNG is left alone.

    Example:
        >>> frames = synthetic_frames(4, size=84, seed=0)
        >>> frames.shape, frames.dtype
        (torch.Size([4, 1, 84, 84]), torch.uint8)
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    g = torch.Generator().manual_seed(seed)

    def rand(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (), generator=g))

    frames = torch.empty(n, channels, h, w, dtype=torch.uint8)
    for i in range(n):
        frame = frames[i]
        frame[:] = torch.randint(0, 160, (channels, 1, 1), dtype=torch.uint8, generator=g)
        for _ in range(rand(2, 9)):
            top, left = rand(0, h), rand(0, w)
            height, width = rand(1, max(2, h // 3)), rand(1, max(2, w // 3))
            level = torch.randint(0, 256, (channels, 1, 1), dtype=torch.uint8, generator=g)
            frame[:, top : top + height, left : left + width] = level
    return frames


def quantized_engine() -> str:
    """The quantised-kernel backend int8 encoders use here: ``x86`` (or ``fbgemm``) on x86 CPUs,
    ``qnnpack`` on ARM; ``RuntimeError`` when this PyTorch build has none."""
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            return engine
    raise RuntimeError(
        f"this PyTorch build has no int8 CPU backend (supported engines: {engines}); use "
        "precision='fp32' or 'bf16'."
    )


def _fx_fuse(model: nn.Module, *, arch: str) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval(), inplace=False)
    except Exception as err:  # torch.fx cannot trace the model
        raise RuntimeError(
            f"could not fold {arch}'s BatchNorm layers with torch.fx ({type(err).__name__}: "
            f"{err}); use fuse=False."
        ) from err


def _quantize_int8(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    arch: str,
    engine: str,
    batch_size: int = 32,
) -> nn.Module:
    """FX graph-mode static post-training quantisation, activations observed on ``calibration``
    (preprocessed float images ``[N, 3, h, w]``)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization's FX flow warns that it is deprecated in favour of torchao;
            # it is still PyTorch's own int8 CPU path and what this encoder needs
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                prepared = prepare_fx(
                    copy.deepcopy(model).eval(),
                    get_default_qconfig_mapping(engine),
                    example_inputs=(calibration[:1],),
                )
            except Exception as err:  # torch.fx cannot trace the model
                raise RuntimeError(
                    f"could not quantise {arch} with torch.ao.quantization FX graph mode "
                    f"({type(err).__name__}: {err}); use precision='fp32'."
                ) from err
            with torch.no_grad():
                for start in range(0, calibration.shape[0], batch_size):
                    prepared(calibration[start : start + batch_size])
            quantized = convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous
    return quantized.eval()


def optimize_backbone(
    model: nn.Module,
    *,
    arch: str,
    precision: str = "fp32",
    fuse: bool = False,
    preprocessor: PixelPreprocessor,
    calibration_frames: torch.Tensor | None = None,
    calibration_size: int = 128,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Turn a loaded fp32 backbone into the requested variant.

    Args:
        model: the backbone in eval mode, weights loaded, on CPU.
        arch: its name, for messages.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        fuse: fold BatchNorm into the convolutions and use channels-last (fp32/bf16; int8 always
            folds BatchNorm as part of quantisation).
        preprocessor: the encoder's input preprocessing (int8 calibration runs frames through it).
        calibration_frames: int8 only: uint8 (or ``[0, 1]`` float) observations in the encoder's
            input layout (``[..., S*C, H, W]`` or channels-last), e.g. a few hundred frames of the
            target env; ``None`` uses ``calibration_size`` :func:`synthetic_frames`.
        calibration_size: number of synthetic calibration frames.
        seed: seed of the synthetic calibration frames.

    Returns:
        ``(module, description)``: the module to run and what to record about it
        (``precision``, ``fuse``, and for int8 the kernel backend and calibration data).
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}."
        )
    if calibration_frames is not None and precision != "int8":
        raise ValueError(
            "calibration_frames calibrates an int8 encoder; pass precision='int8' or drop them."
        )
    description: dict[str, Any] = {"precision": precision, "fuse": bool(fuse)}
    if precision == "int8":
        engine = quantized_engine()
        if calibration_frames is None:
            if not isinstance(calibration_size, int) or calibration_size < 1:
                raise ValueError(
                    f"calibration_size must be a positive int, got {calibration_size!r}."
                )
            frames = synthetic_frames(
                calibration_size,
                channels=preprocessor.frame_channels,
                size=preprocessor.resize or 84,
                seed=seed,
            )
            images = preprocessor.convert_frames(frames)
            source = f"synthetic({calibration_size}, seed={seed})"
        else:
            if not isinstance(calibration_frames, torch.Tensor) or calibration_frames.ndim < 3:
                raise ValueError(
                    "calibration_frames must be a tensor of observations [..., S*C, H, W] (as the "
                    "encoder receives them)."
                )
            flat = calibration_frames.reshape(-1, *calibration_frames.shape[-3:]).cpu()
            images = preprocessor(flat)
            source = f"given({flat.shape[0]} frames)"
        model = _quantize_int8(model, images, arch=arch, engine=engine)
        description.update(fuse=True, quantized_engine=engine, calibration=source)
        logger.info("%s quantised to int8 (%s kernels, calibration %s)", arch, engine, source)
        return model, description
    if fuse:
        model = _fx_fuse(model, arch=arch).to(memory_format=torch.channels_last)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return model, description
