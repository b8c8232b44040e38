"""Frozen-encoder throughput and the cost of RiseContextTransform in an Atari collector.

1. images/s of each encoder on 84x84 grayscale 4-frame stacks at collection batch sizes 1, 8, 64;
2. the faster resnet18 variants (``fuse=True``, ``precision="bf16"``, ``precision="int8"``) against
   fp32: images/s at the same batch sizes, calls interleaved, and embedding drift (cosine
   similarity and relative L2 to the fp32 embeddings) on Pong frames (synthetic frames without ALE);
3. frames/s of a TorchRL ``Collector`` over a ``SerialEnv`` of Pong envs without the transform
   (btr) and with it for each resnet18 variant (rise, context window 80), batches taken in turn,
   as ratios measured in the same run.

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


#: the resnet18 variants compared with fp32 (label -> make_encoder options)
VARIANTS = {
    "fp32": dict(),
    "fp32, fuse=True": dict(fuse=True),
    "bf16": dict(precision="bf16"),
    "int8": dict(precision="int8"),
}


def variant_throughput(
    encoders: dict[str, torch.nn.Module], batch_sizes: list[int], repeats: int
) -> list[list[object]]:
    """images/s of each variant per batch size; the variants' calls are interleaved."""
    per_batch: dict[int, dict[str, float]] = {}
    for batch in batch_sizes:
        x = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8)
        times: dict[str, list[float]] = {label: [] for label in encoders}
        for i in range(repeats + 2):
            for label, enc in encoders.items():
                start = time.perf_counter()
                enc(x)
                if i >= 2:  # two warm-up rounds
                    times[label].append(time.perf_counter() - start)
        per_batch[batch] = {label: batch / statistics.median(t) for label, t in times.items()}
    rows = []
    for label in encoders:
        row: list[object] = [label]
        for batch in batch_sizes:
            rate = per_batch[batch][label]
            row.append(f"{rate:,.0f} ({rate / per_batch[batch]['fp32']:.2f}x)")
        rows.append(row)
    return rows


def pong_frames(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``n`` consecutive observations ``[n, 4, 84, 84]`` of Pong under a random policy (synthetic
    Atari-like frames when ALE is unavailable), and where they came from."""
    try:
        env = _pong(seed)
    except Exception as err:  # no ale-py or no ROM
        from torchrl_rise.encoders import synthetic_frames

        frames = synthetic_frames(n + 3, seed=seed).squeeze(1)
        stacks = torch.stack([frames[i : i + 4] for i in range(n)])
        return stacks, f"synthetic Atari-like frames (ALE unavailable: {type(err).__name__})"
    data = env.rollout(n, break_when_any_done=False)
    env.close()
    return data["pixels"], f"Pong (ALE v5, random policy, {n} consecutive steps)"


def embedding_drift(
    encoders: dict[str, torch.nn.Module], frames: torch.Tensor
) -> list[list[object]]:
    """Cosine similarity and relative L2 of each variant's embeddings to fp32's."""
    reference = encoders["fp32"](frames)
    rows = []
    for label, enc in encoders.items():
        if label == "fp32":
            continue
        out = enc(frames)
        cosine = torch.nn.functional.cosine_similarity(out, reference, dim=-1)
        rel = (out - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-12)
        rows.append(
            [
                label,
                f"{cosine.mean():.5f}",
                f"{cosine.min():.5f}",
                f"{rel.mean():.4f}",
                f"{rel.max():.4f}",
            ]
        )
    return rows


def collector_rates(
    variants: dict[str, dict[str, object]],
    num_envs: int,
    frames: int,
    context_length: int,
    repeats: int,
) -> dict[str, float]:
    """Median frames/s of a collector without the transform ("btr") and with it for each resnet18
    variant, taking batches in turn (so a change in machine load hits all alike); the first batch
    of each is not timed."""
    from torchrl.collectors import Collector
    from torchrl.envs import SerialEnv, TransformedEnv
    from torchrl.modules import RandomPolicy

    def make(options: dict[str, object] | None) -> Collector:
        env = SerialEnv(num_envs, [functools.partial(_pong, seed=i) for i in range(num_envs)])
        if options is not None:
            enc = make_encoder("resnet18", weights="random", **options)
            env = TransformedEnv(env, RiseContextTransform(enc, context_length=context_length))
        return Collector(
            env,
            RandomPolicy(env.action_spec),
            frames_per_batch=frames,
            total_frames=frames * (repeats + 1),
        )

    collectors = {"btr": make(None), **{label: make(o) for label, o in variants.items()}}
    iterators = {k: iter(c) for k, c in collectors.items()}
    times: dict[str, list[float]] = {k: [] for k in collectors}
    for i in range(repeats + 1):
        for key, iterator in iterators.items():
            start = time.perf_counter()
            next(iterator)
            if i > 0:  # the first batch includes env start-up
                times[key].append(time.perf_counter() - start)
    for collector in collectors.values():
        collector.shutdown()
    return {k: frames / statistics.median(t) for k, t in times.items()}


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

    variant_encoders = {
        label: make_encoder("resnet18", weights="random", **options)
        for label, options in VARIANTS.items()
    }
    variant_rows = variant_throughput(variant_encoders, batch_sizes, repeats)
    variant_table = markdown_table(
        ["resnet18", *[f"images/s @ batch {b} (vs fp32)" for b in batch_sizes]], variant_rows
    )

    n_frames, n_calibration = (256, 64) if args.quick else (3000, 256)
    frames, frames_source = pong_frames(n_frames + n_calibration)
    evaluation, calibration = frames[:n_frames], frames[n_frames:]
    # int8 calibrated on the target env's frames (disjoint from the evaluation frames)
    variant_encoders[f"int8, calibrated on {n_calibration} env frames"] = make_encoder(
        "resnet18", weights="random", precision="int8", calibration_frames=calibration
    )
    drift_table = markdown_table(
        ["resnet18", "cosine mean", "cosine min", "rel. L2 mean", "rel. L2 max"],
        embedding_drift(variant_encoders, evaluation),
    )

    num_envs, frames_per_batch = (2, 32) if args.quick else (8, 256)
    context_length = 80
    collector_variants = VARIANTS
    rates = collector_rates(
        collector_variants,
        num_envs,
        frames_per_batch,
        context_length,
        repeats=2 if args.quick else 4,
    )
    # closing a SerialEnv raises torch's thread count: restore it for the machine stamp
    torch.set_num_threads(args.threads)
    collector_rows = [["btr (no transform)", f"{rates['btr']:,.0f}", "1.00"]]
    for label in collector_variants:
        collector_rows.append(
            [
                f"rise, resnet18 {label}, K={context_length}",
                f"{rates[label]:,.0f}",
                f"{rates[label] / rates['btr']:.3f}",
            ]
        )
    collector_table = markdown_table(["collector", "frames/s", "rise / btr"], collector_rows)
    body = f"""
Frozen encoders on uint8 `[B, 4, 84, 84]` grayscale stacks (newest frame encoded; resnet18 and
efficientnet_b0 replicate it to RGB and ImageNet-normalise, random weights: the architecture, not
the weights, sets the cost). Median over {repeats} calls.

{table}

### Faster resnet18 variants

`make_encoder("resnet18", fuse=True)` (BatchNorm folded by `torch.fx`, channels-last),
`precision="bf16"`, `precision="int8"` (FX static post-training quantisation, x86/fbgemm kernels,
calibrated on 128 synthetic Atari-like frames) against fp32, same inputs, calls interleaved,
median over {repeats} calls:

{variant_table}

Embedding drift against fp32 on {n_frames} frames of {frames_source}, random weights (seed 0;
ImageNet weights cannot be downloaded here):

{drift_table}

### Collection: rise vs btr

A TorchRL `Collector` (random policy) over `SerialEnv({num_envs})` of Pong (ALE v5, frameskip 4,
grayscale 84x84, 4-frame stack), {frames_per_batch} frames per batch; the collectors take batches
in turn and each figure is the median over its batches after the first. btr: no transform; rise:
`RiseContextTransform` on top of the batched env, so one encoder call per vector step embeds the
newest frame of all {num_envs} envs.

{collector_table}

What bounds these figures: CPU only, {torch.get_num_threads()} torch thread(s) on a shared machine
(1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after this run, on
{os.cpu_count()} cores: other jobs ran at the same time, and the numbers scale with the share of
CPU this run got). On CPU the fp32 ImageNet encoders cost more than the emulator, so the rise
collector is bound by the resnet18 forward pass at batch {num_envs}; int8 removes most of that.
On a GPU (`encoder_device="cuda"`) run fp32 or bf16 there; the weight-free encoders
(`downsample`, `random_projection`) cost almost nothing.
{"(--quick run: small sizes.)" if args.quick else ""}
"""
    write_section("encoders", "Frozen encoders and RiseContextTransform", body)
    print(table)
    print(variant_table)
    print(drift_table)
    print(collector_table)


if __name__ == "__main__":
    main()
