"""The RISE network family: ``rise`` (dual stream), ``btr`` (no context) and ``recurrent_baseline``.

All three are :class:`~tensordict.nn.TensorDictModuleBase` modules with an IMPALA CNN, a dueling
noisy IQN head, and TensorDict in/out. See ``docs/network.md`` for the options and their defaults.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import nn

from torchrl_rise import keys
from torchrl_rise.modules.context import FUSION_MODES, ContextLSTM, resolve_fusion_init
from torchrl_rise.modules.impala import ImpalaCNN
from torchrl_rise.modules.iqn import DuelingIQNHead
from torchrl_rise.modules.stream import RiseContextStream

__all__ = [
    "NETWORK_KINDS",
    "IQNNetworkBase",
    "RecurrentBaselineQNetwork",
    "RiseQNetwork",
    "make_q_network",
]

NETWORK_KINDS = ("rise", "btr", "recurrent_baseline")
GATE_POSITIONS = ("post_pool", "pre_pool")


class IQNNetworkBase(TensorDictModuleBase):
    """Shared parts of the family: the number of taus sampled per forward and the out keys.

    ``num_taus`` may be changed at any time (e.g. fewer taus for acting); :meth:`taus_override`
    changes it for a ``with`` block (the loss uses it for its target taus).
    """

    is_sequence_model: bool = False

    def __init__(self, *, num_taus: int) -> None:
        super().__init__()
        self.num_taus = num_taus

    @property
    def num_taus(self) -> int:
        return self._num_taus

    @num_taus.setter
    def num_taus(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"num_taus must be >= 1, got {value}.")
        self._num_taus = int(value)

    @contextlib.contextmanager
    def taus_override(self, num_taus: int) -> Iterator[None]:
        """Sample ``num_taus`` taus per forward inside the block."""
        previous = self.num_taus
        self.num_taus = num_taus
        try:
            yield
        finally:
            self.num_taus = previous

    def _sample_taus(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.rand(batch, self.num_taus, device=device)

    def _write(
        self,
        td: TensorDictBase,
        batch_shape: torch.Size,
        quantiles: torch.Tensor,
        taus: torch.Tensor,
    ) -> None:
        quantiles = quantiles.float()
        td.set(self.quantiles_key, quantiles.reshape(*batch_shape, *quantiles.shape[1:]))
        td.set(self.taus_key, taus.reshape(*batch_shape, taus.shape[-1]))
        td.set(
            self.action_value_key,
            quantiles.mean(-2).reshape(*batch_shape, quantiles.shape[-1]),
        )


def _check_context_options(*, fusion: str, gate_position: str, context_length: int | None) -> None:
    """Refuse context-stream options that mean nothing."""
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}.")
    if gate_position not in GATE_POSITIONS:
        raise ValueError(f"gate_position must be one of {GATE_POSITIONS}, got {gate_position!r}.")
    if context_length is not None and context_length < 1:
        raise ValueError(f"context_length must be >= 1 or None, got {context_length}.")


class RiseQNetwork(IQNNetworkBase):
    """IMPALA CNN on the current frame stack, optionally fused with an LSTM over the context window.

    With ``use_context=True`` (the ``rise`` configuration) the network reads ``pixels``,
    ``rise_context`` ``[K, D]`` and ``rise_context_mask`` ``[K]``; the LSTM runs from a zero state
    over the window's valid suffix and a linear layer brings its output to the CNN feature size,
    which is fused with the CNN features by a sigmoid gate (default), concatenation or addition,
    after the 6x6 pool (default) or before it. With ``use_context=False`` it is BTR's network.

    The ``rise`` configuration is a :class:`~torchrl_rise.modules.RiseContextStream` (``stream``)
    around the IMPALA CNN and the IQN head; ``net.cnn``, ``net.context``, ``net.fusion`` and
    ``net.head`` are its parts, registered on the network itself (``context`` and ``fusion`` are
    ``None`` for ``btr``).

    Outputs ``quantiles`` ``[N, A]``, ``taus`` ``[N]``, ``action_value`` ``[A]`` (mean over the
    taus) and, for the gate fusion with ``emit_gate=True``, ``rise_gate`` (the flattened gate).
    Any leading batch dims are accepted, including none (one env acting).

    Keyword Args:
        num_actions: number of discrete actions.
        in_channels: channels of ``pixels`` (``S * C``: stacked frames x channels per frame).
        frame_size: ``(H, W)`` of ``pixels``.
        use_context: the ``rise`` network (``True``) or BTR's (``False``: every option of the
            context stream below is then unused).
        embedding_dim: size ``D`` of the frozen embeddings in ``rise_context`` (ResNet18: 512).
        context_length: if set, the window length ``K`` the network accepts (checked per call,
            so acting and learning cannot silently use different windows); ``None`` accepts any.
        width_scale: IMPALA channel multiplier (BTR: 2).
        spectral_norm: spectral norm on the residual convs (BTR: True).
        layer_norm: LayerNorm after each CNN stage stem and between the dense layers.
        pool_size: adaptive max-pool side (BTR: 6 -> 2304 features).
        lstm_hidden: the context LSTM's hidden size (256: the learner benchmark's sweet spot,
            rise/btr 1.23 per update at K=80 on CPU against 1.5 at 512).
        fusion: ``"gate"`` (sigmoid gate, RISE), ``"concat"`` or ``"add"``.
        gate_position: ``"post_pool"`` (fuse the 2304 pooled features) or ``"pre_pool"`` (the
            ``[C, h, w]`` map before the adaptive max-pool).
        fusion_init: how the fusion starts. ``"identity"`` (default): the context
            projection starts at zero and the gate is ``2 * sigmoid(c)``, so the network starts
            as BTR's exactly (gate 1) and the stream gets the sigmoid's steepest gradient;
            ``"paper"``: the paper's plain sigmoid gate after a projection with PyTorch's default
            initialisation (gate near 0.5 at the start). docs/network.md, "The gate", and
            docs/results.md, "Ablations", say why the default differs from the paper.
        gate_bias_init: overrides the initial bias of the context projection (gate fusion
            only): the gate starts at ``gate_scale * sigmoid(gate_bias_init)``.
        context_proj_zero_init: overrides whether the context projection's weight starts at
            zero (the fused context term then starts constant, while gradients still reach the
            stream).
        mute_context: an ablation: the context stream switched off (gate held at 1, or a zero
            context term for ``concat``/``add``) on the unchanged rise network and data path.
        gate_scale: overrides the gate's scale: the gate is ``gate_scale * sigmoid(c)`` (gate
            fusion only).
        num_taus: taus sampled per forward (settable later through ``net.num_taus``).
        num_cosines: cosine features of the tau embedding.
        mlp_hidden: width of the dueling head's dense layers (BTR: 512).
        noisy: factorised noisy layers in the head.
        noisy_sigma0: initial noise scale (BTR: 0.5).
        dueling: dueling value/advantage streams.
        emit_gate: write ``rise_gate`` (gate fusion only) for :func:`gate_statistics`.
        pixels_key, context_key, context_mask_key, quantiles_key, taus_key, action_value_key,
            gate_key: the TensorDict keys it reads and writes.

    :func:`make_q_network` builds it by name (``"rise"``, ``"btr"``).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> net = make_q_network("rise", num_actions=6, in_channels=4, embedding_dim=32,
        ...                      lstm_hidden=16, width_scale=1, mlp_hidden=64)
        >>> td = TensorDict({"pixels": torch.zeros(2, 4, 84, 84, dtype=torch.uint8),
        ...                  "rise_context": torch.randn(2, 5, 32).half(),
        ...                  "rise_context_mask": torch.ones(2, 5, dtype=torch.bool)}, [2])
        >>> net(td)["quantiles"].shape, td["action_value"].shape, td["rise_gate"].shape
        (torch.Size([2, 8, 6]), torch.Size([2, 6]), torch.Size([2, 1152]))
    """

    def __init__(
        self,
        *,
        num_actions: int,
        in_channels: int,
        frame_size: Sequence[int] = (84, 84),
        use_context: bool = True,
        embedding_dim: int = 512,
        context_length: int | None = None,
        width_scale: float = 2,
        spectral_norm: bool = True,
        layer_norm: bool = False,
        pool_size: int = 6,
        lstm_hidden: int = 256,
        fusion: str = "gate",
        gate_position: str = "post_pool",
        fusion_init: str = "identity",
        gate_bias_init: float | None = None,
        context_proj_zero_init: bool | None = None,
        mute_context: bool = False,
        gate_scale: float | None = None,
        num_taus: int = 8,
        num_cosines: int = 64,
        mlp_hidden: int = 512,
        noisy: bool = True,
        noisy_sigma0: float = 0.5,
        dueling: bool = True,
        emit_gate: bool = True,
        pixels_key: NestedKey = keys.PIXELS,
        context_key: NestedKey = keys.CONTEXT,
        context_mask_key: NestedKey = keys.CONTEXT_MASK,
        quantiles_key: NestedKey = keys.QUANTILES,
        taus_key: NestedKey = keys.TAUS,
        action_value_key: NestedKey = keys.ACTION_VALUE,
        gate_key: NestedKey = keys.GATE,
    ) -> None:
        super().__init__(num_taus=num_taus)
        _check_context_options(
            fusion=fusion, gate_position=gate_position, context_length=context_length
        )
        # like lstm_hidden and fusion, the fusion's start is ignored without a context stream
        start = resolve_fusion_init(
            fusion_init if use_context else "paper",
            fusion=fusion,
            gate_scale=gate_scale if use_context else None,
            gate_bias_init=gate_bias_init if use_context else None,
            context_proj_zero_init=context_proj_zero_init,
        )
        cnn = ImpalaCNN(
            in_channels,
            frame_size=frame_size,
            width_scale=width_scale,
            spectral_norm=spectral_norm,
            layer_norm=layer_norm,
            pool_size=pool_size,
        )
        self.use_context = use_context
        self.fusion_mode = fusion if use_context else None
        self.gate_position = gate_position
        self.context_length = context_length
        # post_pool: fuse the pooled [F] features; pre_pool: the [C, h, w] map before the pool
        feature_shape = (cnn.out_features,) if gate_position == "post_pool" else cnn.map_shape
        # built before the head: the same seed gives the same weights as before the stream
        # existed (construction order cnn, context, head)
        context = (
            ContextLSTM(
                embedding_dim,
                hidden=lstm_hidden,
                out_features=math.prod(feature_shape),
                out_bias=start.proj_bias,
                zero_weight=start.proj_zero_weight,
            )
            if use_context
            else None
        )
        factor = 2 if use_context and fusion == "concat" else 1
        head = DuelingIQNHead(
            cnn.out_features * factor,
            num_actions,
            hidden=mlp_hidden,
            num_cosines=num_cosines,
            noisy=noisy,
            sigma0=noisy_sigma0,
            dueling=dueling,
            layer_norm=layer_norm,
        )
        self._register_parts(
            cnn,
            context,
            head,
            feature_shape=feature_shape,
            fusion=fusion,
            mute_context=mute_context,
            gate_scale=start.gate_scale,
        )
        self.num_actions = num_actions
        self.emit_gate = emit_gate and use_context and fusion == "gate"
        self._set_keys(
            pixels_key=pixels_key,
            context_key=context_key,
            context_mask_key=context_mask_key,
            quantiles_key=quantiles_key,
            taus_key=taus_key,
            action_value_key=action_value_key,
            gate_key=gate_key,
        )

    def _register_parts(
        self,
        cnn: ImpalaCNN,
        context: ContextLSTM | None,
        head: DuelingIQNHead,
        *,
        feature_shape: Sequence[int],
        fusion: str,
        mute_context: bool,
        gate_scale: float,
    ) -> None:
        """Register the parts under the names the state dicts have always used.

        ``cnn``, ``context``, ``fusion`` and ``head`` are registered here; the stream that
        composes them (``rise`` only) stays unregistered, so it adds no second name for the same
        parameters.
        """
        stream = None
        if context is not None:
            stream = RiseContextStream(
                cnn,
                head,
                feature_shape=feature_shape,
                fusion=fusion,
                context_module=context,
                return_gate=True,
                mute_context=mute_context,
                gate_scale=gate_scale,
            )
        self.cnn = cnn
        self.context = context
        self.fusion = stream.fusion if stream is not None else None
        self.head = head
        self.__dict__["_stream"] = stream

    def _set_keys(self, **keys_: NestedKey) -> None:
        for name, key in keys_.items():
            setattr(self, name, key)
        context = [self.context_key, self.context_mask_key] if self.use_context else []
        self.in_keys = [self.pixels_key, *context]
        self.out_keys = [self.quantiles_key, self.taus_key, self.action_value_key]
        if self.emit_gate:
            self.out_keys.append(self.gate_key)

    @property
    def stream(self) -> RiseContextStream | None:
        """The ``rise`` network's :class:`RiseContextStream` (``None`` for ``btr``).

        It is composed of this network's own ``cnn``, ``context``, ``fusion`` and ``head``
        (registered here, so state dicts and parameter names are those of the network).
        """
        return self.__dict__["_stream"]

    def features(
        self,
        pixels: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flat batch ``[B, C, H, W]`` (+ ``[B, K, D]``, ``[B, K]``) -> head input ``[B, F]``, gate."""
        if self.stream is None:
            return self.cnn(pixels), None
        if context is None or mask is None:
            raise ValueError("the rise network's features need the context window and its mask.")
        if self.gate_position == "pre_pool":
            fused, gate = self.stream.fuse(self.cnn.feature_map(pixels), context, mask)
            return self.cnn.pool(fused), gate
        return self.stream.fuse(self.cnn(pixels), context, mask)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        pixels = tensordict.get(self.pixels_key)
        if pixels.dim() < 3:
            raise ValueError(
                f"{self.pixels_key!r} must be [..., S*C, H, W], got shape {tuple(pixels.shape)}."
            )
        batch_shape = pixels.shape[:-3]
        context = mask = None
        if self.use_context:
            context = tensordict.get(self.context_key, None)
            mask = tensordict.get(self.context_mask_key, None)
            if context is None or mask is None:
                raise KeyError(
                    f"the rise network needs {self.context_key!r} and {self.context_mask_key!r} "
                    "(add RiseContextTransform to the env, or sample from RiseReplayBuffer); "
                    "build with make_q_network('btr', ...) for a network without context."
                )
            if (
                context.shape[: len(batch_shape)] != batch_shape
                or context.dim() != len(batch_shape) + 2
            ):
                raise ValueError(
                    f"{self.context_key!r} must be [..., K, D] with the batch dims of the pixels "
                    f"{tuple(batch_shape)}, got {tuple(context.shape)}."
                )
            if self.context_length is not None and context.shape[-2] != self.context_length:
                raise ValueError(
                    f"context window has K={context.shape[-2]} entries but the network was built "
                    f"with context_length={self.context_length}; acting and learning must use the "
                    "same window length (set RiseContextTransform / the replay buffer to it)."
                )
            context = context.reshape(-1, *context.shape[-2:])
            mask = mask.reshape(-1, mask.shape[-1])
        flat_pixels = pixels.reshape(-1, *pixels.shape[-3:])
        taus = self._sample_taus(flat_pixels.shape[0], flat_pixels.device)
        if self.stream is not None and self.gate_position == "post_pool":
            out = self.stream(flat_pixels, context, mask, taus)
            quantiles, gate = out if self.stream.return_gate else (out, None)
        else:
            feats, gate = self.features(flat_pixels, context, mask)
            quantiles = self.head(feats, taus)
        self._write(tensordict, batch_shape, quantiles, taus)
        if self.emit_gate and gate is not None:
            tensordict.set(self.gate_key, gate.reshape(*batch_shape, -1))
        return tensordict


class RecurrentBaselineQNetwork(IQNNetworkBase):
    """The "typical recurrent model" RISE is compared with (R2D2-style, IQN head).

    The learnable IMPALA CNN encodes every frame stack of a sampled sequence, an LSTM reads the
    features in order, and the dueling noisy IQN head reads the LSTM output at each step. The
    first ``burn_in`` steps (CNN and LSTM) run without gradient to warm up the recurrent state and
    produce no outputs; outputs cover the remaining ``T - burn_in`` steps.

    Keys (after the batch dims): in ``pixels`` ``[T, S*C, H, W]`` and, optionally, the stored
    recurrent state at the sequence start ``recurrent_state_h`` / ``recurrent_state_c``
    ``[hidden]`` (zero when absent). Out: ``quantiles`` ``[T - burn_in, N, A]``, ``taus``
    ``[T - burn_in, N]``, ``action_value`` ``[T - burn_in, A]`` and the state after the last step,
    ``("next", "recurrent_state_h")`` / ``("next", "recurrent_state_c")``. With ``T <= burn_in``
    (e.g. acting, ``T = 1``) no step is burnt in. An optional ``sequence_mask`` ``[T]`` (from
    :class:`~torchrl_rise.replay.SequenceReplayBuffer`) marks the burn-in's left padding: those
    positions are skipped, so the given state is the one before the first valid position.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> net = make_q_network("recurrent_baseline", num_actions=3, in_channels=4, burn_in=2,
        ...                      lstm_hidden=16, width_scale=1, mlp_hidden=32)
        >>> td = TensorDict({"pixels": torch.zeros(2, 5, 4, 84, 84, dtype=torch.uint8)}, [2])
        >>> net(td)["quantiles"].shape
        torch.Size([2, 3, 8, 3])
    """

    is_sequence_model = True

    def __init__(
        self,
        *,
        num_actions: int,
        in_channels: int,
        frame_size: Sequence[int] = (84, 84),
        burn_in: int = 40,
        width_scale: float = 2,
        spectral_norm: bool = True,
        layer_norm: bool = False,
        pool_size: int = 6,
        lstm_hidden: int = 512,
        num_taus: int = 8,
        num_cosines: int = 64,
        mlp_hidden: int = 512,
        noisy: bool = True,
        noisy_sigma0: float = 0.5,
        dueling: bool = True,
        pixels_key: NestedKey = keys.PIXELS,
        recurrent_state_keys: tuple[NestedKey, NestedKey] = (
            keys.RECURRENT_STATE_H,
            keys.RECURRENT_STATE_C,
        ),
        quantiles_key: NestedKey = keys.QUANTILES,
        taus_key: NestedKey = keys.TAUS,
        action_value_key: NestedKey = keys.ACTION_VALUE,
        sequence_mask_key: NestedKey | None = keys.SEQUENCE_MASK,
    ) -> None:
        super().__init__(num_taus=num_taus)
        if burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {burn_in}.")
        self.cnn = ImpalaCNN(
            in_channels,
            frame_size=frame_size,
            width_scale=width_scale,
            spectral_norm=spectral_norm,
            layer_norm=layer_norm,
            pool_size=pool_size,
        )
        self.lstm = nn.LSTM(self.cnn.out_features, lstm_hidden, batch_first=True)
        self.head = DuelingIQNHead(
            lstm_hidden,
            num_actions,
            hidden=mlp_hidden,
            num_cosines=num_cosines,
            noisy=noisy,
            sigma0=noisy_sigma0,
            dueling=dueling,
            layer_norm=layer_norm,
        )
        self.burn_in = burn_in
        self.num_actions = num_actions
        self.lstm_hidden = lstm_hidden
        self.pixels_key = pixels_key
        self.recurrent_state_keys = tuple(recurrent_state_keys)
        self.quantiles_key = quantiles_key
        self.taus_key = taus_key
        self.action_value_key = action_value_key
        self.sequence_mask_key = sequence_mask_key
        self.in_keys = [pixels_key, *self.recurrent_state_keys]
        if sequence_mask_key is not None:
            self.in_keys.append(sequence_mask_key)
        self.out_keys = [
            quantiles_key,
            taus_key,
            action_value_key,
            *[
                ("next", k) if isinstance(k, str) else ("next", *k)
                for k in self.recurrent_state_keys
            ],
        ]

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, t = pixels.shape[:2]
        return self.cnn(pixels.reshape(b * t, *pixels.shape[2:])).reshape(b, t, -1)

    def _burn_in(
        self,
        feats: torch.Tensor,
        hc: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        b: int,
        t: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the LSTM over the burn-in features ``[b, burn, F]`` from ``hc``.

        With a ``sequence_mask`` (``[..., T]``), the burn-in's invalid positions are its left
        padding (a sequence that starts near its episode's start or the replay's write seam):
        they are skipped, so ``hc`` is the state before the first valid position.
        """
        burn = feats.shape[1]
        if mask is None:
            return self.lstm(feats, hc)[1]
        if mask.numel() != b * t:
            raise ValueError(
                f"{self.sequence_mask_key!r} must hold one flag per step ([..., T] with T={t}), "
                f"got shape {tuple(mask.shape)}."
            )
        lengths = mask.reshape(b, t)[:, :burn].to(torch.bool).sum(1)
        if bool((lengths == burn).all()):
            return self.lstm(feats, hc)[1]
        # left-align each row's valid suffix, then let a packed sequence stop at its length
        pad = burn - lengths
        index = (torch.arange(burn, device=feats.device) + pad[:, None]).clamp(max=burn - 1)
        feats = feats.gather(1, index[..., None].expand_as(feats))
        packed = nn.utils.rnn.pack_padded_sequence(
            feats, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
        )
        h, c = self.lstm(packed, hc)[1]
        empty = (lengths == 0)[None, :, None]  # no valid burn-in: keep the given state
        return torch.where(empty, hc[0], h), torch.where(empty, hc[1], c)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        pixels = tensordict.get(self.pixels_key)
        if pixels.dim() < 4:
            raise ValueError(
                f"recurrent_baseline reads a sequence {self.pixels_key!r} [..., T, S*C, H, W], got "
                f"shape {tuple(pixels.shape)}; add a time dim (T = 1 to act)."
            )
        batch_shape = pixels.shape[:-4]
        seq = pixels.reshape(-1, *pixels.shape[-4:])
        b, t = seq.shape[:2]
        state = []
        for key in self.recurrent_state_keys:
            value = tensordict.get(key, None)
            if value is None:
                value = torch.zeros(b, self.lstm_hidden, device=seq.device)
            state.append(value.reshape(1, b, self.lstm_hidden).float())
        hc = (state[0], state[1])
        burn = self.burn_in if t > self.burn_in else 0
        if burn:
            mask = None
            if self.sequence_mask_key is not None:
                mask = tensordict.get(self.sequence_mask_key, None)
            with torch.no_grad():
                hc = self._burn_in(self._encode(seq[:, :burn]), hc, mask, b, t)
            hc = (hc[0].detach(), hc[1].detach())
        out, hc = self.lstm(self._encode(seq[:, burn:]), hc)
        steps = t - burn
        flat = out.reshape(b * steps, -1)
        taus = self._sample_taus(flat.shape[0], flat.device)
        quantiles = self.head(flat, taus)
        out_batch = torch.Size([*batch_shape, steps])
        self._write(tensordict, out_batch, quantiles, taus)
        for key, value in zip(self.recurrent_state_keys, hc):
            next_key = ("next", key) if isinstance(key, str) else ("next", *key)
            tensordict.set(next_key, value.squeeze(0).reshape(*batch_shape, -1))
        return tensordict


# Options only one kind of network has. The other kinds ignore them, so one ``network.kwargs``
# serves every method of a suite (its presets size the context LSTM for rise, say).
CONTEXT_STREAM_OPTIONS = frozenset(
    {
        "embedding_dim",
        "context_length",
        "fusion",
        "gate_position",
        "fusion_init",
        "gate_bias_init",
        "gate_scale",
        "context_proj_zero_init",
        "mute_context",
        "emit_gate",
    }
)
SEQUENCE_OPTIONS = frozenset({"burn_in"})


def make_q_network(
    kind: str,
    *,
    num_actions: int,
    in_channels: int,
    channels_last: bool = True,
    **options: Any,
) -> IQNNetworkBase:
    """Build one of the three configurations of the network family.

    Every option's default lives in the network class it configures; this factory only picks the
    class and drops the options that kind does not have.

    Args:
        kind: ``"rise"`` (IMPALA CNN + LSTM context stream, fused), ``"btr"`` (BTR exactly: no
            context stream) or ``"recurrent_baseline"`` (CNN on every frame of a sequence + LSTM
            with burn-in, R2D2-style; for walltime comparisons).

    Keyword Args:
        num_actions: number of discrete actions.
        in_channels: channels of ``pixels`` (``S * C``: stacked frames x channels per frame).
        channels_last: run the CNN channels-last (default: measurably faster on CPU in fp32 too;
            pair with bf16 autocast where bf16 is native).
        **options: the options of :class:`RiseQNetwork` (``rise``, ``btr``) or of
            :class:`RecurrentBaselineQNetwork` (``recurrent_baseline``). ``burn_in``
            (:data:`SEQUENCE_OPTIONS`) is ignored by ``rise``/``btr`` and the context stream's
            options (:data:`CONTEXT_STREAM_OPTIONS`) by ``recurrent_baseline``; ``btr`` builds no
            context stream, so they do nothing there either. ``lstm_hidden=None`` keeps the
            class's size (256 for RISE's context LSTM, 512 for the recurrent core). Any other
            unknown option raises ``TypeError``.

    Returns:
        a :class:`~tensordict.nn.TensorDictModuleBase` (see :class:`RiseQNetwork` and
        :class:`RecurrentBaselineQNetwork` for its keys).

    Example:
        >>> net = make_q_network("btr", num_actions=18, in_channels=4)
        >>> net.in_keys, net.out_keys
        (['pixels'], ['quantiles', 'taus', 'action_value'])
    """
    if options.get("lstm_hidden", 0) is None:
        del options["lstm_hidden"]
    size = dict(num_actions=num_actions, in_channels=in_channels)
    if kind in ("rise", "btr"):
        kept = {k: v for k, v in options.items() if k not in SEQUENCE_OPTIONS}
        net: IQNNetworkBase = RiseQNetwork(use_context=kind == "rise", **size, **kept)
    elif kind == "recurrent_baseline":
        kept = {k: v for k, v in options.items() if k not in CONTEXT_STREAM_OPTIONS}
        net = RecurrentBaselineQNetwork(**size, **kept)
    else:
        raise ValueError(f"kind must be one of {NETWORK_KINDS}, got {kind!r}.")
    if channels_last:
        net.cnn.use_channels_last()
    return net
