"""collector.overlap: collection in a thread, learning in the main thread, counters exact.

The runs are the memory recipe on the tiny preset (frame skip 1, 4 envs: one batch is 4 frames,
one update per batch once ``replay.learning_starts`` transitions are stored).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import traceback
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torch import nn

from tests.helpers import (
    CONFIG_DIR,
    TINY_NET,
    child_env,
    needs_memory,
    recipe_cmd,
    signal_once_logging,
)
from torchrl_rise.training import ConfigError, Trainer, load_checkpoint, load_config
from torchrl_rise.training.builders import build_assembly, build_components
from torchrl_rise.training.checkpoint import list_checkpoints
from torchrl_rise.training.collectors import acting_copy
from torchrl_rise.training.overlap import OverlappedCollector

NUM_ENVS = 4
LEARNING_STARTS = 64
BASE = [
    "preset=tiny",
    "env.env_id=cue-L6",
    "env.frame_size=16",
    f"env.num_envs={NUM_ENVS}",
    f"replay.learning_starts={LEARNING_STARTS}",
    "replay.batch_size=8",
    "total_frames=512",
    "checkpoint.interval_frames=64",
    "eval.interval_frames=256",
    "logging.interval_frames=128",
]
THREAD_NAME = "torchrl_rise-collector"


def _cfg(run: Path, *overrides: str, overlap: bool = True):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(
            compose(
                config_name="memory",
                overrides=[
                    *BASE,
                    f"logging.run_dir={run}",
                    f"collector.overlap={str(overlap).lower()}",
                    *overrides,
                ],
            )
        )


def _collector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _expected_updates(iterations: int) -> int:
    """Sync loop's count: one update per vector step from the batch reaching learning_starts."""
    first = LEARNING_STARTS // NUM_ENVS  # the batch whose steps reach learning_starts
    return max(0, iterations - first + 1)


def _trainer_capturing(cfg) -> tuple[Trainer, list]:
    """A trainer whose collector is kept in the returned list once built."""
    parts = build_assembly(cfg)
    built: list = []
    real = parts.make_collector

    def make_collector(**kwargs):
        built.append(real(**kwargs))
        return built[-1]

    parts.make_collector = make_collector
    return Trainer(cfg, components=parts), built


def _stop_after(trainer: Trainer, batches: int) -> None:
    """Request a stop while the loop stores batch ``batches`` (as a signal would)."""
    track = trainer._track_episodes

    def tracking(batch, env_info):
        track(batch, env_info)
        if trainer.counters.iterations + 1 == batches:  # counted right after this call
            trainer.request_stop("test")

    trainer._track_episodes = tracking


def _replay_records(cfg, ckpt: Path, scratch: Path) -> int:
    """Records written to the checkpoint's replay: one per step plus one per finished episode."""
    comps = build_components(cfg, scratch_dir=scratch)
    try:
        comps.replay.loads(load_checkpoint(ckpt)["replay_dir"])
        return int(comps.replay._lane_next.sum())  # lane cursors (never wrapped here)
    finally:
        comps.replay.close()


# ------------------------------------------------------------------------------ unit


class _StubCollector:
    """Acts with ``policy`` (its weight is recorded per batch); ``n`` batches, then stops."""

    def __init__(self, policy: nn.Module, n: int, *, fail_at: int | None = None) -> None:
        self.policy = policy
        self.n = n
        self.fail_at = fail_at
        self.started = 0
        self.shut = False

    def __iter__(self):
        for i in range(self.n):
            self.started += 1
            if i == self.fail_at:
                raise ValueError("env exploded")
            yield TensorDict({"w": self.policy.weight.detach().clone().view(1)}, [1])

    def shutdown(self) -> None:
        self.shut = True


def _overlapped(n: int, **kwargs) -> tuple[OverlappedCollector, nn.Module, _StubCollector]:
    learner = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        learner.weight.fill_(0.0)
    acting = acting_copy(learner)
    stub = _StubCollector(acting, n, **kwargs)
    return OverlappedCollector(stub, policy=learner, acting_policy=acting), learner, stub


def test_acting_policy_is_at_most_one_batch_staler_than_sync():
    overlapped, learner, stub = _overlapped(40)
    seen = []
    for batch in overlapped:
        seen.append(batch["w"].item())
        time.sleep(0.005)  # an update's worth of work
        with torch.no_grad():
            learner.weight.add_(1.0)  # after batch k the learner holds k updates
        overlapped.update_policy_weights_()
    overlapped.shutdown()
    assert overlapped.batches == 40 and overlapped.published == 40 and stub.shut
    # sync: batch k acts with k - 1 updates; overlapped: k - 2 or k - 1 (never older, never newer)
    assert seen[0] == 0.0
    for k, w in enumerate(seen[1:], start=2):
        assert k - 2 <= w <= k - 1, (k, w)
    # batches collected while the main thread was still "updating" on the previous one
    assert sum(w == k - 2 for k, w in enumerate(seen[1:], start=2)) >= 20
    assert list(overlapped.acting_versions) == seen
    assert not overlapped.thread_alive and not _collector_threads()


def test_pause_holds_the_thread_at_a_batch_boundary():
    overlapped, _, stub = _overlapped(10)
    batches = iter(overlapped)
    next(batches)
    with overlapped.paused():
        started = stub.started
        time.sleep(0.2)
        assert stub.started == started <= 2  # the batch in flight finished, no new one began
    next(batches)  # the waiting batch is taken after the pause
    overlapped.shutdown()
    assert not _collector_threads()


def test_shutdown_drops_the_batch_not_taken_and_joins_the_thread():
    overlapped, _, stub = _overlapped(10)
    batches = iter(overlapped)
    next(batches)
    deadline = time.monotonic() + 30
    while stub.started < 2 and time.monotonic() < deadline:  # batch 2, which nobody takes
        time.sleep(0.01)
    overlapped.shutdown()
    assert overlapped.batches == 1 and stub.started == 2 and stub.shut
    assert not overlapped.thread_alive
    with pytest.raises(RuntimeError, match="shut down"):
        next(iter(overlapped))


def test_a_collector_thread_error_is_raised_in_the_main_thread_with_its_traceback():
    overlapped, _, _ = _overlapped(10, fail_at=3)
    taken = 0
    with pytest.raises(ValueError, match="env exploded") as info:
        for _ in overlapped:
            taken += 1
    assert taken == 3
    text = "".join(traceback.format_exception(info.value))
    assert "_StubCollector.__iter__" in text or "in __iter__" in text
    assert "raised in the collector thread" in text
    assert not overlapped.thread_alive and not _collector_threads()
    overlapped.shutdown()


def test_the_exhausted_collector_ends_the_iteration():
    overlapped, _, _ = _overlapped(3)
    assert len(list(overlapped)) == 3
    overlapped.shutdown()
    assert not _collector_threads()


def test_acting_with_the_learners_own_module_is_refused():
    learner = nn.Linear(1, 1)
    with pytest.raises(ValueError, match="acting_copy"):
        OverlappedCollector(_StubCollector(learner, 1), policy=learner, acting_policy=learner)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["collector.backend=multi_sync", "collector.num_workers=2"], "not supported with it"),
        (["method=rise", "encoder.name=online"], "learning CNN"),
    ],
)
def test_overlap_config_limits_are_explained(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path / "run", *overrides)


# ------------------------------------------------------------------------------ runs


@needs_memory
@pytest.mark.parametrize("method", ["btr", "rise", "recurrent"])
def test_overlapped_run_keeps_the_sync_counters_and_replay_ratio(tmp_path, method):
    runs = {}
    # the sync loop is run beside it for btr; the others are checked against the same formula
    for overlap in (False, True) if method == "btr" else (True,):
        cfg = _cfg(tmp_path / f"run-{overlap}", f"method={method}", overlap=overlap)
        trainer, built = _trainer_capturing(cfg)
        summary = trainer.run()
        assert summary["status"] == "finished"
        runs[overlap] = (trainer, built[0])
    over, collector = runs[True]
    if False in runs:
        sync = runs[False][0]
        assert not isinstance(runs[False][1], OverlappedCollector)
        for key in ("frames", "env_steps", "iterations", "updates"):
            assert getattr(over.counters, key) == getattr(sync.counters, key), key
        assert sync.counters.updates == _expected_updates(sync.counters.iterations)
    c = over.counters
    assert c.frames == 512 and c.iterations == 512 // NUM_ENVS
    assert c.updates == _expected_updates(c.iterations)  # the replay ratio, exactly
    assert isinstance(collector, OverlappedCollector)
    assert collector.collector.policy is collector.acting_policy  # TorchRL acts with our copy
    assert collector.batches == c.iterations and collector.published == c.iterations
    versions = list(collector.acting_versions)
    assert all(k - 2 <= v <= k - 1 for k, v in enumerate(versions[1:], start=2))
    assert not collector.thread_alive and not _collector_threads()
    state = load_checkpoint(over.run_dir)["state"]
    assert state["counters"]["updates"] == c.updates and state["counters"]["frames"] == 512


@needs_memory
def test_overlapped_stop_checkpoints_hold_what_they_count_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(run, "method=btr", "checkpoint.keep=10")
    trainer = Trainer(cfg)
    _stop_after(trainer, 50)
    summary = trainer.run()
    assert summary["status"] == "interrupted"
    c = trainer.counters
    assert (c.iterations, c.frames, c.env_steps) == (50, 200, 200)
    assert c.updates == _expected_updates(50)
    assert not _collector_threads()
    # Every checkpoint (periodic ones written while the thread ran, and the stop's) holds
    # exactly the batches its counters count: no batch half accounted, none collected uncounted.
    ckpts = list_checkpoints(run)
    assert len(ckpts) >= 3
    for i, ckpt in enumerate(ckpts):
        counters = load_checkpoint(ckpt)["state"]["counters"]
        records = _replay_records(cfg, ckpt, tmp_path / f"scratch{i}")
        assert records == counters["env_steps"] + counters["episodes"], ckpt.name
        assert counters["frames"] == counters["iterations"] * NUM_ENVS
    assert load_checkpoint(run)["state"]["counters"]["frames"] == 200

    resumed = Trainer(_cfg(run, "method=btr", "resume=true"))
    summary = resumed.run()
    assert summary["status"] == "finished" and summary["frames"] == 512
    r = resumed.counters
    assert (r.frames, r.env_steps, r.iterations) == (512, 512, 128)
    assert r.updates == _expected_updates(128)  # as one uninterrupted sync run
    assert resumed.resumed_from is not None and not _collector_threads()


class _Raising:
    """Wraps the overlapped collector's inner collector: ``n`` batches, then an error."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n = inner, n

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.n:
                raise RuntimeError("the env worker crashed")
            yield batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


@needs_memory
def test_a_collector_thread_error_fails_the_run_and_leaves_no_thread(tmp_path):
    cfg = _cfg(tmp_path / "run", "method=btr")
    parts = build_assembly(cfg)
    real = parts.make_collector

    def make_collector(**kwargs):
        overlapped = real(**kwargs)
        overlapped.collector = _Raising(overlapped.collector, 30)
        return overlapped

    parts.make_collector = make_collector
    trainer = Trainer(cfg, components=parts)
    with pytest.raises(RuntimeError, match="env worker crashed") as info:
        trainer.run()
    text = "".join(traceback.format_exception(info.value))
    assert "_Raising.__iter__" in text or "in __iter__" in text
    assert "raised in the collector thread" in text
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "env worker crashed" in summary["reason"]
    assert summary["frames"] == 30 * NUM_ENVS
    # the error came at a batch boundary: the state is consistent, a crash checkpoint exists
    crash = list((trainer.run_dir / "checkpoints").glob("crash_frames_*"))
    assert len(crash) == 1
    assert load_checkpoint(crash[0])["state"]["counters"]["frames"] == 30 * NUM_ENVS
    assert not _collector_threads()


@needs_memory
def test_a_learner_error_stops_the_collector_thread(tmp_path, monkeypatch):
    from torchrl_rise.training.learner import Learner

    def broken(self, n_updates=1):
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(Learner, "update", broken)
    trainer = Trainer(_cfg(tmp_path / "run", "method=btr"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.run()
    assert trainer.status == "failed"
    assert not _collector_threads()


@needs_memory
def test_sigterm_stops_an_overlapped_run_at_a_step_boundary(tmp_path):
    run = tmp_path / "run"
    cmd = recipe_cmd(
        "memory",
        *BASE,
        "method=btr",
        "collector.overlap=true",
        "total_frames=10_000_000",
        "eval.interval_frames=10_000_000",
        "checkpoint.interval_frames=10_000_000",
        "logging.interval_frames=64",
        f"logging.run_dir={run}",
    )
    returncode, out = signal_once_logging(
        cmd, run, signal.SIGTERM, cwd=tmp_path, env=child_env(), wait_s=120, poll_s=0.1
    )
    assert returncode == 0, out.decode()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["reason"]
    counters = load_checkpoint(run)["state"]["counters"]
    assert counters["frames"] == summary["frames"] == counters["iterations"] * NUM_ENVS
    assert counters["updates"] == _expected_updates(counters["iterations"])


# ------------------------------------------------------------------------------ replay.prefetch


def _learner_parts(prioritized: bool, seed: int = 0):
    from torchrl_rise.modules import make_q_network
    from torchrl_rise.objectives import HardTargetUpdate, IQNLoss
    from torchrl_rise.replay import RiseReplayBuffer
    from torchrl_rise.training.learner import build_learner_optimizer

    torch.manual_seed(seed)
    net = make_q_network("btr", num_actions=3, frame_size=(16, 16), spectral_norm=False, **TINY_NET)
    loss = IQNLoss(net)
    rb = RiseReplayBuffer(
        64,
        1,
        frame_shape=(1, 16, 16),
        context_length=0,
        batch_size=4,
        prioritized=prioritized,
        seed=seed,
    )
    g = torch.Generator().manual_seed(seed)
    T = 40
    rb.extend(
        TensorDict(
            {
                "pixels": torch.randint(0, 255, (T, 4, 16, 16), dtype=torch.uint8, generator=g),
                "action": torch.randint(0, 3, (T,), generator=g),
                ("next", "reward"): torch.randn(T, 1, generator=g),
                ("next", "terminated"): torch.zeros(T, 1, dtype=torch.bool),
                ("next", "truncated"): torch.zeros(T, 1, dtype=torch.bool),
            },
            [T],
        )
    )
    opt = build_learner_optimizer(loss, lr=1e-3, eps=1.95e-5)
    return loss, opt, rb, HardTargetUpdate(loss, interval=3)


@pytest.mark.parametrize("prefetch", [False, True])
def test_prefetched_batches_are_drawn_before_the_previous_priorities(prefetch):
    from torchrl_rise.training.learner import Learner

    loss, opt, rb, updater = _learner_parts(prioritized=True)
    events = []
    draw, write = rb._draw, rb.update_tensordict_priority
    rb._draw = lambda *a: events.append("draw") or draw(*a)
    rb.update_tensordict_priority = lambda td: events.append("priorities") or write(td)
    learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0, prefetch=prefetch)
    learner.update(3)
    learner.close()
    rb.close()
    if prefetch:  # batch k + 1 drawn when batch k is handed out, before k's priorities
        assert events == ["draw", "draw", "priorities", "draw", "priorities", "draw", "priorities"]
    else:
        assert events == ["draw", "priorities"] * 3


def test_prefetch_changes_nothing_with_uniform_sampling():
    from torchrl_rise.training.learner import Learner

    params = {}
    for prefetch in (False, True):
        loss, opt, rb, updater = _learner_parts(prioritized=False)
        torch.manual_seed(1)  # the noise the updates resample
        learner = Learner(loss, opt, rb, updater, device="cpu", grad_clip=10.0, prefetch=prefetch)
        learner.update(5)
        learner.close()
        rb.close()
        params[prefetch] = {k: v.detach().clone() for k, v in loss.named_parameters()}
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=0, atol=0, msg=name)


def test_prefetch_needs_an_async_replay():
    from torchrl_rise.training.learner import Learner

    loss, opt, rb, updater = _learner_parts(prioritized=False)

    class Plain:
        def sample(self):
            return rb.sample()

        def update_tensordict_priority(self, td):
            pass

    with pytest.raises(TypeError, match="sample_async"):
        Learner(loss, opt, Plain(), updater, device="cpu", grad_clip=1.0, prefetch=True)
    rb.close()


@needs_memory
def test_an_overlapped_run_with_replay_prefetch_keeps_its_counters(tmp_path):
    trainer = Trainer(_cfg(tmp_path / "run", "method=rise", "replay.prefetch=true"))
    summary = trainer.run()
    assert summary["status"] == "finished"
    c = trainer.counters
    assert (c.frames, c.iterations) == (512, 128) and c.updates == _expected_updates(128)
    assert not _collector_threads()


@needs_memory
def test_overlap_with_a_collector_that_does_not_overlap_is_refused(tmp_path):
    cfg = _cfg(tmp_path / "run", "method=btr")
    parts = build_assembly(cfg)
    real = parts.make_collector
    parts.make_collector = lambda **kwargs: real(**kwargs).collector  # the bare inner collector
    with pytest.raises(ConfigError, match="not an OverlappedCollector"):
        Trainer(cfg, components=parts).run()
    assert not _collector_threads()


class _Slow:
    """Wraps the overlapped collector's inner collector: each batch takes ``delay`` seconds more."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __iter__(self):
        for batch in self.inner:
            time.sleep(self.delay)
            yield batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


@needs_memory
def test_evaluations_and_checkpoints_run_with_the_thread_held(tmp_path, monkeypatch):
    from torchrl_rise.training import loop

    cfg = _cfg(
        tmp_path / "run",
        "method=btr",
        "total_frames=256",
        "eval.interval_frames=64",
        "checkpoint.interval_frames=64",
    )
    parts = build_assembly(cfg)
    built = []
    real_make = parts.make_collector

    def make_collector(**kwargs):
        built.append(real_make(**kwargs))
        # slower collection than the main thread's step: a batch is in flight at each boundary
        built[-1].collector = _Slow(built[-1].collector, 0.03)
        return built[-1]

    parts.make_collector = make_collector
    trainer = Trainer(cfg, components=parts)
    seen = []

    def watching(real):
        def call(*args, **kwargs):
            collector = built[0]
            busy, collected = collector._busy, len(collector.acting_versions)
            out = real(*args, **kwargs)
            # no batch in flight at the start, none collected meanwhile (the final evaluation
            # and checkpoint run after the thread is gone)
            seen.append((busy, len(collector.acting_versions) - collected))
            return out

        return call

    monkeypatch.setattr(loop, "evaluate", watching(loop.evaluate))
    monkeypatch.setattr(trainer, "_save", watching(trainer._save))
    assert trainer.run()["status"] == "finished"
    # 3 periodic evaluations and checkpoints (at 64, 128, 192 frames) + the final ones
    assert len(seen) == 8 and seen == [(False, 0)] * 8
