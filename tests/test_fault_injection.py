"""A real training process killed with SIGKILL at random moments (and mid-save) resumes exactly.

The child is the memory recipe on a tiny config. It is killed ``-9`` at seeded random moments,
once while a checkpoint is being written (``TORCHRL_RISE_TEST_SAVE_DELAY_S`` makes the save
sleep with its temporary folder half written), and resumed with ``resume=true`` each time. Its
end state is compared with an uninterrupted run resumed from a clean copy of the same checkpoint
(same seeds; the loop is deterministic on CPU, so "same" is exact equality): frame and update
counters, replay contents and priorities, weights and optimizer state. The logs must hold each
frame once.
"""

from __future__ import annotations

import csv
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

# test_golden imports _memory_suite_available from here
from tests.helpers import CONFIG_DIR, child_env, needs_memory, recipe_cmd
from tests.helpers import memory_suite_available as _memory_suite_available  # noqa: F401
from torchrl_rise.training import load_checkpoint, load_config
from torchrl_rise.training.builders import build_components
from torchrl_rise.training.checkpoint import SAVE_DELAY_ENV, list_checkpoints

OVERRIDES = [
    "preset=tiny",
    "env.env_id=cue-L6",
    "env.frame_size=16",
    "checkpoint.interval_frames=256",
    "checkpoint.keep=2",
    "eval.interval_frames=512",
    "logging.interval_frames=128",
    "replay.learning_starts=64",
    "replay.batch_size=8",
]


pytestmark = needs_memory


def _cmd(run_dir: Path, total_frames: int, *extra: str) -> list[str]:
    return recipe_cmd(
        "memory", *OVERRIDES, f"total_frames={total_frames}", f"logging.run_dir={run_dir}", *extra
    )


def _start(run_dir: Path, total_frames: int, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        _cmd(run_dir, total_frames, *extra),
        cwd=run_dir.parent,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before {what}:\n" + _out(proc))
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n" + _out(proc))
        time.sleep(0.02)


def _out(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[0].decode(errors="replace")[-4000:]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def _temp_folders(run_dir: Path) -> list[Path]:
    return list((run_dir / "checkpoints").glob(".tmp-*"))


def _frames(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["frames"]) for r in csv.DictReader(f)]


def _rows_after(path: Path, frames: int) -> list[dict[str, str]]:
    volatile = {"walltime_s", "fps"}
    with open(path, newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in volatile}
            for r in csv.DictReader(f)
            if int(r["frames"]) > frames
        ]


def _replay_contents(cfg, run: Path, scratch: Path):
    comps = build_components(load_config(cfg), scratch_dir=scratch)
    try:
        comps.replay.loads(load_checkpoint(run)["replay_dir"])
        index = comps.replay.sampleable_index()
        batch = comps.replay.gather(index).clone()
        return index, batch, comps.replay.sampler.tree_values(index).clone()
    finally:
        comps.replay.close()


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def _clean_copy(run: Path, dest: Path) -> Path:
    """A fresh run dir holding only ``run``'s latest checkpoint (and the chunk store)."""
    latest = list_checkpoints(run)[0]
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copytree(latest, dest / "checkpoints" / latest.name)
    store = run / "checkpoints" / "replay_chunks"
    if store.exists():
        shutil.copytree(store, dest / "checkpoints" / "replay_chunks")
    (dest / "checkpoints" / "latest").write_text(latest.name + "\n")
    return latest


def _kill_resume_compare(tmp_path: Path, *, seed: int, random_kills: int, total_frames: int):
    rng = random.Random(seed)
    run = tmp_path / "run"
    resumed_from: list[int] = []

    # 1. A fresh run, killed at a random moment once it has a checkpoint.
    proc = _start(run, total_frames)
    _wait_for(proc, lambda: (run / "checkpoints" / "latest").exists(), "the first checkpoint")
    time.sleep(rng.uniform(0.0, 1.5))
    _kill(proc)

    # 2. Resumes killed at random moments.
    for _ in range(random_kills - 1):
        before = list_checkpoints(run)[0]
        resumed_from.append(int(load_checkpoint(before)["state"]["counters"]["frames"]))
        proc = _start(run, total_frames, "resume=true")
        _wait_for(
            proc,
            lambda before=before: list_checkpoints(run)[0] != before,
            "a new checkpoint after the resume",
        )
        time.sleep(rng.uniform(0.0, 1.0))
        _kill(proc)

    # 3. A resume killed while it writes a checkpoint (its temporary folder half written).
    before = list_checkpoints(run)[0]
    proc = _start(run, total_frames, "resume=true", **{SAVE_DELAY_ENV: "60"})
    _wait_for(proc, lambda: bool(_temp_folders(run)), "a checkpoint write in progress")
    _kill(proc)
    assert _temp_folders(run), "the kill must land inside the save"
    assert list_checkpoints(run)[0] == before, "a half-written checkpoint became latest"
    assert (run / "replay_scratch").exists()  # the dead run's scratch memmaps are left over

    # 4. The last resume point: a clean copy of it goes on uninterrupted as the reference.
    start = _clean_copy(run, tmp_path / "reference")
    start_frames = int(load_checkpoint(start)["state"]["counters"]["frames"])
    for target in (run, tmp_path / "reference"):
        done = subprocess.run(
            _cmd(target, total_frames, "resume=true"),
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "reclaimed what a dead run" in log and "replay_scratch" in log
    assert not _temp_folders(run)

    # Same counters, weights, optimizer state and replay (contents and priorities).
    mine, ref = load_checkpoint(run)["state"], load_checkpoint(tmp_path / "reference")["state"]
    assert mine["counters"]["frames"] == total_frames
    for key in ("frames", "env_steps", "updates", "episodes", "iterations"):
        assert mine["counters"][key] == ref["counters"][key], key
    for key in ("actor", "loss", "optimizer"):
        _assert_same_tensors(mine[key], ref[key], key)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="memory", overrides=[*OVERRIDES, f"total_frames={total_frames}"])
    index, batch, priority = _replay_contents(cfg, run, tmp_path / "s1")
    index_ref, batch_ref, priority_ref = _replay_contents(
        cfg, tmp_path / "reference", tmp_path / "s2"
    )
    assert torch.equal(index, index_ref) and index.numel() > 0
    assert torch.equal(priority, priority_ref)
    for key in batch_ref.keys(True, True):
        assert torch.equal(batch.get(key), batch_ref.get(key)), key

    # Each frame logged once; what came after the resume point matches the reference's logs.
    for name in ("train.csv", "eval.csv"):
        frames = _frames(run / name)
        assert frames == sorted(set(frames)), name
        assert _rows_after(run / name, start_frames) == _rows_after(
            tmp_path / "reference" / name, start_frames
        ), name
    assert _frames(run / "train.csv")[-1] == total_frames
    return resumed_from


def test_sigkill_at_random_moments_and_mid_save_resumes_exactly(tmp_path):
    _kill_resume_compare(tmp_path, seed=0, random_kills=1, total_frames=1536)


@pytest.mark.slow
def test_many_sigkills_resume_exactly(tmp_path):
    resumed = _kill_resume_compare(tmp_path, seed=1, random_kills=5, total_frames=4096)
    assert resumed == sorted(resumed)  # every resume went on from a newer checkpoint


def test_second_signal_inside_a_checkpoint_write_does_not_break_it(tmp_path):
    run = tmp_path / "run"
    proc = _start(
        run,
        10_000_000,
        "eval.interval_frames=10_000_000",
        "checkpoint.interval_frames=10_000_000",
        **{SAVE_DELAY_ENV: "3"},
    )
    _wait_for(
        proc,
        lambda: (run / "train.csv").exists() and len((run / "train.csv").read_text().split()) > 3,
        "training",
    )
    proc.send_signal(signal.SIGINT)  # stop: the final checkpoint write sleeps 3 s inside
    _wait_for(proc, lambda: bool(_temp_folders(run)), "the final checkpoint write")
    proc.send_signal(signal.SIGINT)  # lands inside the write
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    ckpt = load_checkpoint(run)  # verified: complete, consistent, promoted to latest
    assert 0 < ckpt["state"]["counters"]["frames"] < 10_000_000
    assert not _temp_folders(run)
    assert "second signal" in (run / "train.log").read_text()


@pytest.mark.slow
def test_third_signal_exits_at_once_and_the_next_start_reclaims(tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(
        _cmd(run, 256), cwd=tmp_path, env=child_env(), capture_output=True, timeout=120
    )
    assert first.returncode == 0, first.stdout[-3000:]
    before = list_checkpoints(run)
    proc = _start(
        run, 10_000_000, "eval.interval_frames=10_000_000", "resume=true", **{SAVE_DELAY_ENV: "60"}
    )
    _wait_for(proc, lambda: bool(_temp_folders(run)), "a checkpoint write")
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT  # exited at once, inside the write
    assert list_checkpoints(run) == before and _temp_folders(run)  # nothing promoted
    done = subprocess.run(
        _cmd(run, 512, "resume=true"),
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert not _temp_folders(run) and "reclaimed what a dead run" in (run / "train.log").read_text()


def test_sigkill_before_the_first_checkpoint_restarts_from_frame_0_keeping_the_logs(tmp_path):
    """The SLURM case of docs/training.md: a job killed in its first hours is requeued with the
    same ``logging.run_dir`` and ``resume=true`` and starts again (it used to be refused)."""
    run = tmp_path / "run"
    never = ["checkpoint.interval_frames=1_000_000", "eval.interval_frames=1_000_000"]
    proc = _start(run, 1_000_000, *never)
    _wait_for(proc, lambda: (run / "train.csv").exists() and _frames(run / "train.csv"),
              "a train.csv row")  # fmt: skip
    _kill(proc)
    assert not list_checkpoints(run)
    killed = {n: (run / n).read_bytes() for n in ("config.json", "train.csv", "train.log")}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="memory",
            overrides=[*OVERRIDES, "total_frames=256", f"logging.run_dir={run}", "resume=true"],
        )
    from torchrl_rise.training import train

    assert train(cfg)["status"] == "finished"
    assert {n: (run / "partial-1" / n).read_bytes() for n in killed} == killed
    assert _frames(run / "train.csv") == [128, 256]
    assert "status unknown: it was killed" in (run / "train.log").read_text()
