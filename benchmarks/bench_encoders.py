"""Frozen-encoder throughput and the cost of RiseContextTransform in an Atari collector.

1. images/s of each encoder on 84x84 grayscale 4-frame stacks at collection batch sizes 1, 8, 64;
2. frames/s of a TorchRL ``Collector`` over a ``SerialEnv`` of Pong envs with and without the
   transform (resnet18, context window 80), as a ratio measured in the same run.

Writes the section "encoders" of docs/benchmarks.md. ``--quick`` runs small sizes in seconds.

    python benchmarks/bench_encoders.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import markdown_table, median_time, write_section
from torchrl_rise.encoders import make_encoder
from torchrl_rise.transforms import RiseContextTransform

ENCODERS = {
    "resnet18": dict(weights="random"),
    "efficientnet_b0": dict(weights="random"),
    "downsample": dict(size=16),
    "random_projection": dict(embedding_dim=512, size=16),
}


def _pong(seed: int):
    from torchrl.envs import CatFrames, Compose, GrayScale, Resize, ToTensorImage, TransformedEnv
    from torchrl.envs.libs.gym import GymEnv

    env = TransformedEnv(
        GymEnv(
            "ALE/Pong-v5",
            frameskip=4,
            repeat_action_probability=0.25,
            categorical_action_encoding=True,
        ),
        Compose(
            ToTensorImage(from_int=False, dtype=torch.uint8, shape_tolerant=True),
            GrayScale(),
            Resize(84, 84),
            CatFrames(N=4, dim=-3, padding="same"),
        ),
    )
    env.set_seed(seed)
    return env


def encoder_throughput(batch_sizes: list[int], repeats: int) -> list[list[object]]:
    rows = []
    for name, options in ENCODERS.items():
        enc = make_encoder(name, **options)
        row: list[object] = [name, enc.embedding_dim]
        for batch in batch_sizes:
            x = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
            seconds = median_time(lambda enc=enc, x=x: enc(x), repeats=repeats, warmup=2)
            row.append(f"{batch / seconds:,.0f}")
        rows.append(row)
    return rows


def collector_slowdown(
    num_envs: int, frames: int, context_length: int, repeats: int
) -> tuple[float, float, str]:
    """Median frames/s of two collectors, without and with the transform, taking batches in turn
    (so a change in machine load hits both alike); the first batch of each is not timed."""
    from torchrl.collectors import Collector
    from torchrl.envs import SerialEnv, TransformedEnv
    from torchrl.modules import RandomPolicy

    def make(with_transform: bool) -> Collector:
        env = SerialEnv(num_envs, [functools.partial(_pong, seed=i) for i in range(num_envs)])
        if with_transform:
            enc = make_encoder("resnet18", weights="random")
            env = TransformedEnv(env, RiseContextTransform(enc, context_length=context_length))
        return Collector(
            env,
            RandomPolicy(env.action_spec),
            frames_per_batch=frames,
            total_frames=frames * (repeats + 1),
        )

    collectors = {False: make(False), True: make(True)}
    iterators = {k: iter(c) for k, c in collectors.items()}
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats + 1):
        for key, iterator in iterators.items():
            start = time.perf_counter()
            next(iterator)
            if i > 0:  # the first batch includes env start-up
                times[key].append(time.perf_counter() - start)
    for collector in collectors.values():
        collector.shutdown()
    without, with_t = (frames / statistics.median(times[k]) for k in (False, True))
    return without, with_t, f"{without / with_t:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy 2-core machine more threads oversubscribe and "
        "slow the env transforms down by an order of magnitude)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    batch_sizes = [1, 8] if args.quick else [1, 8, 64]
    repeats = 3 if args.quick else 10
    rows = encoder_throughput(batch_sizes, repeats)
    table = markdown_table(["encoder", "D", *[f"images/s @ batch {b}" for b in batch_sizes]], rows)

    num_envs, frames = (2, 32) if args.quick else (4, 256)
    context_length = 80
    without, with_t, ratio = collector_slowdown(
        num_envs, frames, context_length, repeats=2 if args.quick else 4
    )
    # closing a SerialEnv raises torch's thread count: restore it for the machine stamp
    torch.set_num_threads(args.threads)
    collector_table = markdown_table(
        ["collector", "frames/s"],
        [
            ["without transform", f"{without:,.0f}"],
            [f"with RiseContextTransform (resnet18, K={context_length})", f"{with_t:,.0f}"],
            ["slowdown (without / with)", f"{ratio}x"],
        ],
    )
    body = f"""
Frozen encoders on uint8 `[B, 4, 84, 84]` grayscale stacks (newest frame encoded; resnet18 and
efficientnet_b0 replicate it to RGB and ImageNet-normalise, random weights: the architecture, not
the weights, sets the cost). Median over {repeats} calls.

{table}

A TorchRL `Collector` (random policy) over `SerialEnv({num_envs})` of Pong (ALE v5, frameskip 4,
grayscale 84x84, 4-frame stack), {frames} frames per batch; the two collectors take batches in
turn and each figure is the median over its batches after the first;
the transform sits on top of the batched env, so one encoder call per vector step embeds
{num_envs} frames.

{collector_table}

What bounds these figures: CPU only, {torch.get_num_threads()} torch thread(s) on a shared machine
(1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after this run, on
{os.cpu_count()} cores: other jobs ran at the same time, and the numbers scale with the share of
CPU this run got). On CPU
the ImageNet encoders cost more than the emulator, so the collector slowdown is mostly the
resnet18 forward pass at batch {num_envs}; on a GPU (`encoder_device="cuda"`) it shrinks, and the
weight-free encoders (`downsample`, `random_projection`) cost almost nothing.
{"(--quick run: small sizes.)" if args.quick else ""}
"""
    write_section("encoders", "Frozen encoders and RiseContextTransform", body)
    print(table)
    print(collector_table)


if __name__ == "__main__":
    main()
