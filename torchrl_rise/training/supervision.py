"""Supervision of multi-worker collectors: a dead or silent worker is replaced, a stop is honoured.

The training loop waits on its collector twice per step: for the next batch and, after an update
batch, for the weight push. With ``collector.backend=multi_sync`` or ``ray`` both waits depend on
other processes, and TorchRL waits on some of them without a bound (a ``MultiSyncCollector``
weight push waits forever for the acknowledgement of a worker that was killed).
:class:`SupervisedCollector` makes every such wait bounded:

- the call runs on a helper thread while the loop's thread polls, every ``poll_s`` seconds,
  whether a stop was requested (SIGTERM, SIGINT, ``Trainer.request_stop``), whether every worker
  process is alive (``worker_failure()`` of the collector) and whether ``timeout_s`` has passed;
- a dead worker (a worker process that exited, a Ray actor that died) or a wait longer than
  ``timeout_s`` is a *worker loss*: the whole collector is shut down (its remaining workers are
  killed if they do not exit) and rebuilt from its factory, and collection goes on;
- a stop request ends the wait at once: the batch in flight is dropped and never counted, a weight
  push in flight is abandoned (the run is stopping; the checkpoint holds the learner's weights).

What is counted: a batch counts (frames, env steps, iterations, replay) only once it was handed to
the loop, which stores it. The batch in flight when a worker is lost was never handed out: it is
dropped, counted once in ``on_restart(lost_batch=True)`` and never in the frames. A loss during
a weight push drops nothing (the last batch is stored, the next one was not asked for yet):
``lost_batch=False``. The rebuilt workers start fresh episodes and act with the weights the
factory gives them (the learner's current ones); ``on_restart`` is where the loop closes the
replay's open episodes so that nothing is spliced across the restart.

After ``max_restarts`` replacements, or when the factory itself fails, :class:`WorkerLostError`
is raised from the loop's wait, at a step boundary: the run fails with a crash checkpoint of a
consistent state.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from torchrl_rise.training.collectors import is_worker_loss

__all__ = [
    "CollectionAbandoned",
    "SupervisedCollector",
    "WorkerLostError",
    "keep_signal_handlers",
    "kill_all_workers",
    "supervise",
]

logger = logging.getLogger(__name__)

_END = object()  # the wrapped collector stopped yielding batches
# How long a shutdown lets a call in flight end by itself before shutting down under it.
_GRACE_S = 1.5
_LIVE: weakref.WeakSet[SupervisedCollector] = weakref.WeakSet()


class WorkerLostError(RuntimeError):
    """A collector worker died or stopped answering, and could not be replaced."""


class CollectionAbandoned(RuntimeError):
    """A stop request ended a wait on the collector (the batch in flight is dropped)."""


class _Lost(Exception):
    """Internal: a worker was lost during a wait (``what`` says which and how)."""


class _Caller:
    """One daemon thread that runs the blocking calls on one collector, one at a time.

    A call stuck on a dead worker may never return; the thread is then left behind, blocked,
    with the collector it belongs to (a daemon thread does not hold the interpreter's exit).
    """

    def __init__(self, name: str) -> None:
        self._jobs: list[tuple[Future, Callable[[], Any]] | None] = []
        self._cv = threading.Condition()
        self._busy: Future | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._cv:
            self._jobs.append((future, fn))
            self._cv.notify_all()
        return future

    def close(self) -> None:
        with self._cv:
            self._jobs.append(None)
            self._cv.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the call in flight (if any) to end; return whether it did."""
        future = self._busy
        if future is None:
            return True
        try:
            future.exception(timeout=timeout)
        except (FutureTimeout, Exception):
            return future.done()
        return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job = self._jobs.pop(0)
            if job is None:
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            self._busy = future
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the waiting thread
                future.set_exception(err)
            finally:
                self._busy = None


class SupervisedCollector:
    """A multi-worker collector whose waits are bounded and whose lost workers are replaced.

    Args:
        make: builds the collector (``__iter__``, ``update_policy_weights_()``, ``shutdown()``;
            optionally ``worker_failure() -> str | None`` and ``kill_workers()``, which
            :class:`~torchrl_rise.training.collectors.LaneOrderedCollector` has). Called once
            now and once per replacement.

    Keyword Args:
        timeout_s: the longest wait for a batch or a weight push (``None``: no bound; deaths
            and stop requests are still noticed).
        max_restarts: replacements allowed; one more loss raises :class:`WorkerLostError`.
        should_stop: polled while waiting; ``True`` abandons the wait.
        on_restart: called after each replacement with ``lost_batch`` (whether a batch in
            flight was dropped).
        poll_s: how often a wait checks the stop request, the workers and the deadline.

    Example:
        >>> class Dies:  # stands in for a multi-worker collector; the first one loses a worker
        ...     built = 0
        ...     def __init__(self):
        ...         Dies.built += 1
        ...         self.dead = Dies.built == 1
        ...     def __iter__(self):
        ...         while True:
        ...             if self.dead:
        ...                 raise RuntimeError("worker 1 died")
        ...             yield Dies.built
        ...     def worker_failure(self):
        ...         return "worker 1 (exit code -9)" if self.dead else None
        ...     def update_policy_weights_(self):
        ...         return True
        ...     def shutdown(self):
        ...         pass
        >>> restarts = []
        >>> collector = SupervisedCollector(Dies, timeout_s=10, max_restarts=1,
        ...                                 on_restart=restarts.append)
        >>> batches = iter(collector)
        >>> next(batches), restarts, collector.restarts
        (2, [True], 1)
        >>> collector.shutdown()
    """

    def __init__(
        self,
        make: Callable[[], Any],
        *,
        timeout_s: float | None,
        max_restarts: int,
        should_stop: Callable[[], bool] = lambda: False,
        on_restart: Callable[[bool], None] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self._make = make
        self.timeout_s = timeout_s
        self.max_restarts = int(max_restarts)
        self._should_stop = should_stop
        self._on_restart = on_restart
        self.poll_s = float(poll_s)
        self.restarts = 0
        self.lost_batches = 0
        self.generation = 0
        self.collector = make()
        self._caller = _Caller(f"torchrl_rise-collector-calls-{self.generation}")
        self._closed = False
        _LIVE.add(self)

    # ------------------------------------------------------------------ the loop's contract
    def __iter__(self) -> Iterator[Any]:
        generation, batches = -1, None
        while True:
            if generation != self.generation:  # built or replaced since: its own iterator
                generation, batches = self.generation, iter(self.collector)
            try:
                batch = self._wait(lambda it=batches: next(it, _END), "a batch")
            except _Lost as lost:
                if self._should_stop():
                    raise CollectionAbandoned(f"{lost} after the stop request") from None
                self._replace(str(lost), lost_batch=True)
                continue
            if batch is _END:
                return
            yield batch

    def update_policy_weights_(self) -> bool:
        """Push the weights; a lost worker is replaced (its successor starts with them)."""
        try:
            return bool(self._wait(self.collector.update_policy_weights_, "the weight push"))
        except CollectionAbandoned:
            logger.warning("weight push abandoned: a stop was requested while it waited")
            return False
        except _Lost as lost:
            if self._should_stop():
                logger.warning("%s after the stop request; not replaced", lost)
                return False
            self._replace(str(lost), lost_batch=False)
            return True

    def shutdown(self) -> None:
        """Shut the collector down, bounded; kill its workers if they do not exit."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        self._shutdown_current()

    # ------------------------------------------------------------------ waiting
    def _wait(self, fn: Callable[[], Any], what: str) -> Any:
        future = self._caller.submit(fn)
        start = time.monotonic()
        while True:
            try:
                return future.result(timeout=self.poll_s)
            except FutureTimeout:
                pass
            except Exception as err:
                failure = self._failure()
                if failure is not None or is_worker_loss(err):
                    raise _Lost(
                        f"{failure or 'a worker'} was lost while the loop waited for {what} "
                        f"({type(err).__name__}: {err})"
                    ) from err
                raise
            if self._should_stop():
                raise CollectionAbandoned(f"a stop was requested while waiting for {what}")
            failure = self._failure()
            if failure is not None:
                raise _Lost(f"{failure} died while the loop waited for {what}")
            waited = time.monotonic() - start
            if self.timeout_s is not None and waited > self.timeout_s:
                raise _Lost(
                    f"no answer after {waited:.0f} s waiting for {what} "
                    f"(collector.timeout_s={self.timeout_s:g}): a worker hangs"
                )

    def _failure(self) -> str | None:
        probe = getattr(self.collector, "worker_failure", None)
        if probe is None:
            return None
        try:
            return probe()
        except Exception as err:  # a probe must never break the wait
            logger.debug("worker liveness probe failed: %s", err)
            return None

    # ------------------------------------------------------------------ replacing
    def _replace(self, what: str, *, lost_batch: bool) -> None:
        self.lost_batches += int(lost_batch)
        if self.restarts >= self.max_restarts:
            self._shutdown_current(kill_first=True)
            raise WorkerLostError(
                f"{what}; {self.restarts} of collector.max_restarts={self.max_restarts} "
                "replacements already used, so the run stops here. Check the workers' logs "
                "(out of memory? a crashing env?), then resume with resume=true."
            )
        logger.error(
            "COLLECTOR WORKER LOST: %s. Rebuilding the collector (replacement %d of %d)%s",
            what,
            self.restarts + 1,
            self.max_restarts,
            "; the batch in flight is dropped, not counted" if lost_batch else "",
        )
        self._shutdown_current(kill_first=True)
        try:
            self.collector = self._make()
        except Exception as err:
            raise WorkerLostError(
                f"{what}, and rebuilding the collector failed ({type(err).__name__}: {err})"
            ) from err
        self.restarts += 1
        self.generation += 1
        self._caller = _Caller(f"torchrl_rise-collector-calls-{self.generation}")
        if self._on_restart is not None:
            self._on_restart(lost_batch)
        logger.warning("collector rebuilt; collection goes on with fresh envs in every worker")

    def _shutdown_current(self, *, kill_first: bool = False) -> None:
        """Shut the current collector down; ``kill_first``: it is being replaced, no grace."""
        collector, caller = self.collector, self._caller
        caller.idle(_GRACE_S)  # a call failing on a dead worker usually ends by itself
        caller.close()
        if kill_first:  # a graceful MultiSyncCollector shutdown waits 8 s for its workers
            _kill(collector)
        try:
            collector.shutdown()  # bounded: TorchRL's own shutdowns end with a kill
        except Exception as err:
            logger.warning("collector shutdown failed (%s); killing its workers", err)
        _kill(collector)

    def __getattr__(self, name: str) -> Any:
        if name == "collector":
            raise AttributeError(name)
        return getattr(self.collector, name)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.collector!r}, restarts={self.restarts}, "
            f"timeout_s={self.timeout_s})"
        )


def _kill(collector: Any) -> None:
    kill = getattr(collector, "kill_workers", None)
    if kill is None:
        return
    try:
        kill()
    except Exception as err:
        logger.warning("could not kill the collector's workers: %s", err)


def kill_all_workers() -> None:
    """Kill the workers of every live supervised collector now (for an immediate exit)."""
    for supervised in list(_LIVE):
        _kill(supervised.collector)


def supervise(
    options: Any,
    make: Callable[[], Any],
    *,
    should_stop: Callable[[], bool],
    on_restart: Callable[[bool], None] | None = None,
) -> Any:
    """``make()``, supervised for the multi-worker backends (``options``: ``cfg.collector``).

    ``direct`` steps its envs in this process: nothing to supervise, ``make()`` as it is.
    """
    if options.backend == "direct":
        return make()
    return SupervisedCollector(
        make,
        timeout_s=options.timeout_s,
        max_restarts=options.max_restarts,
        should_stop=should_stop,
        on_restart=on_restart,
    )


@contextlib.contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Restore this process's SIGINT/SIGTERM handlers after the block (a collector's build).

    ``ray.init`` installs its own SIGTERM handler in the driver, which exits at once
    (``SystemExit``, no checkpoint) instead of the trainer's stop at a step boundary.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            if handler is not None and signal.getsignal(s) is not handler:
                logger.debug("restoring the %s handler a collector replaced", s.name)
                signal.signal(s, handler)
