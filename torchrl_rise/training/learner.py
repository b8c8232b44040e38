"""The learner's update step, written so that it never waits on the device.

One update::

    sample (replay, host) -> .to(device, non_blocking=True) -> loss -> zero_grad(set_to_none)
    -> backward -> clip_grad_norm_ -> optimizer.step -> replay priorities -> target update

The statistics of each update (loss, grad norm, TD error, mean Q, gate diagnostics) stay on the
device: they are added into one device tensor, and converted to host floats only when
:meth:`Learner.stats` is called (no ``float()``/``.item()``/``.cpu()`` per update). The one
device->host copy per update that cannot be avoided is the priorities the replay's sum tree
needs: on CUDA it is issued right after the loss's forward pass, ``non_blocking`` into a reused
pinned host buffer, and the host waits for it (a CUDA event) only after it has queued the
backward pass and the optimizer step, so the GPU stays busy while the host writes the
priorities into the tree. A replay that keeps its tree on the learner's device (it says so with
a ``device`` attribute equal to the learner's) gets the device tensor and no copy is made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey

from torchrl_rise import keys

__all__ = ["DeviceMismatchError", "Learner", "build_learner_optimizer"]

logger = logging.getLogger(__name__)

_STAT_KEYS = (
    ("loss", "loss"),
    ("td_error", "td_error_mean"),
    ("q_mean", "q_value_mean"),
)


class DeviceMismatchError(RuntimeError):
    """Tensors that one update needs together live on different devices."""


def build_learner_optimizer(
    loss: torch.nn.Module,
    *,
    lr: float,
    eps: float,
    device: str | torch.device = "cpu",
    fused: bool | None = None,
) -> torch.optim.Adam:
    """Adam over ``loss``'s trainable parameters (as ``build_optimizer``), fused on CUDA.

    Args:
        loss: the loss module (its parameters that require grad are optimized; the target network
            is excluded).

    Keyword Args:
        lr: learning rate.
        eps: Adam's epsilon.
        device: the device the parameters live on.
        fused: ``torch.optim.Adam(fused=True)`` (one kernel for the whole step); ``None`` picks it
            on CUDA and not on CPU (the CPU fused kernel changes the rounding of the step).

    Example:
        >>> import torch
        >>> opt = build_learner_optimizer(torch.nn.Linear(2, 2), lr=1e-4, eps=1.95e-5)
        >>> opt.defaults["fused"]
        False
    """
    device = torch.device(device)
    if fused is None:
        fused = device.type == "cuda"
    params = [p for p in loss.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(loss).__name__} has no trainable parameters to optimize.")
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=bool(fused))


def _leaves(td: TensorDictBase) -> Iterable[tuple[Any, torch.Tensor]]:
    return td.items(include_nested=True, leaves_only=True)


def _describe(where: dict[str, list[str]]) -> str:
    parts = []
    for dev, names in sorted(where.items()):
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        parts.append(f"on {dev}: {shown}")
    return "; ".join(parts)


class Learner:
    """Gradient updates of a loss from a replay buffer, with device-side statistics.

    Args:
        loss: the loss module (e.g. :class:`~torchrl_rise.objectives.IQNLoss`); called on a batch,
            it returns a TensorDict with ``loss`` (and ``td_error_mean``, ``q_value_mean``,
            ``gate_*`` when it has them) and writes the per-sample priority into the batch.
        optimizer: the optimizer of the loss's trainable parameters.
        replay: has ``sample()`` and ``update_tensordict_priority(td)`` (e.g.
            :class:`~torchrl_rise.replay.RiseReplayBuffer`).
        target_updater: has ``step()`` (e.g. :class:`~torchrl_rise.objectives.HardTargetUpdate`),
            or ``None``.

    Keyword Args:
        device: where the loss runs; the batch is sent there, the network and the optimizer state
            must already be there (checked: :class:`DeviceMismatchError` names the tensors).
        grad_clip: max gradient norm (``clip_grad_norm_``).
        log_every: every this many updates, log (``logging``, INFO) the means since the last
            :meth:`stats` call; this one costs a host sync. 0 never logs.
        bf16: bfloat16 autocast of the networks (the loss math stays float32). ``None`` (default):
            on where the device computes bf16 natively (CUDA with
            ``torch.cuda.is_bf16_supported()``), otherwise the loss keeps its own setting;
            ``True``/``False`` force it (``True`` on a CPU without native bf16 is emulated, slow).
            It sets ``loss.autocast_dtype``.
        compile: ``torch.compile`` the loss (its forward, and through AOTAutograd its backward).
        priority_key: where the loss writes the priorities (default: the loss's
            ``tensor_keys.priority``, else ``"td_error"``).
        index_key: the replay's slot index in the batch.
        prefetch: draw each update's batch from a :class:`~torchrl_rise.replay.Prefetcher`
            (the replay needs ``sample_async``/``output_ring``): batch ``k + 1`` is drawn when
            batch ``k`` is handed out and gathered on a worker thread during update ``k``. It is
            drawn before update ``k`` writes its priorities and before the loop stores the next
            vector step, so those first affect batch ``k + 2`` (Ape-X-style). Call
            :meth:`close` when done. ``False``: sample in the update, after the previous one.

    ``channels_last`` is the network's own default (``make_q_network``); fused Adam on CUDA comes
    from :func:`build_learner_optimizer`.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_rise.modules import make_q_network
        >>> from torchrl_rise.objectives import HardTargetUpdate, IQNLoss
        >>> from torchrl_rise.replay import RiseReplayBuffer
        >>> net = make_q_network("btr", num_actions=3, in_channels=4, frame_size=(16, 16),
        ...                      width_scale=0.25, mlp_hidden=16, spectral_norm=False)
        >>> loss = IQNLoss(net)
        >>> rb = RiseReplayBuffer(64, 1, frame_shape=(1, 16, 16), context_length=0, batch_size=4)
        >>> T = 20
        >>> rb.extend(TensorDict({
        ...     "pixels": torch.randint(0, 255, (T, 4, 16, 16), dtype=torch.uint8),
        ...     "action": torch.randint(0, 3, (T,)),
        ...     ("next", "reward"): torch.randn(T, 1),
        ...     ("next", "terminated"): torch.zeros(T, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.zeros(T, 1, dtype=torch.bool),
        ... }, [T]))
        >>> learner = Learner(loss, build_learner_optimizer(loss, lr=1e-4, eps=1.95e-5), rb,
        ...                   HardTargetUpdate(loss, interval=500), device="cpu", grad_clip=10.0)
        >>> learner.update(2)
        >>> sorted(learner.stats())
        ['grad_norm', 'loss', 'q_mean', 'td_error', 'updates']
        >>> rb.close()
    """

    def __init__(
        self,
        loss: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        replay: Any,
        target_updater: Any,
        *,
        device: str | torch.device,
        grad_clip: float,
        log_every: int = 0,
        bf16: bool | None = None,
        compile: bool = False,
        priority_key: NestedKey | None = None,
        index_key: NestedKey = keys.INDEX,
        prefetch: bool = False,
    ) -> None:
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip}.")
        if isinstance(log_every, bool) or int(log_every) != log_every or log_every < 0:
            raise ValueError(f"log_every must be an integer >= 0, got {log_every!r}.")
        for name, obj, method in (
            ("replay", replay, "sample"),
            ("replay", replay, "update_tensordict_priority"),
        ):
            if not callable(getattr(obj, method, None)):
                raise TypeError(f"{name} must have a {method}() method, got {type(obj).__name__}.")
        if target_updater is not None and not callable(getattr(target_updater, "step", None)):
            raise TypeError(
                f"target_updater must have a step() method (or be None), got "
                f"{type(target_updater).__name__}."
            )
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.loss = loss
        self.optimizer = optimizer
        self.replay = replay
        self.target_updater = target_updater
        self.grad_clip = float(grad_clip)
        self.log_every = int(log_every)
        self.index_key = index_key
        if priority_key is None:
            tensor_keys = getattr(loss, "tensor_keys", None)
            priority_key = getattr(tensor_keys, "priority", keys.PRIORITY)
        self.priority_key = priority_key
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.bf16 = self._set_bf16(bf16)
        self.compiled = bool(compile)
        self._forward = torch.compile(loss) if compile else loss
        replay_device = getattr(replay, "device", None)
        self._priorities_on_device = replay_device is not None and torch.device(
            replay_device
        ) == torch.device(self.device)
        self._pinned: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None
        self._names: tuple[str, ...] | None = None
        self._acc: torch.Tensor | None = None
        self._count = 0
        self.updates = 0
        self._prefetcher = None
        if prefetch:
            if not callable(getattr(replay, "sample_async", None)):
                raise TypeError(
                    f"prefetch=True needs a replay with sample_async() and output_ring() "
                    f"(RiseReplayBuffer); {type(replay).__name__} has none."
                )
            from torchrl_rise.replay.prefetch import Prefetcher

            self._prefetcher = Prefetcher(replay)
        self.check_devices()

    # ------------------------------------------------------------------ options
    def _set_bf16(self, bf16: bool | None) -> bool:
        current = getattr(self.loss, "autocast_dtype", None)
        if bf16 is None:
            native = self.device.type == "cuda" and torch.cuda.is_available()
            native = native and torch.cuda.is_bf16_supported()
            if not native or current is not None:
                return current == torch.bfloat16
            bf16 = True
        if not hasattr(self.loss, "autocast_dtype"):
            if bf16:
                raise TypeError(
                    f"bf16=True needs a loss with an autocast_dtype option (IQNLoss); "
                    f"{type(self.loss).__name__} has none."
                )
            return False
        self.loss.autocast_dtype = torch.bfloat16 if bf16 else None
        return bool(bf16)

    # ------------------------------------------------------------------ device checks
    def check_devices(self, batch: TensorDictBase | None = None) -> None:
        """Raise :class:`DeviceMismatchError` unless everything one update touches is on ``device``.

        Checked: the loss's tensors (online and target parameters, buffers), the optimizer's
        parameters and state (Adam's ``step`` counters may stay on the CPU: PyTorch keeps them
        there unless ``fused``/``capturable``) and, if given, every tensor of ``batch``. Only
        tensor metadata is read (no host sync).
        """
        expected = self.device
        where: dict[str, list[str]] = {}

        def note(name: str, tensor: torch.Tensor) -> None:
            if not _same_device(tensor.device, expected):
                where.setdefault(str(tensor.device), []).append(name)

        for name, tensor in self.loss.named_parameters():
            note(f"loss parameter {name}", tensor)
        for name, tensor in self.loss.named_buffers():
            note(f"loss buffer {name}", tensor)
        names = {id(p): n for n, p in self.loss.named_parameters()}
        for i, p in enumerate(self.params):
            label = names.get(id(p), f"param_groups[*][{i}]")
            note(f"optimizer parameter {label}", p)
            for key, value in self.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and not (key == "step" and value.ndim == 0):
                    note(f"optimizer state {key!r} of {label}", value)
        if batch is not None:
            for key, tensor in _leaves(batch):
                note(f"batch entry {key!r}", tensor)
        if where:
            raise DeviceMismatchError(
                f"the learner runs on {expected}, but these tensors are elsewhere: "
                f"{_describe(where)}. Move the network to the device before building the loss "
                "and the optimizer (or load the optimizer state after moving it: "
                "optimizer.load_state_dict moves its state to its parameters' device), and "
                "give the replay's batches to the learner un-moved (it sends them itself)."
            )

    # ------------------------------------------------------------------ the update
    def update(self, n_updates: int = 1) -> None:
        """Run ``n_updates`` gradient updates (no host sync except the priority copy)."""
        if isinstance(n_updates, bool) or int(n_updates) != n_updates or n_updates < 0:
            raise ValueError(f"n_updates must be an integer >= 0, got {n_updates!r}.")
        for _ in range(int(n_updates)):
            self._update_once()

    def close(self) -> None:
        """Wait for a prefetched batch in flight and drop it (nothing to do without prefetch)."""
        if self._prefetcher is not None:
            self._prefetcher.close()

    def _update_once(self) -> None:
        sampled = self._prefetcher.next() if self._prefetcher is not None else self.replay.sample()
        index = sampled.get(self.index_key, None)
        batch = sampled.to(self.device, non_blocking=True)
        self.check_devices(batch)
        losses = self._forward(batch)  # noise resampled, autocast inside if asked
        host_priority = self._start_priority_copy(batch)
        total = losses.get("loss")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self._write_priorities(batch, index, host_priority)
        if self.target_updater is not None:
            self.target_updater.step()
        self.updates += 1
        self._accumulate(total, grad_norm, losses)
        if self.log_every and self.updates % self.log_every == 0:
            logger.info(
                "update %d: %s",
                self.updates,
                ", ".join(f"{k} {v:.4g}" for k, v in self._means().items()),
            )

    def _start_priority_copy(self, batch: TensorDictBase) -> torch.Tensor | None:
        if self.device.type != "cuda" or self._priorities_on_device:
            return None
        priority = batch.get(self.priority_key, None)
        if priority is None:
            return None
        priority = priority.detach()
        if (
            self._pinned is None
            or self._pinned.shape != priority.shape
            or self._pinned.dtype != priority.dtype
        ):
            self._pinned = torch.empty(priority.shape, dtype=priority.dtype, pin_memory=True)
            self._copied = torch.cuda.Event()
        self._pinned.copy_(priority, non_blocking=True)
        self._copied.record()
        return self._pinned

    def _write_priorities(
        self, batch: TensorDictBase, index: torch.Tensor | None, host: torch.Tensor | None
    ) -> None:
        if host is None or index is None:
            # CPU learner or device-resident tree: the batch as it is (no copy here)
            self.replay.update_tensordict_priority(batch)
            return
        self._copied.synchronize()  # the forward pass only: backward and step are queued behind
        light = TensorDict({self.priority_key: host, self.index_key: index}, batch_size=[])
        self.replay.update_tensordict_priority(light)

    def _accumulate(
        self, total: torch.Tensor, grad_norm: torch.Tensor, losses: TensorDictBase
    ) -> None:
        names = ["loss", "grad_norm"]
        values = [total.detach(), grad_norm.detach()]
        for name, key in _STAT_KEYS[1:]:
            value = losses.get(key, None)
            if value is not None:
                names.append(name)
                values.append(value.detach())
        for key, value in losses.items():
            if isinstance(key, str) and key.startswith("gate_"):
                names.append(key)
                values.append(value.detach())
        stacked = torch.stack([v.reshape(()).float() for v in values])
        if self._names != tuple(names) or self._acc is None:
            if self._acc is not None and self._count:
                logger.debug("learner statistics changed keys: %s -> %s", self._names, names)
            self._names = tuple(names)
            self._acc = torch.zeros_like(stacked)
            self._count = 0
        self._acc.add_(stacked)
        self._count += 1

    def _means(self) -> dict[str, float]:
        if self._acc is None or not self._count:
            return {}
        means = (self._acc / self._count).tolist()  # the one host sync, here
        return dict(zip(self._names, means, strict=True))

    def stats(self) -> dict[str, float]:
        """Means of the statistics over the updates since the last call (and reset them).

        Keys: ``loss``, ``grad_norm``, ``td_error``, ``q_mean``, ``gate_*`` (what the loss
        returns) and ``updates`` (how many updates the means cover). Empty after no update.
        """
        out = self._means()
        if out:
            out["updates"] = float(self._count)
        if self._acc is not None:
            self._acc.zero_()
        self._count = 0
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(device={self.device}, grad_clip={self.grad_clip}, "
            f"bf16={self.bf16}, compile={self.compiled}, updates={self.updates})"
        )


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu" or a.index is None or b.index is None:
        return True
    return a.index == b.index
