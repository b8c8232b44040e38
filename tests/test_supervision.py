"""Supervised collectors (issue 24): a lost worker is replaced or fails the run, never a hang.

In-process tests with stand-in collectors; tests/test_worker_faults.py kills real workers.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from torchrl_rise.training import Trainer, load_checkpoint, load_config
from torchrl_rise.training.builders import build_assembly
from torchrl_rise.training.supervision import (
    CollectionAbandoned,
    SupervisedCollector,
    WorkerLostError,
)

# A bound that turns a hang into a failure (never reached when the code works).
HANG_S = 60.0


class Workers:
    """Stands in for a multi-worker collector: yields its generation number; can lose a worker
    while collecting (``"batch"``) or pushing (``"push"``), or hang (``"hang"``, ``"push_hang"``).
    """

    built: list[Workers] = []

    def __init__(self, fault: str | None = None, *, after: int = 1) -> None:
        self.fault, self.after = fault, after
        self.dead = False
        self.released = threading.Event()
        self.batches = self.pushes = 0
        self.shut = self.killed = False
        Workers.built.append(self)

    def __iter__(self):
        while True:
            if self.fault == "batch" and self.batches == self.after:
                self.dead = True
                self.released.wait(HANG_S)  # MultiSyncCollector notices after its own poll
                raise RuntimeError("At least one process failed")
            if self.fault == "hang" and self.batches == self.after:
                self.released.wait(HANG_S)  # alive, silent
            self.batches += 1
            yield len(Workers.built)

    def update_policy_weights_(self) -> bool:
        if self.fault in ("push", "push_hang") and self.pushes == self.after:
            self.dead = self.fault == "push"
            self.released.wait(HANG_S)  # TorchRL waits for the (dead) worker's acknowledgement
        self.pushes += 1
        return True

    def worker_failure(self):
        return "collector worker 1 (exit code -9)" if self.dead else None

    def kill_workers(self):
        self.killed = True
        self.released.set()

    def shutdown(self):
        self.shut = True
        self.released.set()


def factory(*faults: str | None, after: int = 1):
    """A collector factory: the k-th build has ``faults[k]`` (later ones: none)."""
    Workers.built = []

    def make():
        k = len(Workers.built)
        return Workers(faults[k] if k < len(faults) else None, after=after)

    return make


def supervised(make, **kwargs) -> tuple[SupervisedCollector, list[bool]]:
    restarts: list[bool] = []
    opts = {"timeout_s": HANG_S, "max_restarts": 2, "poll_s": 0.05, **kwargs}
    return SupervisedCollector(make, on_restart=restarts.append, **opts), restarts


def test_a_worker_lost_while_collecting_is_replaced_and_its_batch_dropped_once():
    collector, restarts = supervised(factory("batch"))
    batches = iter(collector)
    got = [next(batches) for _ in range(3)]
    assert got == [1, 2, 2]  # batch 2 of the first collector was lost: the second one's follow
    assert restarts == [True] and collector.restarts == collector.lost_batches == 1
    first, second = Workers.built
    assert first.killed and first.shut and not second.shut
    collector.shutdown()
    assert second.shut


def test_a_worker_lost_during_the_weight_push_is_replaced_without_losing_a_batch():
    collector, restarts = supervised(factory("push", after=0))
    batches = iter(collector)
    assert next(batches) == 1
    assert collector.update_policy_weights_()  # the successor starts with the current weights
    assert restarts == [False] and collector.lost_batches == 0
    assert next(batches) == 2  # the iteration goes on with the new collector
    collector.shutdown()


def test_a_silent_worker_is_lost_after_the_timeout():
    collector, restarts = supervised(factory("hang"), timeout_s=0.3)
    batches = iter(collector)
    assert [next(batches), next(batches)] == [1, 2]
    assert restarts == [True]
    collector.shutdown()


def test_losses_beyond_max_restarts_raise_worker_lost():
    collector, restarts = supervised(factory("batch", "batch"), max_restarts=1)
    batches = iter(collector)
    with pytest.raises(WorkerLostError, match=r"1 of collector.max_restarts=1"):
        list(batches)
    assert restarts == [True]
    assert all(w.shut for w in Workers.built)
    collector.shutdown()


def test_a_failing_rebuild_raises_worker_lost():
    make = factory("batch")

    def flaky():
        if Workers.built:
            raise OSError("the cluster is gone")
        return make()

    collector, _ = supervised(flaky)
    with pytest.raises(WorkerLostError, match=r"rebuilding the collector failed.*cluster is gone"):
        list(iter(collector))
    collector.shutdown()


def test_an_error_that_is_not_a_lost_worker_is_raised_as_it_is():
    class Broken(Workers):
        def __iter__(self):
            raise ValueError("an env bug")
            yield

    collector, restarts = supervised(Broken)
    with pytest.raises(ValueError, match="an env bug"):
        next(iter(collector))
    assert restarts == []
    collector.shutdown()


@pytest.mark.parametrize("where", ["hang", "push_hang"])
def test_a_stop_request_ends_a_blocked_wait(where):
    stop = threading.Event()
    collector, restarts = supervised(factory(where, after=0), should_stop=stop.is_set)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    if where == "hang":
        with pytest.raises(CollectionAbandoned, match="stop was requested"):
            next(iter(collector))
    else:
        assert not collector.update_policy_weights_()
    assert time.monotonic() - t0 < HANG_S / 2
    assert restarts == []  # a stopping run replaces nothing
    collector.shutdown()
    assert Workers.built[0].shut


# ------------------------------------------------------------------------ the loop's window


def test_a_weight_push_failing_after_the_updates_still_gets_a_crash_checkpoint(tmp_path):
    cfg = load_config(
        {
            "method": "btr",
            "total_frames": 512,
            "env": {"suite": "memory", "env_id": "cue-L4", "num_envs": 4, "frame_size": 16},
            "network": {"kwargs": {"width_scale": 0.25, "mlp_hidden": 16}},
            "replay": {"capacity": 512, "batch_size": 8, "learning_starts": 32},
            "eval": {"episodes": 1, "num_envs": 1, "interval_frames": 10_000},
            "checkpoint": {"interval_frames": 10_000},
            "logging": {"progress": False, "root": str(tmp_path)},
        }
    )
    assembly = build_assembly(cfg)

    class PushFails:
        """The direct collector, whose 5th weight push fails (like a dead Ray actor's)."""

        def __init__(self, inner):
            self.inner, self.pushes = inner, 0

        def __iter__(self):
            return iter(self.inner)

        def update_policy_weights_(self):
            self.pushes += 1
            if self.pushes == 5:
                raise ConnectionError("the actor died")
            return self.inner.update_policy_weights_()

        def shutdown(self):
            self.inner.shutdown()

    make = assembly.make_collector
    assembly = dataclasses.replace(assembly, make_collector=lambda **kw: PushFails(make(**kw)))
    trainer = Trainer(cfg, components=assembly)
    with pytest.raises(ConnectionError):
        trainer.run()
    assert trainer.status == "failed"
    crash = sorted((trainer.run_dir / "checkpoints").glob("crash_frames_*"))
    assert len(crash) == 1
    state = load_checkpoint(crash[0])["state"]
    c = trainer.counters
    assert state["counters"]["frames"] == c.frames == c.env_steps  # frame skip 1
    assert state["counters"]["updates"] == c.updates > 0  # the failed step's updates included
    assert c.frames == 32 + 4 * 4  # learning starts after 8 batches, the 5th update batch failed
