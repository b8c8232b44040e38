"""Env steps per second of every suite built by ``make_env``, and of the Atari backends.

Writes the "envs" section of docs/benchmarks.md. Each figure is agent steps (summed over the batch)
per second of ``env.step_and_maybe_reset`` with random actions, through the full transform stack
(frame stack, episode score, reward clip), as a collector drives it; the median over repeats of a
chunk of steps. Each case runs in a fresh process (cases slowed each other down when they shared
one); env construction and worker start-up are not timed.

    python benchmarks/bench_envs.py            # full (about 3-5 minutes on 2 cores)
    python benchmarks/bench_envs.py --quick    # about a minute (each case starts a process)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYGLET_HEADLESS", "true")

from benchmarks._report import markdown_table, median_time, write_section
from torchrl_rise.envs import make_env


def _torchrl_rate(env, steps: int, repeats: int) -> float:
    state = {"td": env.reset()}

    def chunk():
        td = state["td"]
        for _ in range(steps):
            td = env.rand_action(td)
            _, td = env.step_and_maybe_reset(td)
        state["td"] = td

    seconds = median_time(chunk, repeats=repeats, warmup=1)
    return env.batch_size.numel() * steps / seconds


def _ale_raw_rate(num_envs: int, steps: int, repeats: int) -> float:
    """ale-py's AtariVectorEnv alone (numpy in, numpy out), same preprocessing."""
    from ale_py.vector_env import AtariVectorEnv

    vec = AtariVectorEnv(
        "pong",
        num_envs,
        autoreset_mode="SameStep",
        stack_num=1,
        repeat_action_probability=0.25,
        use_fire_reset=False,
        reward_clipping=False,
    )
    vec.reset(seed=0)
    rng = np.random.default_rng(0)

    def chunk():
        for _ in range(steps):
            vec.step(rng.integers(0, 6, num_envs))

    seconds = median_time(chunk, repeats=repeats, warmup=1)
    vec.close()
    return num_envs * steps / seconds


def _gym_atari(frame_skip: int):
    from torchrl.envs import GymEnv

    return GymEnv("ALE/Pong-v5", frameskip=frame_skip, obs_type="grayscale")


def _gym_serial_rate(num_envs: int, steps: int, repeats: int) -> float:
    """TorchRL SerialEnv of GymEnv("ALE/Pong-v5") with ALE's own frameskip and no resize/max-pool:
    a lower bound on the cost of the gymnasium AtariPreprocessing route (which also needs opencv)."""
    from torchrl.envs import SerialEnv

    env = SerialEnv(num_envs, functools.partial(_gym_atari, 4))
    rate = _torchrl_rate(env, steps, repeats)
    env.close()
    return rate


def _case(
    kind: str, suite: str, env_id: str, num_envs: int, backend: str | None, steps: int, repeats: int
) -> float:
    """One measurement; run in a fresh process so that no case slows down the next."""
    torch.set_num_threads(1)
    if kind == "ale":
        return _ale_raw_rate(num_envs, steps, repeats)
    if kind == "gym":
        return _gym_serial_rate(num_envs, steps, repeats)
    env = make_env(suite, env_id, num_envs=num_envs, backend=backend)
    try:
        return _torchrl_rate(env, steps, repeats)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    quick = args.quick
    steps, repeats = (20, 3) if quick else (100, 5)
    rows: list[list[object]] = []
    ctx = multiprocessing.get_context("spawn")

    def add(label, kind, suite, env_id, n, backend=None, reference=None):
        # ProcessPoolExecutor workers are not daemonic, so ParallelEnv can start its own.
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            rate = pool.submit(_case, kind, suite, env_id, n, backend, steps, repeats).result()
        note = "" if reference is None else f"{rate / reference:.2f}x"
        rows.append([suite, label, n, f"{rate:,.0f}", note])
        print(f"{suite:9s} {label:52s} n={n:3d} {rate:10,.0f} steps/s {note}", flush=True)
        return rate

    # Atari: the backends side by side, same preprocessing (ALE's C++).
    for n in (8,) if quick else (8, 64):
        add("ale-py AtariVectorEnv alone (no TorchRL)", "ale", "atari", "pong", n)
        vector = add('make_env backend="vector" (default)', "env", "atari", "pong", n, "vector")
        rows[-1][-1] = "1.00x"
        if n <= 8:
            for backend in ("serial",) if quick else ("serial", "parallel"):
                add(f'make_env backend="{backend}"', "env", "atari", "pong", n, backend, vector)
            add(
                "SerialEnv(GymEnv ALE/Pong-v5), no resize/max-pool",
                "gym",
                "atari",
                "pong",
                n,
                reference=vector,
            )

    n = 64 if quick else 256
    add('make_env("memory", "cue-L20") vector', "env", "memory", "cue-L20", n)
    if importlib.util.find_spec("procgen") is not None:
        n = 8 if quick else 64
        add('make_env("procgen", "coinrun") vector', "env", "procgen", "coinrun", n)
    for suite, env_id in (("vizdoom", "VizdoomBasic-v1"), ("miniworld", "MiniWorld-Hallway-v0")):
        if importlib.util.find_spec(suite) is None:
            continue
        for backend in ("serial",) if quick else ("serial", "parallel"):
            n = 2 if quick else 4
            add(f'make_env("{suite}", ...) {backend}', "env", suite, env_id, n, backend)

    load = os.getloadavg()[0]
    body = (
        "Agent steps per second (summed over the batch) of `env.step_and_maybe_reset` with random "
        "actions through the full `make_env` transform stack, median of "
        f"{repeats} chunks of {steps} steps; each case in a fresh process; construction and worker start-up not timed. Ratios "
        'compare an Atari backend with `backend="vector"` at the same batch size, in the same '
        "run. Bounded by the 2-core CPU, shared with other jobs: the 1-minute load average was "
        f"{load_start:.1f} at the start of this run and {load:.1f} at the end, so absolute rates "
        "are a fraction of an idle machine's (one idle `GymEnv` Pong steps at about 1.5-2k/s "
        "here); compare within a row group. With 2 cores, `parallel` workers compete with the "
        "main process for the same cores and add inter-process copies; ALE's C++ vector env "
        "needs neither.\n\n"
        + markdown_table(["suite", "env / backend", "envs", "steps/s", "vs vector"], rows)
    )
    write_section("envs", "Environment throughput (make_env)", body)


if __name__ == "__main__":
    main()
