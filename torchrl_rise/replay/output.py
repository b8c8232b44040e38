"""Output reuse and background gathers: the parts of sampling that are about where a batch is
written and when, not what it holds.

:class:`OutputRing` is a set of preallocated output buffers used in turn (``reuse_output``, the
:class:`~torchrl_rise.replay.Prefetcher`); :class:`BackgroundGather` runs assemblies on one worker
thread and lets writers wait for the ones in flight (:meth:`BackgroundGather.settle`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundGather", "OutputRing"]


class OutputRing:
    """``slots`` sets of output buffers used in turn (batch ``k`` is overwritten by ``k + slots``).

    Example:
        >>> ring = OutputRing(2)
        >>> ring.next() is ring.next(), ring.next() is ring.slots[0]
        (False, True)
    """

    def __init__(self, slots: int = 2, *, pin: bool = False) -> None:
        if slots < 1:
            raise ValueError(f"an output ring needs at least 1 slot, got {slots}.")
        self.slots: list[dict[str, Any]] = [{} for _ in range(slots)]
        self.pin = pin
        self._next = 0

    def next(self) -> dict[str, Any]:
        """The next set of buffers (filled by the assembler as it writes a batch)."""
        out = self.slots[self._next]
        self._next = (self._next + 1) % len(self.slots)
        return out


class BackgroundGather:
    """One worker thread that assembles batches, and the futures still in flight.

    Example:
        >>> gathers = BackgroundGather()
        >>> gathers.submit(lambda x: x + 1, 1).result()
        2
        >>> gathers.close()
    """

    def __init__(self) -> None:
        self._pending: list[concurrent.futures.Future] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the worker thread."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="rise-replay-gather"
            )
        future = self._executor.submit(fn, *args)
        self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def settle(self) -> None:
        """Wait for every background gather (before anything writes to the storage)."""
        pending, self._pending = self._pending, []
        for future in pending:
            with contextlib.suppress(Exception):  # its error is raised to whoever holds it
                future.result()

    def close(self) -> None:
        """Wait for the gathers in flight and stop the worker thread."""
        self.settle()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
