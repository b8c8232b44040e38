"""Overlapped collection and learning: a collector thread one batch ahead of the learner.

With ``collector.overlap=true`` the training loop's collector runs in a background thread while
the main thread stores the previous batch, runs its gradient updates, logs, evaluates and saves::

    collector thread:  collect k+1 (weights v_{k-1}) | collect k+2 (weights v_k)  | ...
    main thread:       extend k, update k -> v_k      | extend k+1, update -> v_k+1 | ...

Hand-off: one batch at a time. The thread starts collecting batch ``k + 1`` when the main thread
takes batch ``k``, and then waits until batch ``k + 1`` is taken, so at most one batch is being
collected or waiting while the main thread works on another (the Ape-X / TorchRL
``MultiaSyncCollector`` pattern with a queue of depth 1). Batch ``k + 1`` is collected with the
weights the main thread published after batch ``k - 1`` (or, if the main thread was quicker than
the thread's start, after batch ``k``): at most one batch staler than the sync loop's, which acts
on batch ``k + 1`` with the weights after batch ``k``.

Weights: the collector acts with its own copy of the policy (:func:`acting_copy`), never the
learner's module, so no forward pass ever sees half-updated weights. After every batch the main
thread publishes the learner's weights, noise and epsilon (all three change every batch) into a
staging copy, under a lock; the thread copies the staging copy into its acting copy before it
starts its next batch, under the same lock. Neither side waits for the other's batch or update:
both critical sections are a copy of the policy's tensors. Spectral norm is baked into the copy
as :func:`acting_copy` does (``W / sigma`` from the learner's power-iteration vectors, which the
acting forward does not advance, unlike the sync loop's forward on the learner's own module).

Exploration: epsilon follows the same schedule, advanced by the main thread per batch; the acting
copy sees it with the batch's staleness (one batch later than sync). The noisy layers' noise is
what the learner's last published update resampled; the acting copy keeps it for the whole batch.

Pausing: evaluation switches TorchRL's process-wide exploration mode to deterministic and
competes for the cores, and a checkpoint reads the RNG states; the loop therefore :meth:`pauses
<OverlappedCollector.paused>` the thread at a batch boundary around both. A batch the thread has
collected but the main thread has not taken is never part of the counters or the replay of a
checkpoint written meanwhile: after a periodic checkpoint or evaluation it is taken as the next
batch; at a stop (request, signal, ``total_frames`` reached, error) it is discarded uncounted, as
the sync loop discards the envs' unfinished episodes (a resumed run starts fresh envs).

Errors: an exception in the thread is re-raised by the main thread's next request for a batch,
with the thread's traceback (and a note saying it came from the collector thread). The thread is
joined by :meth:`OverlappedCollector.shutdown`, which the loop always calls.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchrl_rise.training.collectors import WeightMirror, acting_copy

__all__ = ["OverlappedCollector"]

logger = logging.getLogger(__name__)

_END = object()  # the inner collector stopped yielding batches
# How long shutdown waits for a batch in flight before warning (and waiting on).
_JOIN_WARN_S = 60.0


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class OverlappedCollector:
    """Runs a single-process collector in a background thread, one batch ahead of the learner.

    Args:
        collector: a TorchRL collector (``[num_envs, T]`` batches) that acts with
            ``acting_policy``; only the thread iterates it.

    Keyword Args:
        policy: the learner's acting policy (its weights, noise and epsilon are published).
        acting_policy: the module ``collector`` acts with: an :func:`acting_copy` of ``policy``.

    Attributes:
        batches: batches handed to the main thread.
        published: weight publications (:meth:`update_policy_weights_` calls).
        wait_s: seconds the main thread waited for a batch (high: collection is the bottleneck).
        acting_versions: for each of the last 1024 batches collected, the number of
            publications its weights contained: batch ``k`` (counted from 1) acts with ``k - 2``
            or, if the main thread published before the thread started it, ``k - 1`` (``0`` for
            batch 1).

    Example:
        >>> from tensordict import TensorDict
        >>> from torch import nn
        >>> class Stub:  # stands in for torchrl's Collector: acts with `policy`, 3 batches
        ...     def __init__(self, policy):
        ...         self.policy = policy
        ...     def __iter__(self):
        ...         for _ in range(3):
        ...             yield TensorDict({"w": self.policy.weight.detach().clone()}, [1])
        ...     def shutdown(self):
        ...         pass
        >>> learner = nn.Linear(1, 1, bias=False)
        >>> acting = acting_copy(learner)
        >>> overlapped = OverlappedCollector(Stub(acting), policy=learner, acting_policy=acting)
        >>> for batch in overlapped:  # batch k+1 is collected while the main thread works on k
        ...     with torch.no_grad():
        ...         _ = learner.weight.add_(1.0)  # an "update"
        ...     _ = overlapped.update_policy_weights_()  # acted with from a later batch
        >>> overlapped.shutdown()
        >>> overlapped.batches, overlapped.published, overlapped.thread_alive
        (3, 3, False)
        >>> [k - 2 <= v <= k - 1 for k, v in enumerate(overlapped.acting_versions, 1)][1:]
        [True, True]
    """

    def __init__(self, collector: Any, *, policy: nn.Module, acting_policy: nn.Module) -> None:
        if acting_policy is policy:
            raise ValueError(
                "acting_policy is the learner's own policy: the collector thread would act with "
                "weights the optimizer is changing. Give it acting_copy(policy)."
            )
        self.collector = collector
        self.policy = policy
        self.acting_policy = acting_policy
        device = _device_of(acting_policy)
        self._staging = acting_copy(policy, device=device)
        self._publish = WeightMirror(policy, self._staging)
        self._apply = WeightMirror(self._staging, acting_policy)
        self._weights_lock = threading.Lock()
        self._version = 0  # publications so far
        self._applied = 0  # the publication the acting copy holds
        self._cv = threading.Condition()
        self._ready: collections.deque[Any] = collections.deque()
        self._want = 1  # batches asked for and not started (the first one: at once)
        self._busy = False  # the thread is collecting a batch
        self._paused = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.published = 0
        self.wait_s = 0.0
        self.acting_versions: collections.deque[int] = collections.deque(maxlen=1024)

    # ------------------------------------------------------------------ main thread
    def __iter__(self) -> Iterator[Any]:
        if self._closing:
            raise RuntimeError("this OverlappedCollector was shut down.")
        if self._thread is not None:
            raise RuntimeError("an OverlappedCollector is iterated once (its thread is running).")
        self._thread = threading.Thread(
            target=self._run, name="torchrl_rise-collector", daemon=True
        )
        self._thread.start()
        try:
            while True:
                item = self._take()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self._stop_thread()  # also when the loop stops iterating: never left running

    def _take(self) -> Any:
        t0 = time.perf_counter()
        with self._cv:
            while not self._ready:
                if not self.thread_alive:
                    raise RuntimeError("the collector thread ended without a batch or an error.")
                self._cv.wait(timeout=1.0)
            item = self._ready.popleft()
            if item is not _END and not isinstance(item, _Failure):
                self.batches += 1
                self._want += 1  # the thread starts the next batch now
                self._cv.notify_all()
        self.wait_s += time.perf_counter() - t0
        return item

    def update_policy_weights_(self) -> bool:
        """Publish the learner's current weights (and noise, eps) for the thread's next batch.

        Returns:
            ``True`` (the weights are always published; the thread applies the latest publication
            before its next batch).
        """
        with self._weights_lock:
            self._publish.copy_()
            self._version += 1
        self.published += 1
        return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the thread at a batch boundary while the block runs (eval, checkpoint).

        On entry, waits for the batch in flight to be collected (it waits, uncounted, to be
        taken after the block); no batch is started until the block ends.
        """
        with self._cv:
            self._paused = True
            while self._busy:
                self._cv.wait(timeout=1.0)
        try:
            yield
        finally:
            with self._cv:
                self._paused = False
                self._cv.notify_all()

    def shutdown(self) -> None:
        """Stop the thread (after the batch in flight, which is dropped), then the collector."""
        self._stop_thread()
        self.collector.shutdown()

    def _stop_thread(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout=_JOIN_WARN_S)
        if thread.is_alive():
            logger.warning(
                "the collector thread has not finished its batch after %.0f s; waiting on",
                _JOIN_WARN_S,
            )
            thread.join()
        dropped = sum(1 for x in self._ready if x is not _END and not isinstance(x, _Failure))
        self._ready.clear()
        if dropped:
            logger.info("overlap: dropped %d collected batch(es) not taken (not counted)", dropped)

    @property
    def thread_alive(self) -> bool:
        """Whether the collector thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ collector thread
    def _run(self) -> None:
        batches = iter(self.collector)
        while True:
            with self._cv:
                while not self._closing and (self._want == 0 or self._paused):
                    self._cv.wait()
                if self._closing:
                    return
                self._want -= 1
                self._busy = True
            try:
                version = self._apply_latest()
                with torch.no_grad():  # grad mode is per thread
                    batch = next(batches)
                self.acting_versions.append(version)
            except StopIteration:
                batch = _END
            except BaseException as err:  # re-raised in the main thread
                err.add_note("(raised in the collector thread of collector.overlap=true)")
                batch = _Failure(err)
            with self._cv:
                self._busy = False
                self._ready.append(batch)
                self._cv.notify_all()
            if batch is _END or isinstance(batch, _Failure):
                return

    def _apply_latest(self) -> int:
        """Copy the latest publication into the acting copy; return its number."""
        with self._weights_lock:
            if self._applied != self._version:
                self._apply.copy_()
                self._applied = self._version
            return self._applied

    def __getattr__(self, name: str) -> Any:
        if name == "collector":
            raise AttributeError(name)
        return getattr(self.collector, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.collector).__name__})"


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
