"""Collection throughput of the three collector backends (no learning), and what a batch weighs.

For each suite (the memory diagnostic, and Atari Pong when ale-py works), the recipe's RISE acting
policy steps ``--envs`` envs (8) through ``build_collector`` with ``direct``, ``multi_sync`` and
``ray`` at 1 and 2 workers (Ray: a local cluster started here). All collectors of a suite are built
first and kept alive; the timed chunks (``--batches`` collector batches of one vector step each)
then run interleaved, round-robin over ``--rounds`` rounds with the order rotated every round, so
every backend sees the same machine load. The figure is the median over rounds of agent steps per
second (x frame skip = simulator frames per second). Start-up (process spawn, Ray actors, encoder
build) is not timed.

The bytes of one collector batch per transition (what RayCollector moves from a worker to the
learner) are measured on a real batch, next to the replay's own need: the newest uint8 frame and
the newest embedding.

    python benchmarks/bench_collectors.py            # memory + atari (about 5-10 min on 2 cores)
    python benchmarks/bench_collectors.py --quick    # memory only, short chunks: checks plumbing

Writes the "collectors" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYGLET_HEADLESS", "true")

from benchmarks._report import markdown_table, write_section
from torchrl_rise.training import load_config
from torchrl_rise.training.builders import build_collector, build_components

CASES = [("direct", 1), ("multi_sync", 1), ("multi_sync", 2), ("ray", 1), ("ray", 2)]
RAY_CPUS = 4
CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"


def _config(suite: str, envs: int, backend: str, workers: int, scratch: str):
    from hydra import compose, initialize_config_dir

    overrides = [
        "method=rise",
        f"env.num_envs={envs}",
        f"collector.backend={backend}",
        f"collector.num_workers={workers}",
        f"logging.root={scratch}",
        "replay.capacity=1024",
        "replay.learning_starts=64",
        "replay.batch_size=32",
    ]
    if suite == "atari":
        overrides.append("encoder.weights=random")  # no download here; same cost as ImageNet's
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(compose(config_name=suite, overrides=overrides))


def _bytes_per_transition(batch, comps) -> dict[str, float]:
    n = batch.numel()
    sizes: dict[str, float] = {}
    for key, value in batch.items(include_nested=True, leaves_only=True):
        name = "/".join(key) if isinstance(key, tuple) else key
        sizes[name] = value.numel() * value.element_size() / n
    info = comps.env_info
    frame = info.frame_channels * info.frame_size[0] * info.frame_size[1]
    emb = comps.encoder_info["embedding_dim"] * 2 if comps.encoder_info else 0  # fp16
    return {"total": sum(sizes.values()), "frame": frame, "embedding": emb, **sizes}


def bench_suite(suite: str, *, envs: int, batches: int, rounds: int, scratch: str):
    built = {}
    comps = None
    bytes_info: dict[str, dict[str, float]] = {}
    try:
        for backend, workers in CASES:
            cfg = _config(suite, envs, backend, workers, scratch)
            if comps is None:
                comps = build_components(cfg, scratch_dir=Path(scratch) / f"{suite}-replay")
            collector = build_collector(cfg, seed=0, encoder=comps.encoder, policy=comps.actor)
            iterator = iter(collector)
            for _ in range(batches):  # warm-up chunk: first resets, lazy inits
                batch = next(iterator)
            if backend in ("direct", "ray") and backend not in bytes_info:
                bytes_info[backend] = _bytes_per_transition(batch, comps)
            built[(backend, workers)] = (collector, iterator)
            print(f"{suite}: built {backend} x{workers}", flush=True)
        rates: dict[tuple[str, int], list[float]] = {case: [] for case in built}
        order = list(built)
        for r in range(rounds):
            for case in order[r % len(order) :] + order[: r % len(order)]:
                _, iterator = built[case]
                start = time.perf_counter()
                steps = 0
                for _ in range(batches):
                    steps += next(iterator).numel()
                rates[case].append(steps / (time.perf_counter() - start))
            print(f"{suite}: round {r + 1}/{rounds} done", flush=True)
    finally:
        for collector, _ in built.values():
            collector.shutdown()
    frame_skip = int(comps.env_info.frame_skip)
    medians = {case: statistics.median(v) for case, v in rates.items()}
    return medians, frame_skip, bytes_info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=0, help="batches per timed chunk")
    parser.add_argument("--suites", default="memory,atari")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    suites = ["memory"] if args.quick else [s for s in args.suites.split(",") if s]
    if "atari" in suites and importlib.util.find_spec("ale_py") is None:
        print("ale-py is not installed: skipping atari")
        suites.remove("atari")
    if importlib.util.find_spec("ray") is None:
        print("ray is not installed (pip install ray): nothing to compare")
        return 1
    import ray

    torch.set_num_threads(1)
    # Logical CPUs: the 1-, and 2-worker Ray collectors (one CPU per actor) are alive together.
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    rows = []
    weights = []
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for suite in suites:
                batches = args.batches or (5 if args.quick else (50 if suite == "memory" else 10))
                rounds = 2 if args.quick else args.rounds
                medians, skip, nbytes = bench_suite(
                    suite, envs=args.envs, batches=batches, rounds=rounds, scratch=scratch
                )
                base = medians[("direct", 1)]
                for (backend, workers), rate in medians.items():
                    rows.append(
                        [
                            suite,
                            backend,
                            workers,
                            args.envs,
                            f"{rate:,.0f}",
                            f"{rate * skip:,.0f}",
                            f"{rate / base:.2f}x",
                        ]
                    )
                if "ray" in nbytes:
                    sent, full = nbytes["ray"], nbytes["direct"]
                    big = sorted(
                        (
                            (k, v)
                            for k, v in sent.items()
                            if k not in ("total", "frame", "embedding")
                        ),
                        key=lambda kv: -kv[1],
                    )[:4]
                    weights.append(
                        [
                            suite,
                            f"{full['total'] / 1024:,.1f}",
                            f"{sent['total'] / 1024:,.1f}",
                            ", ".join(f"`{k}` {v / 1024:,.1f}" for k, v in big),
                            f"{(sent['frame'] + sent['embedding']) / 1024:,.1f}",
                        ]
                    )
                load.append(os.getloadavg()[0])
    finally:
        ray.shutdown()
    minutes = (time.perf_counter() - t0) / 60
    table = markdown_table(
        [
            "suite",
            "backend",
            "workers",
            "envs",
            "agent steps/s",
            "frames/s (x frame skip)",
            "vs direct",
        ],
        rows,
    )
    weight_table = markdown_table(
        [
            "suite",
            "KiB per transition, in-process batch",
            "KiB per transition, sent by a Ray worker",
            "largest entries sent (KiB)",
            "KiB the replay keeps (newest uint8 frame + fp16 embedding)",
        ],
        weights,
    )
    body = f"""
RISE acting policy of each recipe (`method=rise`; Atari: ResNet18 context encoder with random frozen
weights, 84x84 grayscale, stack 4; memory: `cue-L20`, 32x32, 8x8 thumbnail encoder) stepping
{args.envs} envs through `build_collector`, no learning. All collectors of a suite are alive at once
and the timed chunks run interleaved (round-robin, order rotated each round); medians over the
rounds of one chunk of collector batches (one vector step each). Start-up is not timed. Ray: a
local cluster (`ray.init(num_cpus={RAY_CPUS})`, logical CPUs) on the same machine, so its figures show the
per-batch overhead (object store, actor calls), not a multi-node gain. The 2-core machine is shared:
1-minute load average {" -> ".join(f"{x:.1f}" for x in load)} over the run ({minutes:.1f} min).

{table}

What a collector batch weighs per transition, measured on a batch of the direct collector and on one
a Ray worker sent: the in-process batch carries the `[K, D]` context windows at the root and under
`next` and the acting network's diagnostics, which Ray workers drop before sending
(`torchrl_rise.training.collectors.LEARNER_UNUSED_KEYS`; the replay never reads them). What is left
is mostly the stacked uint8 frames at the root and under `next`; the replay keeps only the newest
frame and the newest embedding of each step.

{weight_table}

See docs/scaling.md for what these figures mean for scale-out.
"""
    write_section("collectors", "Collectors: direct vs multi_sync vs Ray (collection only)", body)
    print(table)
    print(weight_table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
