"""The collector contract of the training loop, for collectors that run their envs elsewhere.

The loop (:mod:`torchrl_rise.training.loop`) expects an iterable of ``[num_envs, T]`` batches whose
row ``i`` is always env ``i`` (the replay keeps one lane per env), an ``update_policy_weights_()``
that it calls after each batch that ran gradient updates, and ``shutdown()``.
:class:`LaneOrderedCollector` gives TorchRL's multi-worker collectors that shape:

- ``RayCollector`` in sync mode returns ``[workers, envs per worker, T]`` (one rollout per remote
  collector, stacked in worker order); the adapter flattens it worker-major, so worker ``w``'s
  env ``e`` is lane ``w * envs_per_worker + e``. ``MultiSyncCollector(cat_results=0)`` is already
  ``[num_envs, T]`` in that order.
- Weights are pushed to the workers on every ``weight_sync_interval``-th request of the loop
  (``collector.weight_sync_interval``; 1: after every batch that ran an update, as the
  single-process collector sees them).
- The workers are sent :func:`acting_copy` of the policy, not the learner's module: parametrized
  modules (BTR's spectral norm) cannot be pickled, a CUDA module cannot be unpickled on a CPU-only
  node, and the Ray weight sync's gloo transport refuses channels-last tensors. The adapter copies
  the learner's weights into that copy before each push (spectral-normalised weights as the
  learner evaluates them: ``W / sigma`` with its current power-iteration vectors, unchanged).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torch.nn.utils import parametrize
from torchrl.collectors import Collector

from torchrl_rise import keys

__all__ = [
    "LEARNER_UNUSED_KEYS",
    "DropKeys",
    "LaneOrderedCollector",
    "RemoteCollector",
    "acting_copy",
    "is_worker_loss",
]

# Entries of a collector batch that neither the replay nor the loop reads: the [K, D] context
# windows (the replay stores each embedding once and rebuilds the windows) and the acting
# network's per-step diagnostics. Ray workers drop them before sending: 169 of the 227 KiB per
# transition of the Atari RISE recipe (K=80, 512-d fp16; docs/benchmarks.md "collectors").
LEARNER_UNUSED_KEYS = (
    keys.CONTEXT,
    keys.CONTEXT_MASK,
    ("next", keys.CONTEXT),
    ("next", keys.CONTEXT_MASK),
    keys.GATE,
    keys.QUANTILES,
    keys.TAUS,
)

logger = logging.getLogger(__name__)


def acting_copy(policy: nn.Module, *, device: str | torch.device = "cpu") -> nn.Module:
    """A picklable copy of ``policy`` on ``device`` (CPU: for collector workers).

    Parametrizations (spectral norm) are baked into plain weights, and every tensor is made
    contiguous. Keep it in sync with :class:`WeightMirror` (``LaneOrderedCollector`` does; the
    overlapped collector thread acts with such a copy on the learner's device).

    Example:
        >>> import pickle
        >>> from torch.nn.utils.parametrizations import spectral_norm
        >>> net = nn.Sequential(spectral_norm(nn.Linear(3, 2)))
        >>> copy_ = acting_copy(net)
        >>> sorted(name for name, _ in copy_.named_parameters())
        ['0.bias', '0.weight']
        >>> _ = pickle.dumps(copy_)  # pickle.dumps(net) raises
    """
    remote = copy.deepcopy(policy).to(device)
    with torch.no_grad():
        for module in list(remote.modules()):
            if parametrize.is_parametrized(module):
                _bake_parametrizations(module)
        for tensor in (*remote.parameters(), *remote.buffers()):
            tensor.data = tensor.data.contiguous()
    WeightMirror(policy, remote).copy_()  # baked weights as the learner evaluates them
    return remote


def _bake_parametrizations(module: nn.Module) -> None:
    """Turn ``module``'s parametrized tensors into plain parameters, in place.

    Not ``torch.nn.utils.parametrize.remove_parametrizations``: a deep copy shares its
    ``Parametrized<Module>`` class with the original, and that function deletes the class's
    properties, which would break the learner's module.
    """
    values = {}
    for name, plist in module.parametrizations.items():
        original = getattr(plist, "original", None)
        requires_grad = True if original is None else original.requires_grad
        values[name] = (getattr(module, name).detach().clone(), requires_grad)
    del module._modules["parametrizations"]
    module.__class__ = type(module).__bases__[0]  # the class before parametrization
    for name, (value, requires_grad) in values.items():
        module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))


class WeightMirror:
    """Copies a module's weights into an :func:`acting_copy` of it.

    Tensors of the same name are copied; a baked parametrized weight gets the learner's
    parametrized value computed with its parametrizations in eval mode (for spectral norm:
    ``W / sigma`` from the stored power-iteration vectors, which are left as they are).

    Args:
        source: the learner's module.
        target: the copy (same structure, parametrizations removed).
    """

    def __init__(self, source: nn.Module, target: nn.Module) -> None:
        self.source = source
        self.target = target
        src = self._tensors(source)
        modules = dict(source.named_modules())
        self.copied: list[str] = []
        self.baked: list[tuple[str, str, str]] = []  # (target name, source module, attribute)
        for name in self._tensors(target):
            if name in src:
                self.copied.append(name)
                continue
            module_name, _, attr = name.rpartition(".")
            module = modules.get(module_name)
            if module is None or not parametrize.is_parametrized(module, attr):
                raise ValueError(
                    f"{name!r} of the workers' policy has no counterpart in the learner's: the "
                    "copy must come from acting_copy(learner policy)."
                )
            self.baked.append((name, module_name, attr))

    @staticmethod
    def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
        return {**dict(module.named_parameters()), **dict(module.named_buffers())}

    @torch.no_grad()
    def copy_(self) -> None:
        """Copy the source's current weights into the target, in place."""
        src = self._tensors(self.source)
        dst = self._tensors(self.target)  # looked up each time: collectors may move buffers
        for name in self.copied:
            dst[name].copy_(src[name])
        modules = dict(self.source.named_modules()) if self.baked else {}
        for name, module_name, attr in self.baked:
            module = modules[module_name]
            plist = module.parametrizations[attr]
            modes = [(m, m.training) for m in plist.modules()]
            plist.eval()  # no power iteration: the learner's vectors stay as they are
            try:
                value = getattr(module, attr)
            finally:
                for m, training in modes:
                    m.training = training
            dst[name].copy_(value)


class LaneOrderedCollector:
    """Wraps a multi-worker TorchRL collector so it yields ``[num_envs, T]`` batches in env order.

    Args:
        collector: a TorchRL collector whose batches are ``[num_envs, T]`` or
            ``[workers, envs_per_worker, T]`` (``RayCollector(sync=True)``).

    Keyword Args:
        num_envs: the number of env lanes (``env.num_envs``); a batch of another size is an error.
        weight_sync_interval: push the weights on every N-th :meth:`update_policy_weights_` call.
        policy: the learner's acting policy (its weights are the ones pushed).
        remote_policy: the module the collector sends weights from, when it is not ``policy``
            (the :func:`acting_copy` the workers were built from); ``policy``'s weights are
            copied into it before each push.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> class Stub:  # stands in for RayCollector: two workers of 2 envs, T = 3
        ...     pushes = 0
        ...     def __iter__(self):
        ...         lane = torch.arange(4).view(2, 2, 1).expand(2, 2, 3)
        ...         yield TensorDict({"lane": lane}, batch_size=[2, 2, 3])
        ...     def update_policy_weights_(self):
        ...         self.pushes += 1
        ...     def shutdown(self):
        ...         pass
        >>> collector = LaneOrderedCollector(Stub(), num_envs=4, weight_sync_interval=2)
        >>> batch = next(iter(collector))
        >>> batch.shape, batch["lane"][:, 0].tolist()
        (torch.Size([4, 3]), [0, 1, 2, 3])
        >>> [collector.update_policy_weights_() for _ in range(4)], collector.collector.pushes
        ([False, True, False, True], 2)
    """

    def __init__(
        self,
        collector: Any,
        *,
        num_envs: int,
        weight_sync_interval: int = 1,
        policy: nn.Module | None = None,
        remote_policy: nn.Module | None = None,
    ) -> None:
        if not isinstance(weight_sync_interval, int) or weight_sync_interval < 1:
            raise ValueError(
                f"weight_sync_interval must be an integer >= 1, got {weight_sync_interval!r}."
            )
        if remote_policy is not None and policy is None:
            raise ValueError("remote_policy needs policy (the module whose weights it mirrors).")
        self.collector = collector
        self.num_envs = int(num_envs)
        self.weight_sync_interval = weight_sync_interval
        self.policy = policy
        self.remote_policy = remote_policy if remote_policy is not policy else None
        self._mirror = (
            WeightMirror(policy, self.remote_policy) if self.remote_policy is not None else None
        )
        self.sync_requests = 0
        self.weight_pushes = 0
        self._ray_probes: dict[int, Any] = {}  # worker -> its pending liveness probe

    def __iter__(self) -> Iterator[TensorDictBase]:
        for batch in self.collector:
            if batch.ndim == 3:  # [workers, envs per worker, T], workers in order
                batch = batch.reshape(-1, batch.shape[-1])
            if batch.ndim != 2 or batch.shape[0] != self.num_envs:
                raise RuntimeError(
                    f"the collector returned a batch of shape {tuple(batch.shape)}; the replay "
                    f"needs [num_envs={self.num_envs}, T] with one row per env. Check that "
                    "collector.num_workers divides env.num_envs and that the collector runs in "
                    "sync mode."
                )
            yield batch

    def push_weights(self) -> None:
        """Send the learner's current weights to every worker now."""
        if self._mirror is not None:
            self._mirror.copy_()
        self.collector.update_policy_weights_()
        self.weight_pushes += 1

    def update_policy_weights_(self) -> bool:
        """The loop's request after an update batch: push on every ``weight_sync_interval``-th.

        Returns:
            whether the weights were pushed.
        """
        self.sync_requests += 1
        if self.sync_requests % self.weight_sync_interval:
            return False
        self.push_weights()
        return True

    def shutdown(self) -> None:
        """Stop the workers (and, for Ray, the runtime this collector started)."""
        self.collector.shutdown()

    def worker_failure(self) -> str | None:
        """Which worker process has died, if one has (``None``: all alive, or not knowable).

        ``MultiSyncCollector``: its worker processes (``procs``). Ray: one pending
        ``__ray_ready__`` call per actor, which fails once Ray knows the actor died (a busy
        actor answers it after its current task; a call stuck on a dead peer, e.g. in the weight
        sync's collective, is thus noticed too).
        """
        actors = getattr(self.collector, "remote_collectors", None)
        if actors and "ray" in sys.modules:
            return self._ray_failure(list(actors))
        for i, proc in enumerate(getattr(self.collector, "procs", None) or ()):
            try:
                if not proc.is_alive():
                    return f"collector worker {i} (pid {proc.pid}, exit code {proc.exitcode})"
            except ValueError:  # closed by TorchRL after it saw a worker fail
                return f"collector worker {i} (pid {proc.pid}, closed)"
        return None

    def _ray_failure(self, actors: list[Any]) -> str | None:
        import ray

        for i, actor in enumerate(actors):
            probe = self._ray_probes.get(i)
            if probe is None:
                probe = self._ray_probes[i] = actor.__ray_ready__.remote()
            ready, _ = ray.wait([probe], timeout=0)
            if not ready:
                continue
            del self._ray_probes[i]
            try:
                ray.get(probe, timeout=0)
            except Exception as err:
                if is_worker_loss(err):
                    return f"Ray collector actor {i} ({type(err).__name__})"
        return None

    def kill_workers(self) -> None:
        """SIGKILL every worker that is still running (after a shutdown that did not end them)."""
        for proc in getattr(self.collector, "procs", None) or ():
            try:
                if proc.is_alive():
                    logger.warning("killing collector worker pid %d", proc.pid)
                    proc.kill()
                    proc.join(timeout=5.0)
            except (ValueError, OSError):  # closed or already reaped
                pass
        actors = getattr(self.collector, "remote_collectors", None)
        if actors and "ray" in sys.modules:
            import ray

            for actor in list(actors):
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as err:
                    logger.debug("ray.kill of a collector actor: %s", err)

    def __getattr__(self, name: str) -> Any:
        # Anything else the loop or a user asks of a collector (state_dict, set_seed, ...).
        if name == "collector":  # not set yet (during unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.collector, name)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.collector).__name__}, num_envs={self.num_envs}, "
            f"weight_sync_interval={self.weight_sync_interval})"
        )


def is_worker_loss(error: BaseException) -> bool:
    """Whether ``error`` says a collector worker is gone (Ray: a dead actor, node or object).

    An exception an env or policy raised inside a worker is not (Ray wraps those in
    ``RayTaskError``): replacing the worker would only repeat it.

    Example:
        >>> is_worker_loss(ValueError("a bug"))
        False
    """
    if "ray" not in sys.modules:
        return False
    try:
        from ray import exceptions as rex
    except ImportError:
        return False
    lost = tuple(
        getattr(rex, name)
        for name in (
            "RayActorError",  # ActorDiedError, ActorUnavailableError
            "WorkerCrashedError",
            "NodeDiedError",
            "ObjectLostError",  # OwnerDiedError, ObjectReconstructionFailedError
            "GetTimeoutError",
        )
        if hasattr(rex, name)
    )
    return isinstance(error, lost)


class DropKeys:
    """Picklable batch post-processor: the batch without ``keys`` (missing ones are ignored).

    Example:
        >>> from tensordict import TensorDict
        >>> td = TensorDict({"a": torch.zeros(2), "next": {"a": torch.zeros(2)}}, batch_size=[2])
        >>> sorted(DropKeys([("next", "a"), "b"])(td).keys(True, True))
        ['a']
    """

    def __init__(self, keys: list | tuple) -> None:
        self.keys = [tuple(k) if isinstance(k, list) else k for k in keys]

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        return td.exclude(*self.keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.keys})"


class RemoteCollector(Collector):
    """:class:`torchrl.collectors.Collector` with a one-line ``repr``: what each Ray actor runs.

    Ray prefixes every line an actor logs with the actor's ``repr``; the collector's own spans the
    whole env and policy (hundreds of lines per message). Behaviour is TorchRL's, unchanged.
    """

    def __repr__(self) -> str:
        return f"RemoteCollector(worker={getattr(self, 'worker_idx', None)})"
