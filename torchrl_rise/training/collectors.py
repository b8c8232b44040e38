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
- The Ray workers get a CPU copy of the policy with contiguous tensors (a CUDA module cannot be
  unpickled on a CPU-only node, and the weight sync's gloo transport refuses channels-last
  tensors); the adapter copies the learner's weights into that copy before each push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.collectors import Collector

__all__ = ["LaneOrderedCollector", "RemoteCollector"]

logger = logging.getLogger(__name__)


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
            (the CPU copy the Ray workers were built from); ``policy``'s weights are copied into
            it before each push.

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
        self.sync_requests = 0
        self.weight_pushes = 0

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
        if self.remote_policy is not None:
            source = TensorDict.from_module(self.policy).data
            TensorDict.from_module(self.remote_policy).data.update_(source)
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


class RemoteCollector(Collector):
    """:class:`torchrl.collectors.Collector` with a one-line ``repr``: what each Ray actor runs.

    Ray prefixes every line an actor logs with the actor's ``repr``; the collector's own spans the
    whole env and policy (hundreds of lines per message). Behaviour is TorchRL's, unchanged.
    """

    def __repr__(self) -> str:
        return f"RemoteCollector(worker={getattr(self, 'worker_idx', None)})"
