#!/usr/bin/env python3
"""`make gpu-check`: the GPU tests and the GPU benchmarks, in one run on a machine with one GPU.

1. If torchrl (or another needed package) is not importable, install the wheels of
   ``.gpu-wheels/`` (``make gpu-wheels``, fetched where PyPI is reachable) with
   ``pip install --no-index --no-deps --target`` into a folder put on ``PYTHONPATH``, and run
   again with it: the machine's own python3, torch and torchvision stay in use.
2. ``pytest -m gpu tests/test_gpu.py`` (encoder transform, replay gathers, network + loss +
   learner on CUDA without host syncs, short Atari runs of rise and btr through ``Trainer``,
   resume on CUDA).
3. Benchmarks at GPU sizes (batch 256, K=80): seconds per update of btr, rise K=80 and the
   recurrent baseline (``Learner``, sampling excluded); the replay's sample time (+ the copy to
   the device); collection frames/s and training frames/s of rise and btr (the recipe's own
   Atari configuration through ``Trainer``, as benchmarks/bench_training.py), projected to hours
   per 200M frames (BTR: 11.5 h on an RTX 4090).
4. The "gpu" section of docs/benchmarks.md.

    python3 scripts/gpu_check.py             # on the GPU machine (docs/gpu.md)
    python3 scripts/gpu_check.py --dry-run   # here: DEVICE=cpu, tiny sizes, seconds; writes
                                             # the section to a scratch file, not docs/

``DEVICE`` (default ``cuda``; ``cpu`` with ``--dry-run``) picks the device. PER uses the replay's
pure-torch sum tree where the replay has that option (``tree="torch"``): torchrl's C++ extension
there is built for another torch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
SITE = Path(tempfile.gettempdir()) / "torchrl_rise_gpu_site"
NEEDED = ("torchrl", "tensordict", "gymnasium", "ale_py", "hydra", "omegaconf")
BTR_HOURS_200M = 11.5  # BTR (Clark et al., 2024): 200M frames in 11.5 h on one RTX 4090
_REEXEC = "_TORCHRL_RISE_GPU_CHECK_INSTALLED"


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def ensure_packages(argv: list[str]) -> None:
    """Install .gpu-wheels (no deps, no index) and run this script again if something is missing."""
    missing = missing_packages()
    if not missing:
        return
    if os.environ.get(_REEXEC):
        raise SystemExit(f"still missing after installing {WHEELS}: {missing}")
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise SystemExit(
            f"{missing} not importable and no wheels in {WHEELS}: run `make gpu-wheels` where PyPI "
            "is reachable and carry .gpu-wheels to this machine (docs/gpu.md)."
        )
    log(f"installing {len(wheels)} wheels into {SITE} ({', '.join(missing)} missing)")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)]
    subprocess.run(cmd, check=True)
    env = dict(os.environ, _TORCHRL_RISE_GPU_CHECK_INSTALLED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SITE), env.get("PYTHONPATH", "")])
    os.execve(sys.executable, [sys.executable, __file__, *argv], env)


# --------------------------------------------------------------------------- stages
def run_tests(device: str, *, dry_run: bool, out: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES") or "0"
    junit = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-rs"]
    cmd += ["-p", "no:cacheprovider", f"--junitxml={junit}"]
    if dry_run:
        cmd.append("--collect-only")
    log("tests: " + " ".join(cmd[2:]))
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    result = {"rc": proc.returncode, "seconds": time.perf_counter() - started, "counts": {}}
    if junit.exists():
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result["counts"] = {
            k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
        }
    return result


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(fn, *, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def replay_kwargs() -> dict:
    from torchrl_rise.replay import RiseReplayBuffer

    params = inspect.signature(RiseReplayBuffer).parameters
    return {"tree": "torch"} if "tree" in params else {}


def bench_learner(device, sizes: dict) -> list[dict]:
    """Seconds per update (sampling excluded) with the library defaults on this device."""
    from benchmarks.bench_learner import BenchLearner, sequence_batch, synthetic_batch

    rows = []
    b, k = sizes["batch"], sizes["k"]
    for name, kind, kk in (("btr", "btr", None), (f"rise K={k}", "rise", k)):
        learner = BenchLearner(kind, k=kk, device=str(device), net_kwargs=sizes["net"])
        data = synthetic_batch(b, kk)
        t = _median(lambda lr=learner, d=data: lr.update(d), repeats=sizes["repeats"], warmup=2)
        rows.append({"config": name, "s_per_update": t, "bf16": learner.learner.bf16})
        log(f"learner {name}: {t * 1e3:.1f} ms/update (bf16={learner.learner.bf16})")
    seqs, burn, train = sizes["seqs"], sizes["burn"], sizes["train"]
    learner = BenchLearner(
        "recurrent_baseline", burn_in=burn, device=str(device), net_kwargs=sizes["net"]
    )
    data = sequence_batch(seqs, burn + train)
    t = _median(lambda: learner.update(data), repeats=max(1, sizes["repeats"] // 2), warmup=1)
    name = f"recurrent_baseline ({seqs} x ({burn} + {train}))"
    rows.append({"config": name, "s_per_update": t, "bf16": learner.learner.bf16})
    log(f"learner {name}: {t * 1e3:.1f} ms/update")
    return rows


def bench_sample(device, sizes: dict) -> dict:
    """Milliseconds per ``sample(batch)`` of the K-window replay, and with the copy to ``device``."""
    from benchmarks.bench_learner import fill_rise_buffer

    rb = fill_rise_buffer(sizes["k"], capacity=sizes["capacity"], **replay_kwargs())
    b = sizes["batch"]
    try:
        host = _median(lambda: rb.sample(b), repeats=sizes["repeats"] * 2, warmup=2)

        def moved():
            rb.sample(b).to(device, non_blocking=True)
            _sync(device)

        with_copy = _median(moved, repeats=sizes["repeats"] * 2, warmup=2)
    finally:
        rb.cleanup()
    log(f"sample: {host * 1e3:.1f} ms, + copy to {device}: {with_copy * 1e3:.1f} ms")
    return {"sample_ms": host * 1e3, "sample_to_device_ms": with_copy * 1e3, **replay_kwargs()}


def bench_training(device, sizes: dict) -> list[dict]:
    """The recipe's Atari configuration through Trainer: collection and training frames/s."""
    from benchmarks.bench_training import measure

    extra = [f"device={device.type}"]
    extra += [f"++replay.kwargs.{k}={v}" for k, v in replay_kwargs().items()]
    extra += sizes["training_overrides"]
    rows = []
    for method in ("rise", "btr"):
        res = measure(
            "atari",
            method,
            bf16=sizes["bf16"],
            collect=sizes["collect"],
            learn=sizes["learn"],
            quick=sizes["quick"],
            extra_overrides=extra,
        )
        frames = res["num_envs"] * res["frame_skip"]
        res["collect_fps"] = frames / res["collect_s"] if res["collect_s"] > 0 else math.nan
        res["train_fps"] = frames / res["step_s"] if res["step_s"] > 0 else math.nan
        res["h_per_200m"] = 200 * res["h_per_m"]
        log(
            f"training {method}: collect {res['collect_fps']:.0f} frames/s, train "
            f"{res['train_fps']:.0f} frames/s, {res['h_per_200m']:.1f} h / 200M frames"
        )
        rows.append(res)
    return rows


def report(device, tests: dict, learner: list, sample: dict, training: list, dry_run: bool) -> str:
    import torch

    from benchmarks._report import markdown_table

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    btr = next(r for r in learner if r["config"] == "btr")["s_per_update"]
    learner_rows = [
        [
            r["config"],
            f"{r['s_per_update'] * 1e3:.1f}",
            f"{r['s_per_update'] / btr:.2f}",
            "bf16" if r["bf16"] else "fp32",
        ]
        for r in learner
    ]
    train_rows = [
        [
            r["method"],
            f"{r['num_envs']} x {r['frame_skip']}",
            r["batch"],
            f"{r['collect_fps']:.0f}",
            f"{r['train_fps']:.0f}",
            f"{r['h_per_200m']:.1f}",
            f"{r['h_per_200m'] / BTR_HOURS_200M:.2f}",
        ]
        for r in training
    ]
    counts = tests.get("counts") or {}
    tree = sample.get("tree", "torchrl C++ segment trees")
    return f"""
Device: **{name}**{" (dry run: tiny sizes, not figures)" if dry_run else ""}.
GPU tests (`pytest -m gpu tests/test_gpu.py`): exit code {tests["rc"]}, {counts.get("tests", "?")}
tests, {counts.get("failures", "?")} failures, {counts.get("errors", "?")} errors,
{counts.get("skipped", "?")} skipped, {tests["seconds"]:.0f} s.

### Learner: time per update (sampling excluded)

`Learner.update(1)` (IQNLoss + backward + clip + fused Adam + target update), synthetic Atari
batches, the library defaults on this device (bf16 autocast where the GPU has it natively);
medians, device synchronized after each update.

{markdown_table(["configuration", "ms / update", "/ btr", "learner"], learner_rows)}

### Replay: sample

`RiseReplayBuffer.sample({sample.get("batch", "")})` with K-window assembly on the host (PER: {tree}):
{sample["sample_ms"]:.1f} ms; with the copy to the device: {sample["sample_to_device_ms"]:.1f} ms.

### Collection and training (the Atari recipe through `Trainer`)

Medians over the collection-only vector steps and the steps with one update each (as the "training"
section); hours per 200M frames are extrapolated from them. BTR's figure to beat: {BTR_HOURS_200M} h
per 200M frames on one RTX 4090.

{markdown_table(["method", "envs x frame skip", "batch", "collection frames/s", "training frames/s", "h / 200M frames", "/ BTR's 11.5 h"], train_rows)}
"""


SIZES = {
    "gpu": {
        "batch": 256,
        "k": 80,
        "repeats": 10,
        "seqs": 64,
        "burn": 40,
        "train": 80,
        "capacity": 1 << 16,
        "collect": 8,
        "learn": 12,
        "quick": False,
        "bf16": True,
        "net": {},  # the library's defaults (BTR's sizes)
        "training_overrides": [],
    },
    "dry": {
        "batch": 8,
        "k": 4,
        "repeats": 1,
        "seqs": 2,
        "burn": 2,
        "train": 4,
        "capacity": 2048,
        "collect": 1,
        "learn": 2,
        "quick": True,
        "bf16": False,
        "net": {"width_scale": 0.25, "mlp_hidden": 16, "lstm_hidden": 8, "spectral_norm": False},
        "training_overrides": [
            "env.frame_size=42",
            "encoder.name=downsample",
            "++encoder.kwargs={size: 8}",
            "encoder.context_length=4",
            "++network.kwargs={width_scale: 0.25, mlp_hidden: 16, lstm_hidden: 8, "
            "num_cosines: 8, spectral_norm: false}",
            "replay.capacity=2048",
            "num_threads=1",
        ],
    },
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="DEVICE=cpu, tiny sizes, seconds")
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    parser.add_argument(
        "--report", type=Path, default=None, help="benchmarks file (default: docs/benchmarks.md)"
    )
    args = parser.parse_args(argv)
    ensure_packages(argv)
    sys.path.insert(0, str(ROOT))
    device_name = os.environ.get("DEVICE") or ("cpu" if args.dry_run else "cuda")
    if device_name.startswith("cuda"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    import torch

    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("DEVICE=cuda but torch sees no GPU (use --dry-run on a CPU machine)")
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if args.dry_run:
        torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"device {device}, torch {torch.__version__}, sizes {'dry' if args.dry_run else 'gpu'}")

    tests = {"rc": 0, "seconds": 0.0, "counts": {}, "skipped": True}
    if not args.skip_tests:
        tests = run_tests(device_name, dry_run=args.dry_run, out=out)
    torch.manual_seed(0)
    learner = bench_learner(device, sizes)
    sample = {**bench_sample(device, sizes), "batch": sizes["batch"]}
    training = bench_training(device, sizes)
    body = report(device, tests, learner, sample, training, args.dry_run)
    body += f"\nWhole check: {(time.perf_counter() - started) / 60:.1f} min.\n"
    from benchmarks._report import BENCHMARKS_MD, write_section

    path = args.report or (out / "benchmarks.md" if args.dry_run else BENCHMARKS_MD)
    write_section("gpu", "GPU: learner, replay, collection and training", body, path=path)
    results = {"tests": tests, "learner": learner, "sample": sample, "training": training}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(body)
    log(f"wrote the 'gpu' section of {path} and {out / 'results.json'}")
    return 1 if tests["rc"] not in (0, 5) else 0


if __name__ == "__main__":
    raise SystemExit(main())
