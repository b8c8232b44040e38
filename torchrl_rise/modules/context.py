"""RISE's context stream: an LSTM over the window of frozen embeddings, and its fusion with the CNN."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FUSION_INITS",
    "FUSION_MODES",
    "ContextLSTM",
    "FusionInit",
    "StreamFusion",
    "left_align_window",
    "resolve_fusion_init",
]

FUSION_MODES = ("gate", "concat", "add")
FUSION_INITS = ("identity", "paper")


@dataclass(frozen=True)
class FusionInit:
    """How the context stream's fusion starts: the gate's scale and the projection's init."""

    gate_scale: float
    proj_bias: float | None
    proj_zero_weight: bool


def resolve_fusion_init(
    fusion_init: str,
    *,
    fusion: str,
    gate_scale: float | None = None,
    gate_bias_init: float | None = None,
    context_proj_zero_init: bool | None = None,
) -> FusionInit:
    """The fusion's start from ``fusion_init``, with any of its three settings given explicitly.

    - ``"identity"`` (the default): the context projection's weight and bias start at zero and
      the gate is ``2 * sigmoid(c)``, so the fused features start equal to the CNN's (gate
      exactly 1; a zero context term for ``add``/``concat``): the network starts as BTR's, and
      the gate's slope there is the sigmoid's steepest, so the stream learns from the first
      update (docs/results.md, "Ablations").
    - ``"paper"``: the RISE paper's gate as far as it is specified, a plain sigmoid
      (``gate_scale=1``) after a projection with PyTorch's default initialisation (the gate
      starts near 0.5).

    Example:
        >>> resolve_fusion_init("identity", fusion="gate")
        FusionInit(gate_scale=2.0, proj_bias=0.0, proj_zero_weight=True)
        >>> resolve_fusion_init("paper", fusion="gate", gate_bias_init=3.0).proj_bias
        3.0
    """
    if fusion_init not in FUSION_INITS:
        raise ValueError(f"fusion_init must be one of {FUSION_INITS}, got {fusion_init!r}.")
    check_gate_bias_init(gate_bias_init, fusion)
    if gate_scale is not None:
        check_gate_scale(gate_scale, fusion)
    identity = fusion_init == "identity"
    if gate_scale is None:
        gate_scale = 2.0 if identity and fusion == "gate" else 1.0
    if gate_bias_init is None and identity:
        gate_bias_init = 0.0
    if context_proj_zero_init is None:
        context_proj_zero_init = identity
    return FusionInit(float(gate_scale), gate_bias_init, bool(context_proj_zero_init))


def check_gate_bias_init(gate_bias_init: float | None, fusion: str) -> None:
    """Refuse a gate initialisation the fusion has no gate for, or one that is not finite."""
    if gate_bias_init is None:
        return
    if fusion != "gate":
        raise ValueError(
            f"gate_bias_init={gate_bias_init!r} sets where the sigmoid gate starts, but "
            f"fusion={fusion!r} has no gate; drop gate_bias_init or use fusion='gate'."
        )
    if not math.isfinite(float(gate_bias_init)):
        raise ValueError(f"gate_bias_init must be a finite number, got {gate_bias_init!r}.")


def check_gate_scale(gate_scale: float, fusion: str) -> None:
    """Refuse a gate scale that is not a positive finite number, or one without a gate."""
    if not (math.isfinite(float(gate_scale)) and float(gate_scale) > 0):
        raise ValueError(f"gate_scale must be a positive finite number, got {gate_scale!r}.")
    if float(gate_scale) != 1.0 and fusion != "gate":
        raise ValueError(
            f"gate_scale={gate_scale!r} scales the sigmoid gate, but fusion={fusion!r} has no "
            "gate; drop gate_scale or use fusion='gate'."
        )


def left_align_window(
    window: torch.Tensor, mask: torch.Tensor, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll each window so its valid suffix starts at position 0.

    Args:
        window: ``[B, K, D]`` entries, oldest first, valid entries a suffix.
        mask: ``[B, K]`` bool validity.

    Keyword Args:
        check: raise if some row's valid entries are not a suffix. The check reads the mask on
            the host, so it runs on CPU tensors only (on an accelerator it would cost a device
            sync per forward pass, and a graph break under ``torch.compile``).

    Returns:
        the rolled window ``[B, K, D]`` (valid entries first) and the valid lengths ``[B]``.

    Example:
        >>> import torch
        >>> w = torch.arange(3.0).view(1, 3, 1)
        >>> rolled, lengths = left_align_window(w, torch.tensor([[False, True, True]]))
        >>> rolled.flatten().tolist(), lengths.tolist()
        ([1.0, 2.0, 0.0], [2])
    """
    k = window.shape[-2]
    lengths = mask.sum(-1)
    positions = torch.arange(k, device=mask.device)
    if check and mask.device.type == "cpu" and not torch.compiler.is_compiling():
        expected = positions >= (k - lengths).unsqueeze(-1)
        if not torch.equal(expected, mask):
            raise ValueError(
                "rise_context_mask must mark a suffix of each window as valid (the last "
                "len entries, oldest first); got a mask with gaps or a valid prefix. Build the "
                "window with RiseContextTransform / RiseReplayBuffer, or pass windows oldest first."
            )
    index = (positions + (k - lengths).unsqueeze(-1)) % k
    rolled = window.gather(-2, index.unsqueeze(-1).expand(*index.shape, window.shape[-1]))
    return rolled, lengths


class ContextLSTM(nn.Module):
    """An LSTM run from a zero state over the valid suffix of a window of embeddings.

    Invalid (padding) entries never enter the recurrence: each window is rolled so its valid suffix
    comes first, the LSTM runs over the window, and the output after the last valid entry is
    taken -- exactly the state a zero-initialised LSTM reaches after reading only the valid
    embeddings. A window with no valid entry gives a zero output. The output is brought to
    ``out_features`` by a linear layer (no activation; the fusion applies one where it needs it).

    Args:
        embedding_dim: size ``D`` of the stored embeddings.
        hidden: LSTM hidden size.
        out_features: size of the projected output.
        out_bias: initial value of every bias of the output projection; ``None`` keeps PyTorch's
            default initialisation. Under the gate fusion it sets where the gate starts:
            ``sigmoid(out_bias)`` (e.g. 3.0 starts the gate near 0.95, so the network starts close
            to BTR's and closes channels only as the context earns it).
        zero_weight: start the output projection's weight at zero, so the projected output starts
            constant (``out_bias``) whatever the untrained LSTM reads, while its gradient (the
            LSTM state) still reaches the projection from the first update on.

    Example:
        >>> import torch
        >>> lstm = ContextLSTM(8, hidden=16, out_features=4)
        >>> window = torch.randn(2, 5, 8)
        >>> mask = torch.tensor([[True] * 5, [False, False, True, True, True]])
        >>> lstm(window, mask).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        embedding_dim: int,
        *,
        hidden: int,
        out_features: int,
        out_bias: float | None = None,
        zero_weight: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or hidden < 1 or out_features < 1:
            raise ValueError(
                f"embedding_dim, hidden and out_features must be >= 1, got {embedding_dim}, "
                f"{hidden}, {out_features}."
            )
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, out_features)
        if out_bias is not None:
            # after the default init, so the weights drawn from the RNG are those without it
            nn.init.constant_(self.proj.bias, float(out_bias))
        if zero_weight:
            nn.init.zeros_(self.proj.weight)
        self.embedding_dim = embedding_dim
        self.hidden = hidden

    def recurrent_output(self, window: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, K, D]`` window + ``[B, K]`` mask -> LSTM state after the valid suffix ``[B, hidden]``."""
        if window.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"rise_context has embedding size {window.shape[-1]} but the network was built "
                f"with embedding_dim={self.embedding_dim}; pass the frozen encoder's output size."
            )
        if mask.shape != window.shape[:-1]:
            raise ValueError(
                f"rise_context_mask shape {tuple(mask.shape)} does not match rise_context "
                f"{tuple(window.shape)} (expected [..., K] for a [..., K, D] window)."
            )
        mask = mask.bool()
        rolled, lengths = left_align_window(window, mask)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        out, _ = self.lstm(rolled.to(dtype or self.proj.weight.dtype))
        last = (lengths - 1).clamp_min(0)
        h = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)
        return h * (lengths > 0).unsqueeze(-1).to(h.dtype)

    def forward(self, window: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.recurrent_output(window, mask))


class StreamFusion(nn.Module):
    """Fuse CNN features with the projected context: ``gate``, ``concat`` or ``add``.

    ``gate`` (RISE): ``f * gate_scale * sigmoid(c)``; ``concat``: ``[f, c]`` along the channel/feature dim;
    ``add``: ``f + c``. ``feature_shape`` is the CNN tensor's shape after the batch dim (``[F]``
    after pooling or ``[C, h, w]`` before it); the context arrives flat and is reshaped to it.

    With ``mute_context=True`` the context never reaches the features: the gate is held at 1
    (``gate``), the context term is zero (``concat``, ``add``), and the context may be ``None``
    (callers skip computing it). It is an ablation: the RISE network and data path with the
    context stream switched off, which should learn as BTR does.

    ``gate_scale`` is 1 in the paper (a gate in ``(0, 1)`` that can only close channels). With 2
    and a context projection that starts at zero (``ContextLSTM(zero_weight=True)``, bias 0) the
    gate starts at exactly 1, so the network starts as BTR's, its slope there is the sigmoid's
    steepest (0.5), and the context can close a channel or open it up to twice
    (docs/network.md, "The gate").

    Args:
        mode: one of ``"gate"``, ``"concat"``, ``"add"``.
        feature_shape: shape of the CNN features (without batch dims).

    Keyword Args:
        mute_context: hold the fusion at its identity (see above).
        gate_scale: the gate is ``gate_scale * sigmoid(c)`` (gate fusion only). The gate it
            returns is ``sigmoid(c)`` before the scale, in ``[0, 1]``, so
            :func:`~torchrl_rise.modules.gate_statistics` reads saturation the same way.

    Example:
        >>> import torch
        >>> fuse = StreamFusion("gate", (6,))
        >>> fused, gate = fuse(torch.ones(2, 6), torch.zeros(2, 6))
        >>> fused[0, 0].item(), gate.shape
        (0.5, torch.Size([2, 6]))
    """

    def __init__(
        self,
        mode: str,
        feature_shape: Sequence[int],
        *,
        mute_context: bool = False,
        gate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {mode!r}.")
        check_gate_scale(gate_scale, mode)
        self.mode = mode
        self.gate_scale = float(gate_scale)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.mute_context = bool(mute_context)

    @property
    def out_channels_factor(self) -> int:
        """How many times the fused tensor's first feature dim is the CNN's (2 for concat)."""
        return 2 if self.mode == "concat" else 1

    def forward(
        self, features: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mute_context:
            return self._muted(features)
        if context is None:
            raise ValueError("the fusion needs the projected context (None is for mute_context).")
        context = context.reshape(context.shape[0], *self.feature_shape).to(features.dtype)
        if self.mode == "gate":
            gate = torch.sigmoid(context)
            if self.gate_scale != 1.0:
                return features * (gate * self.gate_scale), gate
            return features * gate, gate
        if self.mode == "concat":
            return torch.cat([features, context], dim=1), None
        return features + context, None

    def _muted(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "gate":
            return features, torch.ones_like(features)
        if self.mode == "concat":
            return torch.cat([features, torch.zeros_like(features)], dim=1), None
        return features, None
