"""Recipe walltime: seconds per vector step of the real training loop, extrapolated to 1M frames.

Runs ``torchrl_rise.training.Trainer`` with a recipe's own configuration (networks, batch 256, 64
Atari envs, ResNet18 context encoder for RISE...) for a short window: ``--collect`` vector steps
before learning starts (collection only: env step + frozen encoder + acting forward + replay
write), then ``--learn`` vector steps with BTR's one update per vector step. ``train.csv`` gets a
row per vector step; the medians of its walltime deltas give the cost of a vector step with and
without learning, and the extrapolation ``1e6 / (num_envs x frame_skip)`` vector steps per million
frames. Evaluation and checkpoint time are excluded (they depend on their intervals). The ResNet18
runs with random frozen weights here (no download on these machines); its cost is the same.

    python benchmarks/bench_training.py              # atari rise/btr (+ bf16 on native-bf16 CPUs)
    python benchmarks/bench_training.py --quick      # 8 envs, batch 32: seconds per config
    python benchmarks/bench_training.py --recipes atari,vizdoom,procgen,miniworld,memory

Writes the "training" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import markdown_table, native_bf16, write_section

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"


def measure(
    recipe: str,
    method: str,
    *,
    bf16: bool,
    collect: int,
    learn: int,
    quick: bool,
    extra_overrides: Sequence[str] = (),
):
    """One short run; ``extra_overrides`` (hydra) go last, e.g. ``device=cuda`` (scripts/gpu_check.py)."""
    from hydra import compose, initialize_config_dir

    from torchrl_rise.envs import describe_env
    from torchrl_rise.training import Trainer

    root = tempfile.mkdtemp(prefix="bench_training_")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose(config_name=recipe)
    num_envs = 8 if quick else int(base.env.num_envs)
    batch = 32 if quick else int(base.replay.batch_size)
    n_step = int(base.loss.n_step)
    overrides = [
        f"method={method}",
        f"env.num_envs={num_envs}",
        f"replay.batch_size={batch}",
        "replay.capacity=65536",
        "replay.prioritized=true",
        "checkpoint.save_replay=false",
        "checkpoint.interval_frames=1_000_000_000",
        "eval.interval_frames=1_000_000_000",
        "eval.final=false",
        "logging.progress=false",
        f"logging.root={root}",
        f"optim.bf16={str(bf16).lower()}",
        "encoder.weights=random" if base.encoder.name in ("resnet18", "efficientnet_b0") else "",
        *extra_overrides,
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        probe = compose(config_name=recipe, overrides=[o for o in overrides if o])
    from torchrl_rise.training.builders import EnvFactory
    from torchrl_rise.training.config import load_config

    probe_cfg = load_config(probe)
    env = EnvFactory(probe_cfg, num_envs=1, seed=0).make_base()
    frame_skip = describe_env(env).frame_skip
    env.close()
    frames_per_step = num_envs * frame_skip
    learning_starts = max(collect * num_envs, batch + num_envs * n_step)
    collect = -(-learning_starts // num_envs)
    total = (collect + learn) * frames_per_step
    overrides += [
        f"replay.learning_starts={learning_starts}",
        f"total_frames={total}",
        f"logging.interval_frames={frames_per_step}",
        f"exploration.eps_decay_frames={total}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=recipe, overrides=[o for o in overrides if o])
    trainer = Trainer(cfg)
    if trainer.run()["status"] != "finished":  # Ctrl-C / SIGTERM stop the whole benchmark
        raise SystemExit(f"interrupted during {recipe} {method}")
    with open(trainer.run_dir / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wall = [float(r["walltime_s"]) for r in rows]
    updates = [int(r["updates"]) for r in rows]
    deltas = [(b - a, u) for a, b, u in zip(wall, wall[1:], updates[1:])]
    # skip the first step of each phase (warm-up: allocation, first sample)
    collect_only = [d for d, u in deltas if u == 0][1:]
    with_learning = [d for d, u in deltas if u > 0][1:]
    steps_per_m = 1e6 / frames_per_step
    c = statistics.median(collect_only) if collect_only else float("nan")
    t = statistics.median(with_learning) if with_learning else float("nan")
    return {
        "recipe": recipe,
        "method": method,
        "bf16": bf16,
        "num_envs": num_envs,
        "batch": batch,
        "frame_skip": frame_skip,
        "collect_s": c,
        "step_s": t,
        "h_per_m": t * steps_per_m / 3600,
        "collect_h_per_m": c * steps_per_m / 3600,
        "n": len(with_learning),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 envs, batch 32, few steps")
    parser.add_argument("--recipes", default="atari")
    parser.add_argument("--methods", default="rise,btr")
    parser.add_argument(
        "--bf16",
        default="false,true" if native_bf16() else "false",
        help="comma list of false/true (default: both when the CPU has native bf16)",
    )
    parser.add_argument("--collect", type=int, default=8, help="vector steps before learning")
    parser.add_argument("--learn", type=int, default=12, help="vector steps with learning")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: half)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.collect, args.learn = min(args.collect, 4), min(args.learn, 5)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for recipe in args.recipes.split(","):
        for method in args.methods.split(","):
            for bf16 in [b.strip() == "true" for b in args.bf16.split(",")]:
                res = measure(
                    recipe,
                    method,
                    bf16=bf16,
                    collect=args.collect,
                    learn=args.learn,
                    quick=args.quick,
                )
                print(res, flush=True)
                results.append(res)
    rows = [
        [
            r["recipe"],
            r["method"],
            "bf16" if r["bf16"] else "fp32",
            f"{r['num_envs']} x {r['frame_skip']}",
            r["batch"],
            f"{r['collect_s']:.3f}",
            f"{r['step_s']:.3f}",
            f"{r['collect_h_per_m']:.2f}",
            f"{r['h_per_m']:.2f}",
        ]
        for r in results
    ]
    table = markdown_table(
        [
            "recipe",
            "method",
            "learner",
            "envs x frame skip",
            "batch",
            "s / vector step, collect only",
            "s / vector step, collect + 1 update",
            "h / 1M frames, collect only",
            "h / 1M frames, training",
        ],
        rows,
    )
    body = (
        f"{'Quick mode (8 envs, batch 32): not the recipes settings. ' if args.quick else ''}"
        f"Medians over {min(r['n'] for r in results)}-{max(r['n'] for r in results)} vector "
        "steps with learning and the collection-only steps before learning starts, "
        "from one short run per row of the recipe's own configuration (one update of the recipe's "
        "batch per vector step, PER, n=3); 1M frames = 1e6 / (envs x frame skip) vector steps, "
        "so the last columns are extrapolations, not measured hours. Evaluation and checkpoints "
        "are not included. The figures are bounded by the 2-core CPU: the learner's update "
        "(IMPALA CNN forward/backward at batch 256 for the online and target passes) dominates; "
        "collection (64 emulators, ResNet18 embedding of 64 frames, acting forward) is the rest. "
        "The machine is shared with other jobs, so expect 10-50% spread between runs.\n\n" + table
    )
    print(body)
    if not args.no_write:
        write_section("training", "Training loop walltime per 1M frames (recipes)", body)


if __name__ == "__main__":
    main()
