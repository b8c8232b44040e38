"""Collector workers killed under a real training process (issue 24): no hang, no lost counts.

The child is the memory recipe on a tiny config with ``collector.backend=multi_sync`` and two
worker processes. One worker is killed ``-9`` mid-run (the run must rebuild the collector and
finish with exact counters), or stopped with SIGSTOP so that the trainer blocks waiting on it
(a SIGTERM must still end the run, bounded, with a checkpoint). Before supervision both hung
forever. The timeouts below only turn such a hang into a failure.

The Ray tests run in this process on a local cluster (2 CPUs, no dashboard, skipped without ray)
and kill one ``RemoteCollector`` actor's process ``-9`` right before a weight push, after the
step's extend and updates: the run rebuilds the collector, or with ``collector.max_restarts=0``
fails with a crash checkpoint holding that step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import CONFIG_DIR, child_env, needs_memory, recipe_cmd
from torchrl_rise.training import load_checkpoint

HANG_S = 240.0  # generous: a loaded 2-core machine needs ~30 s to spawn two workers
NUM_ENVS = 4
OVERRIDES = [
    "preset=tiny",
    "env.env_id=cue-L6",
    "env.frame_size=16",
    "collector.backend=multi_sync",
    "collector.num_workers=2",
    "replay.learning_starts=64",
    "replay.batch_size=8",
    "logging.interval_frames=64",
    "checkpoint.interval_frames=100_000",
    "eval.interval_frames=100_000",
    "eval.final=false",
]

pytestmark = needs_memory


def _start(run_dir: Path, total_frames: int, *extra: str) -> subprocess.Popen:
    env = child_env()
    cmd = recipe_cmd(
        "memory", *OVERRIDES, f"total_frames={total_frames}", f"logging.run_dir={run_dir}", *extra
    )
    return subprocess.Popen(
        cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _workers(pid: int) -> list[int]:
    """The collector worker processes of ``pid`` (spawned children; not the resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _out(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[0].decode(errors="replace")[-4000:]


def _wait_for(proc: subprocess.Popen, condition, what: str, seen: set[int]) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        seen.update(_workers(proc.pid))
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before {what}:\n" + _out(proc))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out ({HANG_S:.0f} s) waiting for {what}:\n" + _out(proc))
        time.sleep(0.05)


def _updates_logged(run: Path) -> bool:
    """Whether train.csv has a row with gradient updates (the workers get weight pushes)."""
    try:
        rows = (run / "train.csv").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(int(row.split(",")[1]) > 0 for row in rows)


def _end(proc: subprocess.Popen, seen: set[int], *, within: float) -> float:
    """Wait (at most ``within`` s) for the child to exit; check it left no worker behind."""
    t0 = time.monotonic()
    while proc.poll() is None:
        seen.update(_workers(proc.pid))
        if time.monotonic() - t0 > within:
            pytest.fail(f"the child did not exit within {within:.0f} s (a hang):\n" + _out(proc))
        time.sleep(0.05)
    took = time.monotonic() - t0
    out = _out(proc)
    assert proc.returncode == 0, out
    time.sleep(0.5)
    orphans = [pid for pid in seen if _running(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, f"worker processes left running: {orphans}\n{out}"
    return took


def _expected_updates(env_steps: int, *, learning_starts: int = 64) -> int:
    """One update per vector step (NUM_ENVS transitions) once learning_starts are stored."""
    return sum(1 for k in range(1, env_steps // NUM_ENVS + 1) if k * NUM_ENVS >= learning_starts)


def test_a_killed_worker_is_replaced_and_the_run_finishes_with_exact_counters(tmp_path):
    run = tmp_path / "run"
    total = 768
    proc = _start(run, total)
    seen: set[int] = set()
    try:
        _wait_for(
            proc, lambda: _updates_logged(run) and len(_workers(proc.pid)) == 2, "updates", seen
        )
        victim = _workers(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        _end(proc, seen, within=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["frames"] == total
    counters = load_checkpoint(run)["state"]["counters"]
    assert counters["frames"] == counters["env_steps"] == total  # memory env: frame skip 1
    assert counters["iterations"] == total // NUM_ENVS  # every stored batch once, none twice
    assert counters["updates"] == _expected_updates(total) == summary["updates"]
    assert counters["worker_restarts"] == 1
    assert counters["lost_batches"] in (0, 1)  # 1: it died collecting; 0: during a weight push
    log = (run / "train.log").read_text()
    assert "COLLECTOR WORKER LOST" in log and f"pid {victim}" in log
    assert len(seen) >= 4  # two workers, then two fresh ones


def test_sigterm_while_blocked_on_a_stopped_worker_ends_the_run_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, 10_000_000)
    seen: set[int] = set()
    stopped = None
    try:
        _wait_for(
            proc, lambda: _updates_logged(run) and len(_workers(proc.pid)) == 2, "updates", seen
        )
        stopped = _workers(proc.pid)[1]
        os.kill(stopped, signal.SIGSTOP)  # alive, silent: the trainer blocks on it
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        took = _end(proc, seen, within=90.0)  # ~10 s: the stopped worker is killed at shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped is not None and _running(stopped):
            os.kill(stopped, signal.SIGKILL)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["reason"]
    counters = load_checkpoint(run)["state"]["counters"]  # verified, promoted to latest
    assert 0 < counters["frames"] == counters["env_steps"] == summary["frames"]
    assert counters["iterations"] * NUM_ENVS == counters["frames"]
    assert counters["worker_restarts"] == 0  # a stopping run replaces nothing
    assert took < 90.0


# ------------------------------------------------------------------------ a Ray actor killed -9


def _kill_an_actor_at_push(monkeypatch, ray, *, push: int) -> list[int]:
    """SIGKILL worker 0's actor process just before the ``push``-th weight push: after the
    step's extend and updates, where the dead actor used to cost the unsaved work."""
    from torchrl_rise.training.collectors import LaneOrderedCollector

    original = LaneOrderedCollector.push_weights
    killed: list[int] = []
    calls = {"n": 0}

    def push_weights(self):
        calls["n"] += 1
        if calls["n"] == push:
            actor = self.collector.remote_collectors[0]
            pid = ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return original(self)

    monkeypatch.setattr(LaneOrderedCollector, "push_weights", push_weights)
    return killed


def _ray_trainer(tmp_path: Path, total: int, *extra: str):
    from hydra import compose, initialize_config_dir

    from torchrl_rise.training import Trainer

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="memory",
            overrides=[
                *[o for o in OVERRIDES if not o.startswith("collector.backend")],
                "collector.backend=ray",
                f"total_frames={total}",
                f"logging.root={tmp_path}",
                "eval.episodes=1",
                "eval.num_envs=1",
                *extra,
            ],
        )
    return Trainer(cfg)


def test_a_killed_ray_actor_is_replaced_and_the_run_finishes_with_exact_counters(
    tmp_path, ray_cluster, monkeypatch
):
    killed = _kill_an_actor_at_push(monkeypatch, ray_cluster, push=3)  # push 1: at the build
    trainer = _ray_trainer(tmp_path, 256)
    summary = trainer.run()
    assert killed and summary["status"] == "finished" and summary["frames"] == 256
    c = trainer.counters
    assert c.frames == c.env_steps == 256 and c.iterations == 256 // NUM_ENVS
    assert c.updates == _expected_updates(256) == summary["updates"]
    assert (c.worker_restarts, c.lost_batches) == (1, 0)  # lost in a push: no batch dropped
    assert "COLLECTOR WORKER LOST" in (trainer.run_dir / "train.log").read_text()


def test_a_killed_ray_actor_without_restarts_fails_with_a_consistent_crash_checkpoint(
    tmp_path, ray_cluster, monkeypatch
):
    killed = _kill_an_actor_at_push(monkeypatch, ray_cluster, push=3)
    trainer = _ray_trainer(tmp_path, 256, "collector.max_restarts=0")
    from torchrl_rise.training.supervision import WorkerLostError

    with pytest.raises(WorkerLostError, match=r"collector\.max_restarts=0"):
        trainer.run()
    assert killed and trainer.status == "failed"
    (crash,) = sorted((trainer.run_dir / "checkpoints").glob("crash_frames_*"))
    state = load_checkpoint(crash)["state"]["counters"]
    c = trainer.counters
    # The failed push came after the step's extend and updates: they are in the checkpoint.
    assert state["frames"] == c.frames == c.env_steps == 64 + NUM_ENVS
    assert state["updates"] == c.updates == _expected_updates(c.env_steps) == 2
