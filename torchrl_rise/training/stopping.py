"""Stop requests: :meth:`StopControl.request`, SIGINT and SIGTERM all end a run at a step boundary.

A signal only sets a flag, so a stop always lands on a step boundary and is checkpointed: the
first signal finishes the current step, then checkpoints; a second one also skips what is left
(the final evaluation); a third exits at once without saving (after killing the collector's
workers, so that none is orphaned). :class:`StoppableBatches` lets a collector that fails after a
stop request end the run as stopped rather than failed; :func:`run_outcome` is the status a run
ends with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from torchrl_rise.training.supervision import kill_all_workers

__all__ = ["StopControl", "StoppableBatches", "ignore_sigint", "run_outcome"]

logger = logging.getLogger(__name__)


class StopControl:
    """Whether a stop was requested (by a call or a signal), and why.

    Example:
        >>> stop = StopControl()
        >>> stop.request("test"); stop.request("later")
        >>> stop.requested, stop.reason
        (True, 'test')
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.signals = 0  # SIGINT/SIGTERM received while handle_signals() was active

    def request(self, reason: str = "requested") -> None:
        """Stop after the current step; the first reason is the one reported."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    @contextlib.contextmanager
    def handle_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop while this lasts (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only flags: raising here would break a step (extend, optimizer.step) in the middle.
        name = signal.Signals(signum).name
        self.signals += 1
        if self.signals == 1:
            logger.warning(
                "%s received: finishing the current step, then checkpointing (send it again "
                "to skip what is left, e.g. the final evaluation; a third time exits at once "
                "without saving)",
                name,
            )
            self.request(name)
        elif self.signals == 2:
            logger.warning(
                "second signal (%s): stopping at the next step boundary, skipping the rest",
                name,
            )
            self.request(name)
        else:
            os.write(2, f"third signal ({name}): exiting now, without saving\n".encode())
            kill_all_workers()  # no orphaned collector workers
            os._exit(128 + signum)


@contextlib.contextmanager
def ignore_sigint() -> Iterator[None]:
    """Ignore SIGINT while this lasts (processes started meanwhile inherit it); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StoppableBatches:
    """A collector's batches; an error after a stop request ends them instead of the run.

    A scheduler's SIGTERM often reaches the collector's worker processes too, which then die
    while this process is still finishing its step: the collector fails at the next batch, at a
    step boundary, and the stop goes on as requested (checkpoint, ``interrupted``).

    Args:
        collector: any iterable of batches.
        stop: the run's stop requests.

    Example:
        >>> def failing():
        ...     yield 1
        ...     raise RuntimeError("worker died")
        >>> stop = StopControl()
        >>> batches = StoppableBatches(failing(), stop)
        >>> for batch in batches:
        ...     stop.request("SIGTERM")  # the signal reached the workers, too
        >>> batches.failed_after_stop
        True
    """

    def __init__(self, collector: Any, stop: StopControl) -> None:
        self.collector = collector
        self.stop = stop
        self.failed_after_stop = False

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.collector)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:
                if not self.stop.requested:
                    raise
                logger.warning(
                    "the collector failed after the stop request (%s: %s), e.g. its workers got "
                    "the signal too; stopping here",
                    type(err).__name__,
                    err,
                )
                self.failed_after_stop = True
                return
            yield batch


def run_outcome(
    error: BaseException | None, *, complete: bool, stop: StopControl
) -> tuple[str, str | None]:
    """A run's ``status`` and ``reason`` for ``summary.json``.

    Example:
        >>> run_outcome(None, complete=True, stop=StopControl())
        ('finished', None)
        >>> run_outcome(KeyboardInterrupt("x"), complete=False, stop=StopControl())
        ('interrupted', 'KeyboardInterrupt: x')
    """
    if error is None:
        if complete and not stop.requested:
            return "finished", None
        return "interrupted", f"stop requested ({stop.reason})"
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    return status, f"{type(error).__name__}: {error}"
