"""RISE's dual stream around any feature extractor and Q-head, as a plain module and for TensorDicts.

:class:`RiseContextStream` composes a user's feature extractor (e.g. a CNN on the current frame
stack) and a user's head with RISE's context stream: an LSTM over the window of frozen embeddings,
projected to the feature size and fused with the features (sigmoid gate, concatenation or
addition). :class:`RiseContextModule` is its :class:`~tensordict.nn.TensorDictModule` for TorchRL
pipelines (``pixels``, ``rise_context``, ``rise_context_mask`` -> ``action_value``).
:func:`~torchrl_rise.modules.make_q_network` builds its ``rise`` network from the same class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import nn

from torchrl_rise import keys
from torchrl_rise.modules.context import (
    FUSION_MODES,
    ContextLSTM,
    StreamFusion,
    resolve_fusion_init,
)

__all__ = ["RiseContextModule", "RiseContextStream"]


def _feature_shape(feature_extractor: nn.Module, feature_shape: int | Sequence[int] | None):
    if feature_shape is None:
        size = getattr(feature_extractor, "out_features", None)
        if not isinstance(size, int):
            raise ValueError(
                f"cannot tell the output size of the feature extractor "
                f"{type(feature_extractor).__name__} (it has no integer `out_features`); pass "
                "feature_shape=F for [B, F] features or (C, h, w) for a feature map."
            )
        feature_shape = size
    shape = (int(feature_shape),) if isinstance(feature_shape, int) else tuple(feature_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"feature_shape must be positive sizes, got {feature_shape!r}.")
    return tuple(int(s) for s in shape)


class RiseContextStream(nn.Module):
    """A feature extractor and a Q-head with RISE's context stream fused in between.

    ``forward(pixels, context, mask, *head_args)`` computes ``f = feature_extractor(pixels)``,
    ``c = context_module(context, mask)`` (by default :class:`ContextLSTM`: an LSTM from a zero
    state over the window's valid suffix, then a linear layer to the size of ``f``), fuses them
    (``gate``: ``f * sigmoid(c)``, RISE; ``concat``: ``[f, c]``; ``add``: ``f + c``) and returns
    ``head(fused, *head_args)``. The wrapped modules see one flat batch dim; the inputs may have
    any leading batch dims (those of ``context`` ``[..., K, D]``, including none), which are
    restored on the output.

    The window follows the contract of :class:`~torchrl_rise.transforms.RiseContextTransform`
    and :class:`~torchrl_rise.replay.RiseReplayBuffer`: ``[K, D]`` oldest first, valid entries a
    suffix marked by the ``[K]`` bool mask. The frozen encoder is not part of the module: the
    embeddings arrive as data, so no gradient reaches it.

    Args:
        feature_extractor: ``[B, *obs]`` -> ``[B, *feature_shape]`` (``[B, F]`` after pooling, or a
            ``[B, C, h, w]`` map; a map is fused element-wise, or along channels for concat).
        head: ``(fused [B, *fused_shape], *head_args)`` -> output ``[B, ...]``. With
            ``fusion="concat"`` it reads twice the features of the first feature dim (see
            :attr:`fused_shape`).

    Keyword Args:
        embedding_dim: size ``D`` of the frozen embeddings (needed unless ``context_module`` is
            given).
        feature_shape: shape of the extractor's output without the batch dim; ``None`` reads
            ``feature_extractor.out_features`` (flat features).
        lstm_hidden: hidden size of the default :class:`ContextLSTM`.
        fusion: ``"gate"`` (default), ``"concat"`` or ``"add"``.
        context_module: a prebuilt ``(window [B, K, D], mask [B, K]) -> [B, prod(feature_shape)]``
            module to use instead of the default :class:`ContextLSTM`.
        return_gate: ``forward`` returns ``(output, gate)`` with the flattened gate ``[..., F]``
            (gate fusion only) for :func:`~torchrl_rise.modules.gate_statistics`.
        fusion_init: how the fusion starts: ``"identity"`` (the fused features start equal to
            the CNN's: gate exactly 1, a zero context term for ``add``/``concat``) or
            ``"paper"`` (a plain sigmoid gate, PyTorch's default initialisation); see
            :func:`~torchrl_rise.modules.context.resolve_fusion_init`. With a prebuilt
            ``context_module`` it sets only the gate's scale: initialise the module yourself.
        gate_bias_init: overrides ``fusion_init``'s initial bias of the default
            :class:`ContextLSTM`'s output projection (gate fusion only).
        context_proj_zero_init: overrides whether that projection's weight starts at zero.
        mute_context: the ablation "context stream off": the gate is held at 1 (the context term
            is zero for ``concat``/``add``) and the context module is not run
            (:class:`StreamFusion`).
        gate_scale: overrides ``fusion_init``'s gate scale: the gate is
            ``gate_scale * sigmoid(c)`` (gate fusion only; see :class:`StreamFusion`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> cnn = nn.Sequential(nn.Conv2d(4, 8, 8, stride=4), nn.ReLU(), nn.Flatten())  # 84 -> 20
        >>> q = RiseContextStream(cnn, nn.Linear(8 * 20 * 20, 6), embedding_dim=32,
        ...                       feature_shape=8 * 20 * 20, lstm_hidden=16)
        >>> pixels = torch.rand(5, 4, 84, 84)
        >>> window, mask = torch.randn(5, 10, 32), torch.ones(5, 10, dtype=torch.bool)
        >>> q(pixels, window, mask).shape
        torch.Size([5, 6])
        >>> q(pixels[0], window[0], mask[0]).shape  # no batch dim: one env acting
        torch.Size([6])
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        head: nn.Module,
        *,
        embedding_dim: int | None = None,
        feature_shape: int | Sequence[int] | None = None,
        lstm_hidden: int = 256,
        fusion: str = "gate",
        context_module: nn.Module | None = None,
        return_gate: bool = False,
        fusion_init: str = "identity",
        gate_bias_init: float | None = None,
        context_proj_zero_init: bool | None = None,
        mute_context: bool = False,
        gate_scale: float | None = None,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
        start = resolve_fusion_init(
            fusion_init,
            fusion=fusion,
            gate_scale=gate_scale,
            gate_bias_init=gate_bias_init,
            context_proj_zero_init=context_proj_zero_init,
        )
        if (gate_bias_init is not None or context_proj_zero_init) and context_module is not None:
            raise ValueError(
                "gate_bias_init and context_proj_zero_init initialise the default ContextLSTM; "
                "with a prebuilt context_module, initialise its output projection yourself."
            )
        if not isinstance(feature_extractor, nn.Module) or not isinstance(head, nn.Module):
            raise TypeError(
                "feature_extractor and head must be torch.nn.Module instances, got "
                f"{type(feature_extractor).__name__} and {type(head).__name__}."
            )
        shape = _feature_shape(feature_extractor, feature_shape)
        if context_module is None:
            if embedding_dim is None:
                raise ValueError(
                    "pass embedding_dim (the frozen encoder's output size D, e.g. "
                    "encoder.embedding_dim) or a prebuilt context_module."
                )
            context_module = ContextLSTM(
                embedding_dim,
                hidden=lstm_hidden,
                out_features=math.prod(shape),
                out_bias=start.proj_bias,
                zero_weight=start.proj_zero_weight,
            )
        # registration order = parameter order: features, context, head (optimizer states)
        self.feature_extractor = feature_extractor
        self.context = context_module
        self.fusion = StreamFusion(
            fusion, shape, mute_context=mute_context, gate_scale=start.gate_scale
        )
        self.head = head
        self.feature_shape = shape
        self.return_gate = bool(return_gate) and fusion == "gate"

    @property
    def fusion_mode(self) -> str:
        """``"gate"``, ``"concat"`` or ``"add"``."""
        return self.fusion.mode

    @property
    def fused_shape(self) -> tuple[int, ...]:
        """Shape of what the head reads (the first feature dim doubles for ``concat``)."""
        first, *rest = self.feature_shape
        return (first * self.fusion.out_channels_factor, *rest)

    def fuse(
        self, features: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse flat-batch features ``[B, *feature_shape]`` with the window ``[B, K, D]``.

        Returns:
            the fused features and the gate (``None`` unless ``fusion="gate"``).
        """
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"the feature extractor returned {tuple(features.shape)}, but the stream was built "
                f"for features [B, {', '.join(map(str, self.feature_shape))}]; pass the "
                "extractor's output shape as feature_shape."
            )
        if self.fusion.mute_context:
            return self.fusion(features, None)
        return self.fusion(features, self.context(context, mask))

    def forward(
        self, pixels: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, *head_args: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if context.dim() < 2:
            raise ValueError(
                f"the context window must be [..., K, D], got shape {tuple(context.shape)}."
            )
        batch = context.shape[:-2]
        if tuple(mask.shape) != tuple(context.shape[:-1]):
            raise ValueError(
                f"rise_context_mask shape {tuple(mask.shape)} does not match rise_context "
                f"{tuple(context.shape)} (expected [..., K] for a [..., K, D] window)."
            )
        if tuple(pixels.shape[: len(batch)]) != tuple(batch):
            raise ValueError(
                f"the observation {tuple(pixels.shape)} and the context window "
                f"{tuple(context.shape)} must share their leading batch dims {tuple(batch)}."
            )

        def flat(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and tuple(x.shape[: len(batch)]) == tuple(batch):
                return x.reshape(-1, *x.shape[len(batch) :])
            return x

        fused, gate = self.fuse(self.feature_extractor(flat(pixels)), flat(context), flat(mask))
        out = self.head(fused, *(flat(a) for a in head_args))
        out = out.reshape(*batch, *out.shape[1:])
        if self.return_gate:
            return out, gate.reshape(*batch, -1)
        return out


class RiseContextModule(TensorDictModule):
    """A :class:`RiseContextStream` as a TensorDict module for TorchRL pipelines.

    Reads ``pixels``, ``rise_context`` and ``rise_context_mask`` (plus any further ``in_keys``,
    passed to the head) and writes ``action_value`` (and ``rise_gate`` when the stream has
    ``return_gate=True``), so it drops into :class:`~torchrl.modules.QValueActor` and TorchRL's
    value losses (:class:`~torchrl.objectives.DQNLoss`, ...), with
    :class:`~torchrl_rise.transforms.RiseContextTransform` on the env for acting.

    Args:
        stream: the :class:`RiseContextStream`.

    Keyword Args:
        in_keys: observation, window and mask keys, then the head's extra inputs, if any.
        out_keys: the output key (then the gate key with ``return_gate=True``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torch import nn
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import QValueActor
        >>> stream = RiseContextStream(nn.Flatten(), nn.Linear(16, 3), embedding_dim=8,
        ...                            feature_shape=16, lstm_hidden=8)
        >>> actor = QValueActor(RiseContextModule(stream), spec=Categorical(3))
        >>> td = TensorDict({"pixels": torch.rand(2, 1, 4, 4),
        ...                  "rise_context": torch.randn(2, 5, 8),
        ...                  "rise_context_mask": torch.ones(2, 5, dtype=torch.bool)}, [2])
        >>> actor(td)["action_value"].shape, td["action"].shape
        (torch.Size([2, 3]), torch.Size([2]))
    """

    def __init__(
        self,
        stream: RiseContextStream,
        *,
        in_keys: Sequence[NestedKey] = (keys.PIXELS, keys.CONTEXT, keys.CONTEXT_MASK),
        out_keys: Sequence[NestedKey] | None = None,
    ) -> None:
        if not isinstance(stream, RiseContextStream):
            raise TypeError(
                f"RiseContextModule wraps a RiseContextStream, got {type(stream).__name__}; "
                "use tensordict.nn.TensorDictModule for other modules."
            )
        in_keys = list(in_keys)
        if len(in_keys) < 3:
            raise ValueError(
                "in_keys must name the observation, the context window and its mask (in that "
                f"order, then any extra head inputs), got {in_keys}."
            )
        if out_keys is None:
            out_keys = [keys.ACTION_VALUE] + ([keys.GATE] if stream.return_gate else [])
        out_keys = list(out_keys)
        want = 2 if stream.return_gate else 1
        if len(out_keys) != want:
            raise ValueError(
                f"the stream returns {want} output(s) (return_gate={stream.return_gate}), so "
                f"out_keys needs {want} key(s); got {out_keys}."
            )
        super().__init__(stream, in_keys=in_keys, out_keys=out_keys)
