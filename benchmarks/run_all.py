"""The speed report: run every benchmark in turn and (re)write docs/benchmarks.md in one go.

    python benchmarks/run_all.py            # full sizes (about 40-60 min on a 2-core CPU)
    python benchmarks/run_all.py --quick    # small sizes, a few minutes: checks the plumbing
    python benchmarks/run_all.py --only learner,replay

Each benchmark runs in its own process, one after the other (never in parallel: they would slow each
other down), and rewrites only its own section of docs/benchmarks.md, stamped with the command and the
machine. RISE vs BTR vs the recurrent baseline appear as ratios measured in the same run:
"learner" (time per gradient update, sampling excluded and included), "training" (collection +
learning per vector step, per recipe), "training_overlap" (frames/s of Pong runs with
``collector.overlap`` off and on), "encoders" (frozen-encoder throughput and the collector slowdown
of RiseContextTransform), "replay" (footprint and sampling), "checkpoint" (replay dumps and loads),
"per" (the PER draw: BTR's rules vs TorchRL's), "sequence_replay" (the recurrent baseline's
sequence batches vs RISE's transitions), "envs" (steps/s per suite) and "collectors" (direct vs
multi_sync vs Ray collection, and the bytes of a batch; needs ``ray``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "learner": ["bench_learner.py", "--repeats", "3"],
    "replay": ["bench_replay.py"],
    "sequence_replay": ["bench_sequence_replay.py"],
    "checkpoint": ["bench_checkpoint.py"],
    "per": ["bench_per.py"],
    "encoders": ["bench_encoders.py"],
    "training": ["bench_training.py", "--collect", "5", "--learn", "5"],
    "training_overlap": ["bench_overlap.py"],
    "envs": ["bench_envs.py"],
    "collectors": ["bench_collectors.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")

    failed = []
    for name in names:
        script, *options = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / script)]
        cmd += ["--quick"] if args.quick else options
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd, cwd=HERE.parent).returncode != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"docs/benchmarks.md updated ({len(names) - len(failed)}/{len(names)} sections)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
