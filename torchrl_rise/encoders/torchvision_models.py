"""ImageNet CNNs from torchvision as frozen encoders: ``resnet18`` (512-d) and ``efficientnet_b0``
(1280-d), penultimate layer (global average pool, classifier removed).

``weights`` chooses the parameters:

- ``"imagenet"``: torchvision's ImageNet-1k checkpoint, read from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``) or downloaded there; unavailable -> :class:`WeightsUnavailableError`.
- a path: a state-dict file (``torch.save(model.state_dict(), path)``), loaded with
  ``torch.load(weights_only=True)`` so nothing in it is executed; corrupt or mismatched ->
  :class:`WeightsFileError`.
- ``"random"``: torchvision's initialisation under ``torch.manual_seed(seed)`` (global RNG untouched),
  with BatchNorm statistics calibrated on seeded noise images so features keep unit scale.
- ``"auto"``: ImageNet when obtainable, else random with a loud warning.

The weights actually used are in ``encoder.weights_source`` (and ``describe()``).

``precision`` (``"fp32"`` default, ``"bf16"``, ``"int8"``) and ``fuse`` choose a faster variant of
the loaded network (see :mod:`torchrl_rise.encoders.optimize`); ``int8`` is for CPU collection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from torchrl_rise.encoders.base import FrozenEncoder, PixelPreprocessor, register_encoder
from torchrl_rise.encoders.optimize import PRECISIONS, optimize_backbone

__all__ = [
    "TorchvisionEncoder",
    "WeightsFileError",
    "WeightsUnavailableError",
    "load_state_dict_file",
]

logger = logging.getLogger(__name__)

# name -> (torchvision builder, weights enum, classifier attribute, embedding size)
_ARCHS: dict[str, tuple[str, str, str, int]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", "fc", 512),
    "efficientnet_b0": ("efficientnet_b0", "EfficientNet_B0_Weights", "classifier", 1280),
}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were asked for but are neither cached nor downloadable."""


class WeightsFileError(ValueError):
    """A weights file is corrupt, not a weights-only state dict, or does not fit the model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict saved with ``torch.save``, without executing anything in the file.

    Accepts a plain state dict or a checkpoint dict holding one under ``"state_dict"``; a
    ``"module."`` prefix (DataParallel) is stripped.

    Args:
        path: the file.

    Returns:
        ``(state_dict, sha256 hex digest of the file)``.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: the file is corrupt, holds objects other than tensors, or is not a
            mapping of parameter names to tensors.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
        >>> torch.save(torch.nn.Linear(2, 1).state_dict(), f)
        >>> sd, sha = load_state_dict_file(f)
        >>> sorted(sd), len(sha)
        (['bias', 'weight'], 64)
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist. Pass weights='imagenet', 'random', 'auto', or the "
            "path of a state dict saved with torch.save(model.state_dict(), path)."
        )
    digest = _sha256(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsFileError(
            f"could not load {path} as a weights-only state dict ({type(err).__name__}: "
            f"{reason[:300]}). The file is corrupt, or it pickles Python objects besides tensors "
            "(never executed here). Re-save it with torch.save(model.state_dict(), path)."
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsFileError(
            f"{path} does not hold a state dict (a mapping of parameter names to tensors) but a "
            f"{type(obj).__name__}. Save one with torch.save(model.state_dict(), path)."
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, digest


def _load_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, arch: str, head: str, source: str
) -> None:
    """Strictly load ``state`` (minus the classifier head) into ``model``, with a clear error."""
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    own = model.state_dict()
    # checkpoints saved before BatchNorm counted batches lack these; BatchNorm fills them in
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) (e.g. {'; '.join(mismatched[:3])})")
        raise WeightsFileError(
            f"{source} does not fit torchvision's {arch}: {', '.join(parts)}. Pass a state dict of "
            f"a torchvision {arch} (its '{head}.*' classifier keys may be present or not)."
        )
    model.load_state_dict(state, strict=False)


def _calibrate_batchnorm(model: nn.Module, *, seed: int) -> None:
    """Set BatchNorm running statistics from seeded Gaussian-noise images (random init only).

    With torchvision's default init and unit running variances, eval-mode activations shrink layer
    after layer (EfficientNet-B0's embeddings come out around 1e-14, zero once stored as float16).
    Statistics measured on noise keep every layer at unit scale, so random features stay usable.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    generator = torch.Generator().manual_seed(seed)
    model.eval()  # only BatchNorm in training mode: no stochastic depth, deterministic
    for m in norms:
        m.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64, generator=generator))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _hub_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _imagenet_state_dict(arch: str, *, timeout: float) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights from the hub cache, downloading them there first if possible."""
    import torchvision

    _, enum_name, _, _ = _ARCHS[arch]
    weights_enum = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    url = weights_enum.url
    cached = _hub_cache_path(url)
    if not cached.is_file():
        hash_prefix = torch.hub.HASH_REGEX.search(cached.name)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            logger.info("downloading %s to %s", url, cached)
            torch.hub.download_url_to_file(
                url,
                str(cached),
                hash_prefix=hash_prefix.group(1) if hash_prefix else None,
                progress=False,
            )
        except (URLError, OSError, RuntimeError) as err:  # offline, timeout, bad hash
            raise WeightsUnavailableError(
                f"ImageNet weights for {arch} ({enum_name}.IMAGENET1K_V1) are not available: they "
                f"are not in the torch hub cache ({cached}) and downloading {url} failed "
                f"({type(err).__name__}: {err}). Two ways out: (1) provide the weights: download "
                f"that URL where there is internet and copy the file to {cached} (or pass "
                f"weights='/path/to/{cached.name}'); (2) use weights='random' (a seeded, frozen "
                "random init) or weights='auto' (ImageNet when available, else random with a "
                "warning)."
            ) from err
        finally:
            socket.setdefaulttimeout(previous)
    state, digest = load_state_dict_file(cached)
    return state, f"imagenet:{enum_name}.IMAGENET1K_V1 (file:{cached}, sha256 {digest[:12]})"


class TorchvisionEncoder(FrozenEncoder):
    """A torchvision ImageNet CNN without its classifier, frozen.

    Build it with :func:`~torchrl_rise.encoders.make_encoder` (``"resnet18"`` or
    ``"efficientnet_b0"``).

    Example:
        >>> from torchrl_rise.encoders import make_encoder
        >>> enc = make_encoder("resnet18", weights="random", seed=0)
        >>> enc(torch.zeros(4, 84, 84, dtype=torch.uint8)).shape, enc.weights_source
        (torch.Size([512]), 'random(seed=0)')
    """

    def __init__(
        self,
        *,
        name: str,
        backbone: nn.Module,
        embedding_dim: int,
        weights_source: str,
        preprocessor: PixelPreprocessor,
        chunk_size: int | None = 1024,
        precision: str = "fp32",
        channels_last_memory: bool = False,
        quantized_engine: str | None = None,
    ) -> None:
        super().__init__(
            name=name,
            embedding_dim=embedding_dim,
            weights_source=weights_source,
            preprocessor=preprocessor,
            chunk_size=chunk_size,
        )
        self.backbone = backbone
        self.precision = precision
        self._input_dtype = torch.bfloat16 if precision == "bf16" else None
        self._memory_format = torch.channels_last if channels_last_memory else None
        self._quantized_engine = quantized_engine
        if quantized_engine is not None:
            # int8 kernels are CPU-only: the transform must not move this encoder to a GPU
            self.follows_data_device = False
        self.freeze()

    def __reduce_ex__(self, protocol: Any) -> Any:
        recipe = getattr(self, "_rebuild_recipe", None)
        if recipe is not None:  # int8: quantised FX modules do not pickle, rebuild instead
            return _rebuild_quantized, recipe
        return super().__reduce_ex__(protocol)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self._input_dtype is not None:
            images = images.to(self._input_dtype)
        if self._memory_format is not None:
            images = images.contiguous(memory_format=self._memory_format)
        if self._quantized_engine is not None:
            if images.device.type != "cpu":
                raise RuntimeError(
                    f"the int8 {self.name} encoder runs on CPU only, got images on "
                    f"{images.device}; use precision='fp32' or 'bf16' on a GPU."
                )
            if torch.backends.quantized.engine != self._quantized_engine:
                # the packed int8 weights belong to the backend they were quantised with
                torch.backends.quantized.engine = self._quantized_engine
        return self.backbone(images)


def _check_options(
    arch: str, *, frame_channels: int, frame_index: int, weights: Any, precision: str
) -> None:
    """Raise for frame, weights or precision options that ``arch`` cannot be built with."""
    if frame_channels not in (1, 3):
        raise ValueError(
            f"{arch} takes grayscale (frame_channels=1, replicated to RGB) or RGB "
            f"(frame_channels=3) frames, got frame_channels={frame_channels}."
        )
    if not isinstance(frame_index, int):
        raise TypeError(f"{arch} encodes one frame of the stack: frame_index must be an int.")
    if weights is None:
        raise ValueError(
            f"weights=None is ambiguous for {arch}: use 'auto', 'imagenet', 'random' or a path."
        )
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}."
        )
    if precision == "int8" and arch != "resnet18":
        raise ValueError(
            f"precision='int8' is offered for resnet18 only: {arch}'s depthwise and "
            "squeeze-excitation blocks drift far from fp32 under static int8 quantisation; use "
            "precision='fp32' (fuse=True for a faster CPU variant) or 'bf16'."
        )


def _load_weights(
    model: nn.Module, *, arch: str, head: str, requested: str, seed: int, timeout: float
) -> str:
    """Load the ``requested`` weights into ``model``; return where they came from.

    ``"imagenet"``/``"auto"`` load the ImageNet file (``"auto"`` falls back to the random init
    with a warning), a path loads that file, ``"random"`` keeps the seeded init; a random init
    gets its batch-norm statistics calibrated.
    """
    source = f"random(seed={seed})"
    loaded = False
    if requested in ("imagenet", "auto"):
        try:
            state, source = _imagenet_state_dict(arch, timeout=timeout)
            _load_into(
                model, state, arch=arch, head=head, source=f"the cached {arch} ImageNet file"
            )
            loaded = True
        except WeightsUnavailableError as err:
            if requested == "imagenet":
                raise
            message = (
                f"weights='auto': ImageNet weights for {arch} are unavailable, so the frozen "
                f"encoder uses RANDOM weights (seed={seed}); RISE's context stream will see random "
                f"features. Reason: {err}"
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=5)
    elif requested != "random":
        state, digest = load_state_dict_file(requested)
        path = Path(requested).expanduser().resolve()
        _load_into(model, state, arch=arch, head=head, source=f"weights file {path}")
        source = f"file:{path} (sha256 {digest[:12]})"
        loaded = True
    if not loaded:
        _calibrate_batchnorm(model, seed=seed)
    return source


def _build_torchvision(
    arch: str,
    *,
    weights: str | os.PathLike[str] = "auto",
    frame_channels: int = 1,
    frame_index: int = -1,
    channels_last: bool = False,
    resize: int | Sequence[int] | None = None,
    imagenet_normalize: bool | None = None,
    seed: int = 0,
    chunk_size: int | None = 1024,
    download_timeout: float = 10.0,
    precision: str = "fp32",
    fuse: bool = False,
    calibration_frames: torch.Tensor | None = None,
    calibration_size: int = 128,
) -> TorchvisionEncoder:
    import torchvision

    builder, _, head, _ = _ARCHS[arch]
    _check_options(
        arch,
        frame_channels=frame_channels,
        frame_index=frame_index,
        weights=weights,
        precision=precision,
    )
    requested = os.fspath(weights)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, builder)(weights=None)
    setattr(model, head, nn.Identity())
    source = _load_weights(
        model, arch=arch, head=head, requested=requested, seed=seed, timeout=download_timeout
    )

    preprocessor = PixelPreprocessor(
        frame_channels=frame_channels,
        frame_index=frame_index,
        channels_last=channels_last,
        to_rgb=frame_channels == 1,
        resize=resize,
        imagenet_normalize=True if imagenet_normalize is None else imagenet_normalize,
    )
    return _assemble(
        arch,
        model,
        weights_source=source,
        description={"requested_weights": requested, "seed": seed},
        preprocessor=preprocessor,
        chunk_size=chunk_size,
        precision=precision,
        fuse=fuse,
        calibration_frames=calibration_frames,
        calibration_size=calibration_size,
        seed=seed,
    )


def _assemble(
    arch: str,
    model: nn.Module,
    *,
    weights_source: str,
    description: dict[str, Any],
    preprocessor: PixelPreprocessor,
    chunk_size: int | None,
    precision: str,
    fuse: bool,
    calibration_frames: torch.Tensor | None,
    calibration_size: int,
    seed: int,
) -> TorchvisionEncoder:
    """The encoder around ``model`` (fp32, weights loaded), turned into the requested variant."""
    model.eval()
    recipe: dict[str, Any] | None = None
    if precision == "int8":
        # torch.ao's quantised FX modules do not pickle: keep what rebuilds the same int8 network
        # (the fp32 weights and the calibration data; quantisation is deterministic)
        recipe = dict(
            weights_source=weights_source,
            description=description,
            preprocessor=preprocessor,
            chunk_size=chunk_size,
            precision=precision,
            fuse=fuse,
            calibration_frames=None
            if calibration_frames is None
            else calibration_frames.detach().cpu().clone(),
            calibration_size=calibration_size,
            seed=seed,
        )
        recipe_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    backbone, variant = optimize_backbone(
        model,
        arch=arch,
        precision=precision,
        fuse=fuse,
        preprocessor=preprocessor,
        calibration_frames=calibration_frames,
        calibration_size=calibration_size,
        seed=seed,
    )
    encoder = TorchvisionEncoder(
        name=arch,
        backbone=backbone,
        embedding_dim=_ARCHS[arch][3],
        weights_source=weights_source,
        preprocessor=preprocessor,
        chunk_size=chunk_size,
        precision=precision,
        channels_last_memory=bool(fuse) and precision != "int8",
        quantized_engine=variant.get("quantized_engine"),
    )
    encoder._extra_description = {**description, **variant}
    if recipe is not None:
        encoder._rebuild_recipe = (arch, recipe_state, recipe)
    return encoder


def _rebuild_quantized(
    arch: str, state: dict[str, torch.Tensor], recipe: dict[str, Any]
) -> TorchvisionEncoder:
    """Unpickle an int8 encoder: quantise its fp32 weights again, with the same calibration."""
    import torchvision

    builder, _, head, _ = _ARCHS[arch]
    model = getattr(torchvision.models, builder)(weights=None)
    setattr(model, head, nn.Identity())
    model.load_state_dict(state)
    return _assemble(arch, model, **recipe)


@register_encoder("resnet18")
def make_resnet18(**options: Any) -> TorchvisionEncoder:
    """torchvision ResNet18 up to the global average pool: 512-d embeddings (the RISE default)."""
    return _build_torchvision("resnet18", **options)


@register_encoder("efficientnet_b0")
def make_efficientnet_b0(**options: Any) -> TorchvisionEncoder:
    """torchvision EfficientNet-B0 up to the global average pool: 1280-d embeddings."""
    return _build_torchvision("efficientnet_b0", **options)
