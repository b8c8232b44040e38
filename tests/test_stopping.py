"""Unit tests of torchrl_rise.training.stopping: stop requests, signals, batches after a stop."""

from __future__ import annotations

import os
import signal

import pytest

from torchrl_rise.training.stopping import (
    StopControl,
    StoppableBatches,
    ignore_sigint,
    run_outcome,
)


def test_the_first_reason_is_kept():
    stop = StopControl()
    assert not stop.requested and stop.reason is None
    stop.request("SIGTERM")
    stop.request("requested")
    assert stop.requested and stop.reason == "SIGTERM"


def test_signals_only_set_the_flag_and_the_handlers_are_restored():
    stop = StopControl()
    before = signal.getsignal(signal.SIGTERM)
    with stop.handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.reason == "SIGTERM" and stop.signals == 1
        os.kill(os.getpid(), signal.SIGINT)  # the second one: still no exception
        assert stop.signals == 2 and stop.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_ignore_sigint_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with ignore_sigint():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before


def _dying(n):
    yield from range(n)
    raise RuntimeError("worker died")


def test_a_collector_failing_after_a_stop_ends_the_batches():
    stop = StopControl()
    batches = StoppableBatches(_dying(2), stop)
    seen = []
    for batch in batches:
        seen.append(batch)
        stop.request("SIGTERM")
    assert seen == [0, 1] and batches.failed_after_stop  # the loop breaks on a stop, not this


def test_a_collector_failing_without_a_stop_fails_the_run():
    batches = StoppableBatches(_dying(2), StopControl())
    with pytest.raises(RuntimeError, match="worker died"):
        list(batches)
    assert not batches.failed_after_stop
    assert list(StoppableBatches(range(3), StopControl())) == [0, 1, 2]


def test_run_outcome():
    stop = StopControl()
    assert run_outcome(None, complete=True, stop=stop) == ("finished", None)
    assert run_outcome(None, complete=False, stop=stop) == ("interrupted", "stop requested (None)")
    stop.request("SIGINT")
    assert run_outcome(None, complete=True, stop=stop) == (
        "interrupted",
        "stop requested (SIGINT)",
    )
    assert run_outcome(ValueError("bad"), complete=False, stop=stop) == (
        "failed",
        "ValueError: bad",
    )
