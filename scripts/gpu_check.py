#!/usr/bin/env python3
"""`make gpu-check`: the GPU benchmarks and the GPU tests, in one run within a time budget.

1. If torchrl (or another needed package) is not importable, install the wheels of
   ``.gpu-wheels/`` (``make gpu-wheels``, fetched where PyPI is reachable) with
   ``pip install --no-index --no-deps --target`` into a folder put on ``PYTHONPATH``, and run
   again with it: the machine's own python3, torch and torchvision stay in use.
2. Stages, the most valuable first (``STAGES``): ms per update of btr and rise K=80 (``Learner``,
   sampling excluded); the replay's sample time (+ the copy to the device); training frames/s of
   rise and btr with overlapped collection (the Atari recipe's own configuration: 64 envs,
   ResNet18 context encoder, batch 256), projected to hours per 200M frames; the GPU tests
   (``pytest -m gpu tests/test_gpu.py``); then the recurrent baseline's update and the
   non-overlapped training rows.
3. ``--budget-s`` (default 300 s, counted from the start, install included): a stage whose
   estimate no longer fits is skipped and reported as skipped; the tests get what is left.
4. After every stage, everything measured so far is written to ``--out`` (default ``$OUT`` when
   set, else ``runs/gpu_check/<time>``): ``summary.json`` (every stage: done, skipped, error,
   with its figures or reason), ``benchmarks_gpu.md`` (the "gpu" section of docs/benchmarks.md),
   ``pytest.log`` and ``gpu_tests.xml`` (the tests), ``gpu_check.log`` (this script's log). A run
   killed at its timeout still leaves what it had measured. The exit code is 1 if a test failed
   or a stage raised, else 0: the files are written either way.

    python3 scripts/gpu_check.py --out DIR            # on the GPU machine (docs/gpu.md)
    python3 scripts/gpu_check.py --dry-run --out DIR  # anywhere: DEVICE=cpu, tiny sizes, the
                                                      # tests' CPU stand-ins; about a minute
    python3 scripts/gpu_check.py --merge DIR/benchmarks_gpu.md   # into docs/benchmarks.md

``DEVICE`` (default ``cuda``; ``cpu`` with ``--dry-run``) picks the device. PER uses the replay's
pure-torch sum tree where the replay has that option (``tree="torch"``): a torchrl wheel's C++
extension is built for one torch, and the machine's torch may be another.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
SITE = Path(tempfile.gettempdir()) / "torchrl_rise_gpu_site"
NEEDED = ("torchrl", "tensordict", "gymnasium", "ale_py", "hydra", "omegaconf")
BTR_HOURS_200M = 11.5  # BTR (Clark et al., 2024): 200M frames in 11.5 h on one RTX 4090
SECTION = ("gpu", "GPU: learner, replay, collection and training")
_REEXEC = "_TORCHRL_RISE_GPU_CHECK_INSTALLED"
_T0 = "_TORCHRL_RISE_GPU_CHECK_T0"  # the first process's start, so the install counts too
PYTEST = [sys.executable, "-m", "pytest"]  # the tests' runner (tests put a fake one here)
MIN_CUT_S = 45.0  # a stage cut at the budget (the tests) starts only with this much left
GRACE_S = 60.0  # a stage still running this long past the budget (a hang) ends the check
_hard_exit = os._exit  # the watchdog's way out (tests replace it)
_log_path: Path | None = None


def log(msg: str) -> None:
    line = f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if _log_path is not None:
        with open(_log_path, "a") as f:
            f.write(line + "\n")


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def ensure_packages(argv: list[str], *, t0: float) -> None:
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
            "is reachable and copy .gpu-wheels/ to this machine (docs/gpu.md)."
        )
    log(f"installing {len(wheels)} wheels into {SITE} ({', '.join(missing)} missing)")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    cmd += ["--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)]
    subprocess.run(cmd, check=True)
    env = dict(os.environ, **{_REEXEC: "1"})
    env[_T0] = str(t0)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH")) if p)
    os.execve(sys.executable, [sys.executable, __file__, *argv], env)


# --------------------------------------------------------------------------- budget and stages
class Budget:
    """Seconds left of ``seconds`` since ``t0`` (``time.time()``), and whether an estimate fits."""

    def __init__(self, seconds: float, *, t0: float | None = None) -> None:
        self.seconds = seconds
        self.t0 = time.time() if t0 is None else t0

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left()


@dataclass
class Context:
    device: object  # torch.device
    sizes: dict
    out: Path
    dry_run: bool
    budget: Budget


@dataclass
class Stage:
    """One step of the check: ``run(ctx)`` returns its result (a dict). ``estimate_s`` is its cost
    on a GPU machine until a stage of the same ``group`` has run (then that one's cost)."""

    name: str
    group: str
    estimate_s: float
    run: Callable[[Context], dict]
    cut_at_budget: bool = False  # starts with MIN_CUT_S left and stops itself at the budget


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def replay_kwargs() -> dict:
    from torchrl_rise.replay import RiseReplayBuffer

    params = inspect.signature(RiseReplayBuffer).parameters
    return {"tree": "torch"} if "tree" in params else {}


def bench_learner(ctx: Context, kind: str) -> dict:
    """Seconds per update (sampling excluded) with the library defaults on this device."""
    from benchmarks._report import median_time
    from benchmarks.bench_learner import BenchLearner, sequence_batch, synthetic_batch

    s, device = ctx.sizes, str(ctx.device)
    if kind == "recurrent_baseline":
        seqs, burn, train = s["seqs"], s["burn"], s["train"]
        learner = BenchLearner(kind, burn_in=burn, device=device, net_kwargs=s["net"])
        data, repeats = sequence_batch(seqs, burn + train), max(1, s["repeats"] // 2)
        name = f"recurrent_baseline ({seqs} x ({burn} + {train}))"
    else:
        k = s["k"] if kind == "rise" else None
        learner = BenchLearner(kind, k=k, device=device, net_kwargs=s["net"])
        data, repeats = synthetic_batch(s["batch"], k), s["repeats"]
        name = f"rise K={k}" if k else kind
    t = median_time(lambda: learner.update(data), repeats=repeats, warmup=2)
    log(f"learner {name}: {t * 1e3:.1f} ms/update (bf16={learner.learner.bf16})")
    return {"config": name, "s_per_update": t, "bf16": learner.learner.bf16}


def bench_sample(ctx: Context) -> dict:
    """Milliseconds per ``sample(batch)`` of the K-window replay, and with the copy to the device."""
    from benchmarks._report import median_time
    from benchmarks.bench_learner import fill_rise_buffer

    s, device = ctx.sizes, ctx.device
    rb = fill_rise_buffer(s["k"], capacity=s["capacity"], **replay_kwargs())
    b = s["batch"]
    try:
        host = median_time(lambda: rb.sample(b), repeats=s["repeats"] * 2, warmup=2)

        def moved():
            rb.sample(b).to(device, non_blocking=True)
            _sync(device)

        with_copy = median_time(moved, repeats=s["repeats"] * 2, warmup=2)
    finally:
        rb.cleanup()
    log(f"sample: {host * 1e3:.1f} ms, + copy to {device}: {with_copy * 1e3:.1f} ms")
    tree = replay_kwargs().get("tree", "torchrl C++ segment trees")
    return {
        "batch": b,
        "sample_ms": host * 1e3,
        "sample_to_device_ms": with_copy * 1e3,
        "tree": tree,
    }


def bench_training(ctx: Context, method: str, *, overlap: bool) -> dict:
    """The recipe's Atari configuration through Trainer: collection and training frames/s."""
    from benchmarks.bench_training import measure

    s = ctx.sizes
    extra = [f"device={ctx.device.type}", f"collector.overlap={str(overlap).lower()}"]
    extra += [f"++replay.kwargs.{k}={v}" for k, v in replay_kwargs().items()]
    extra += s["training_overrides"]
    res = measure(
        "atari",
        method,
        bf16=s["bf16"],
        collect=s["collect"],
        learn=s["learn"],
        quick=s["quick"],
        extra_overrides=extra,
    )
    frames = res["num_envs"] * res["frame_skip"]
    res["overlap"] = overlap
    res["collect_fps"] = frames / res["collect_s"] if res["collect_s"] > 0 else math.nan
    res["train_fps"] = frames / res["step_s"] if res["step_s"] > 0 else math.nan
    res["h_per_200m"] = 200 * res["h_per_m"]
    log(
        f"training {method} ({'overlapped' if overlap else 'sync'}): collect "
        f"{res['collect_fps']:.0f} frames/s, train {res['train_fps']:.0f} frames/s, "
        f"{res['h_per_200m']:.1f} h / 200M frames"
    )
    return res


# --------------------------------------------------------------------------- the tests
_OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)")
_TOTAL = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def parse_pytest_log(text: str) -> dict:
    """Counts and failed tests from ``pytest -v`` output; from the per-test lines where the run
    was cut short (no closing summary line)."""
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        m = _OUTCOME.match(line.strip())
        if m:
            outcomes[m.group(1)] = m.group(2).lower()
    failed = sorted(t for t, o in outcomes.items() if o in ("failed", "error"))
    failed += sorted({m.group(1) for m in re.finditer(r"^(?:FAILED|ERROR) (\S+)", text, re.M)})
    counts: dict[str, int] = {}
    closing = [ln for ln in text.splitlines() if re.match(r"^=+ .*\d+ \w+.* in [\d.]+s", ln)]
    if closing:
        for n, what in _TOTAL.findall(closing[-1]):
            counts["errors" if what.startswith("error") else what] = int(n)
    else:
        for outcome in outcomes.values():
            key = {"error": "errors"}.get(outcome, outcome)
            counts[key] = counts.get(key, 0) + 1
    return {"counts": counts, "failed": list(dict.fromkeys(failed)), "complete": bool(closing)}


def _tee(stream, path: Path) -> None:
    with open(path, "w") as f:
        for line in stream:
            f.write(line)
            f.flush()
            sys.stdout.write(line)
    sys.stdout.flush()


def run_tests(ctx: Context) -> dict:
    """``pytest tests/test_gpu.py``: the ``gpu`` cases on CUDA, the CPU stand-ins in a dry run;
    cut at the budget left. Output in ``pytest.log`` (and ``gpu_tests.xml``) as it runs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cuda = ctx.device.type == "cuda"
    if cuda:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES") or "0"
    marker = "gpu" if cuda else "not gpu"  # the CPU stand-ins of the same tests
    log_path, junit = ctx.out / "pytest.log", ctx.out / "gpu_tests.xml"
    cmd = [*PYTEST, "tests/test_gpu.py", "-m", marker, "-v", "-rfEs", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}"]
    timeout = max(1.0, ctx.budget.left())
    log(f"tests ({timeout:.0f} s at most): {' '.join(cmd[len(PYTEST) :])}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    reader = threading.Thread(target=_tee, args=(proc.stdout, log_path), daemon=True)
    reader.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    reader.join(timeout=10)
    parsed = parse_pytest_log(log_path.read_text() if log_path.exists() else "")
    result = {"rc": rc, "marker": marker, "timed_out": timed_out, "log": log_path.name, **parsed}
    log(
        f"tests: rc {rc}, {parsed['counts']}"
        + (f", failed: {parsed['failed']}" * bool(parsed["failed"]))
    )
    if timed_out:
        log(f"tests: cut after {timeout:.0f} s (the budget); pytest.log has what ran")
    return result


def tests_failed(result: dict | None) -> bool:
    if not result:
        return False
    return result["rc"] not in (0, 5) or result["timed_out"] or bool(result["failed"])


STAGES = [
    Stage("learner_btr", "learner", 20, lambda ctx: bench_learner(ctx, "btr")),
    Stage("learner_rise", "learner", 25, lambda ctx: bench_learner(ctx, "rise")),
    Stage("sample", "sample", 40, bench_sample),
    Stage(
        "training_rise_overlap", "training", 75, lambda c: bench_training(c, "rise", overlap=True)
    ),
    Stage("training_btr_overlap", "training", 75, lambda c: bench_training(c, "btr", overlap=True)),
    Stage("tests", "tests", 120, run_tests, cut_at_budget=True),
    Stage("learner_recurrent", "learner", 25, lambda ctx: bench_learner(ctx, "recurrent_baseline")),
    Stage("training_rise_sync", "training", 75, lambda c: bench_training(c, "rise", overlap=False)),
    Stage("training_btr_sync", "training", 75, lambda c: bench_training(c, "btr", overlap=False)),
]


# --------------------------------------------------------------------------- running and writing
def start_watchdog(budget: Budget, summary: dict, write: Callable[[], None]) -> threading.Timer:
    """End the check ``GRACE_S`` past the budget if a stage is still running then (a hang, or far
    over its estimate): that stage is marked ``cut`` and the files written first, exit code 3."""

    def stop() -> None:
        for name, record in summary["stages"].items():
            if record["status"] == "running":
                record.update(status="cut", reason=f"still running {GRACE_S:.0f} s past the budget")
                log(f"{name}: {record['reason']}: the check stops here")
        summary["elapsed_s"] = budget.elapsed()
        write()
        _hard_exit(3)

    timer = threading.Timer(max(budget.left(), 0.0) + GRACE_S, stop)
    timer.daemon = True
    timer.start()
    return timer


def run_stages(ctx: Context, stages: list[Stage], summary: dict, write: Callable[[], None]) -> None:
    """Run ``stages`` in order within the budget; record each and ``write()`` after each."""
    measured: dict[str, float] = {}
    for stage in stages:
        estimate = measured.get(stage.group, stage.estimate_s)
        needed = MIN_CUT_S if stage.cut_at_budget else estimate
        record = summary["stages"][stage.name]
        if not ctx.budget.fits(needed):
            record.update(
                status="skipped",
                reason=f"budget: needs ~{needed:.0f} s, {max(ctx.budget.left(), 0):.0f} s of "
                f"{ctx.budget.seconds:.0f} s left",
            )
            log(f"{stage.name}: skipped ({record['reason']})")
            write()
            continue
        log(f"{stage.name} (~{estimate:.0f} s, {ctx.budget.left():.0f} s left)")
        record.update(status="running", started_at_s=ctx.budget.elapsed())
        write()  # a check killed now still says where it was
        started = time.perf_counter()
        try:
            record.update(status="done", result=stage.run(ctx))
        except Exception as err:  # one broken stage must not lose the others' figures
            record.update(status="error", error=f"{type(err).__name__}: {err}")
            record["traceback"] = traceback.format_exc()
            log(f"{stage.name}: error\n{record['traceback']}")
        record["seconds"] = measured[stage.group] = time.perf_counter() - started
        summary["elapsed_s"] = ctx.budget.elapsed()
        write()


_UNFINISHED = {"pending": "not reached yet", "running": "was running when this was written"}


def _cells(summary: dict, name: str, width: int, row: Callable[[dict], list]) -> list | None:
    record = summary["stages"].get(name)
    if record is None:
        return None
    if record["status"] == "done":
        return row(record["result"])
    why = record.get("reason") or record.get("error") or _UNFINISHED.get(record["status"], "")
    return [name, f"{record['status']}: {why}", *[""] * (width - 2)]


def _learner_row(btr: float | None) -> Callable[[dict], list]:
    def row(r: dict) -> list:
        ratio = f"{r['s_per_update'] / btr:.2f}" if btr else ""
        return [
            r["config"],
            f"{r['s_per_update'] * 1e3:.1f}",
            ratio,
            "bf16" if r["bf16"] else "fp32",
        ]

    return row


def _training_row(r: dict) -> list:
    return [
        r["method"],
        "overlapped" if r["overlap"] else "sync",
        f"{r['num_envs']} x {r['frame_skip']}",
        r["batch"],
        f"{r['collect_fps']:.0f}",
        f"{r['train_fps']:.0f}",
        f"{r['h_per_200m']:.1f}",
        f"{r['h_per_200m'] / BTR_HOURS_200M:.2f}",
    ]


def _tests_text(summary: dict) -> str:
    record = summary["stages"].get("tests")
    if record is None:
        return "GPU tests: not run (`--stages` / `--skip-tests`)."
    if record["status"] != "done":
        why = record.get("reason") or record.get("error") or _UNFINISHED.get(record["status"])
        return f"GPU tests: {record['status']} ({why})."
    r = record["result"]
    counts = ", ".join(f"{n} {k}" for k, n in r["counts"].items()) or "no result"
    what = "GPU tests" if r["marker"] == "gpu" else "The GPU tests' CPU stand-ins"
    text = f'{what} (`pytest -m "{r["marker"]}" tests/test_gpu.py`): exit code {r["rc"]}, '
    text += f"{counts}, {record['seconds']:.0f} s" + (
        " (cut at the budget)" if r["timed_out"] else ""
    )
    if r["failed"]:
        text += ". **Failed**: " + ", ".join(f"`{t}`" for t in r["failed"])
    return text + ". Log: `pytest.log`."


def render(summary: dict) -> str:
    """The "gpu" section's body from what ``summary`` holds so far (skipped stages named)."""
    from benchmarks._report import markdown_table

    st = summary["stages"]
    btr = st.get("learner_btr", {}).get("result", {}).get("s_per_update")
    learner = [
        _cells(summary, n, 4, _learner_row(btr))
        for n in ("learner_btr", "learner_rise", "learner_recurrent")
    ]
    training = [_cells(summary, n, 8, _training_row) for n in st if n.startswith("training_")]
    sample = st.get("sample", {})
    if sample.get("status") == "done":
        r = sample["result"]
        sample_text = (
            f"`RiseReplayBuffer.sample({r['batch']})` with K-window assembly on the host (PER: "
            f"{r['tree']}): {r['sample_ms']:.1f} ms; with the copy to the device: "
            f"{r['sample_to_device_ms']:.1f} ms."
        )
    else:
        status = sample.get("status", "not selected")
        why = sample.get("reason") or sample.get("error") or _UNFINISHED.get(status, "")
        sample_text = f"Replay sample: {status}" + (f" ({why})." if why else ".")
    skipped = [n for n, r in st.items() if r["status"] == "skipped"]
    dry = " (dry run: tiny sizes on the CPU, not figures)" if summary["dry_run"] else ""
    state = "finished" if summary.get("finished") else "still running (figures so far)"
    return f"""
Device: **{summary["device"]}**{dry}. Check {state}: {summary.get("elapsed_s", 0):.0f} s of a
{summary["budget_s"]:.0f} s budget{"; skipped for the budget: " + ", ".join(skipped) if skipped else ""}.

{_tests_text(summary)}

### Learner: time per update (sampling excluded)

`Learner.update(1)` (IQNLoss + backward + clip + fused Adam + target update), synthetic Atari
batches, the library defaults on this device (bf16 autocast where the GPU has it natively);
medians, device synchronized after each update.

{markdown_table(["configuration", "ms / update", "/ btr", "learner"], [r for r in learner if r])}

### Replay: sample

{sample_text}

### Collection and training (the Atari recipe through `Trainer`)

Medians over the collection-only vector steps and the steps with one update each (as the
"training" section); "overlapped": `collector.overlap=true`. Hours per 200M frames are
extrapolated from the training rate. BTR's figure to beat: {BTR_HOURS_200M} h per 200M frames on
one RTX 4090.

{markdown_table(["method", "collector", "envs x frame skip", "batch", "collection frames/s", "training frames/s", "h / 200M frames", "/ BTR's 11.5 h"], [r for r in training if r])}
"""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_outputs(summary: dict, out: Path, report: Path | None) -> None:
    """summary.json and benchmarks_gpu.md in ``out`` (and the section in ``report``)."""
    from benchmarks._report import render_section, replace_section

    _write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    section = render_section(*SECTION, render(summary))
    _write_atomic(out / "benchmarks_gpu.md", section)
    if report is not None:
        replace_section(SECTION[0], section, path=report)


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


def select_stages(names: str | None, *, skip_tests: bool) -> list[Stage]:
    """``--stages``: stage names or groups (comma-separated), in ``STAGES``'s order."""
    stages = STAGES
    if names:
        wanted = {n.strip() for n in names.split(",") if n.strip()}
        known = {s.name for s in STAGES} | {s.group for s in STAGES}
        if wanted - known:
            raise SystemExit(
                f"--stages: unknown {sorted(wanted - known)}; known: {', '.join(s.name for s in STAGES)} "
                f"or a group ({', '.join(dict.fromkeys(s.group for s in STAGES))})"
            )
        stages = [s for s in STAGES if s.name in wanted or s.group in wanted]
    return [s for s in stages if not (skip_tests and s.group == "tests")]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: $OUT, else runs/gpu_check/<time>)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="seconds for the whole check, install included (default 300)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="DEVICE=cpu, tiny sizes, the tests' CPU stand-ins"
    )
    parser.add_argument(
        "--stages", default=None, help="comma list of stages or groups (default: all)"
    )
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the section into this markdown file (default: docs/benchmarks.md on a real run, none on a dry run)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        metavar="BENCHMARKS_GPU_MD",
        help="copy the gpu section of this file (a check's benchmarks_gpu.md) into docs/benchmarks.md, and exit",
    )
    return parser.parse_args(argv)


def merge(src: Path, dest: Path | None = None) -> None:
    from benchmarks._report import BENCHMARKS_MD, read_section, replace_section

    dest = dest or BENCHMARKS_MD
    replace_section(SECTION[0], read_section(SECTION[0], src), path=dest)
    log(f"copied the '{SECTION[0]}' section of {src} into {dest}")


def pick_device(dry_run: bool):
    import torch

    name = os.environ.get("DEVICE") or ("cpu" if dry_run else "cuda")
    if name.startswith("cuda"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("DEVICE=cuda but torch sees no GPU (use --dry-run on a CPU machine)")
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def output_dir(out: Path | None) -> Path:
    if out is None:
        env = os.environ.get("OUT")
        out = Path(env) if env else ROOT / "runs" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    global _log_path
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.merge:
        merge(args.merge, args.report)
        return 0
    budget = Budget(args.budget_s, t0=float(os.environ.get(_T0) or time.time()))
    stages = select_stages(args.stages, skip_tests=args.skip_tests)
    ensure_packages(argv, t0=budget.t0)
    import torch

    from benchmarks._report import BENCHMARKS_MD

    device = pick_device(args.dry_run)
    sizes = SIZES["dry" if args.dry_run else "gpu"]
    if args.dry_run:
        torch.set_num_threads(1)
    out = output_dir(args.out)
    _log_path = out / "gpu_check.log"
    report = args.report or (None if args.dry_run else BENCHMARKS_MD)
    log(
        f"device {device}, torch {torch.__version__}, sizes {'dry' if args.dry_run else 'gpu'}, "
        f"budget {budget.seconds:.0f} s, out {out}"
    )
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
        "budget_s": budget.seconds,
        "elapsed_s": budget.elapsed(),
        "finished": False,
        "stages": {s.name: {"status": "pending"} for s in stages},
    }

    lock = threading.Lock()  # the watchdog's thread writes too

    def write() -> None:
        with lock:
            write_outputs(summary, out, report)

    write()
    watchdog = start_watchdog(budget, summary, write)
    torch.manual_seed(0)
    try:
        run_stages(Context(device, sizes, out, args.dry_run, budget), stages, summary, write)
    finally:
        watchdog.cancel()
    summary.update(finished=True, elapsed_s=budget.elapsed())
    write()
    print(render(summary), flush=True)
    failed = tests_failed(summary["stages"].get("tests", {}).get("result"))
    errors = [n for n, r in summary["stages"].items() if r["status"] == "error"]
    log(
        f"wrote {out}/summary.json and benchmarks_gpu.md"
        + (f" and {report}" if report else "")
        + ("; tests failed" if failed else "")
        + (f"; errors in {errors}" if errors else "")
    )
    _log_path = None
    return 1 if failed or errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
