"""Shared plumbing for benchmark scripts: machine description, medians, and writing one section of
docs/benchmarks.md without touching the others (each script owns the section named after it)."""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = """# Benchmarks

Figures written by the scripts in `benchmarks/` (`make bench` runs them all). Each section names the
command that produced it and the machine it ran on. Times are medians over repeats; comparisons are
ratios measured in the same run. These machines are shared, so absolute figures move by 10-30% between
runs; the ratios are steadier.
"""


def add_int_options(parser: argparse.ArgumentParser, **defaults: int) -> None:
    """Integer options ``--name`` (underscores written as dashes) with these defaults, in order."""
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)


def parse_replay_args(parser: argparse.ArgumentParser, scratch: Path) -> argparse.Namespace:
    """A replay benchmark's arguments, with ``--scratch`` (default ``scratch``) and ``--no-write``
    added; ``--quick`` means 2^15 records and 5 repeats. Sets torch to 2 threads."""
    parser.add_argument("--scratch", type=Path, default=scratch)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.capacity, args.repeats = 2**15, 5
    torch.set_num_threads(2)
    return args


def machine_description() -> str:
    """One line naming the CPU/GPU, core count and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import torchrl

    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, torchrl "
        f"{torchrl.__version__}, {torch.get_num_threads()} torch threads"
    )


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); else autocast emulates it,
    slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def median_time(fn: Callable[[], object], *, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render_section(name: str, title: str, body: str) -> str:
    """The section ``name`` of docs/benchmarks.md, stamped with the command, machine and date."""
    stamp = (
        f"Command: `{command_line()}` (commit {git_revision()}, {time.strftime('%Y-%m-%d')})\n\n"
        f"Machine: {machine_description()}\n\n"
    )
    return f"<!-- BEGIN {name} -->\n## {title}\n\n{stamp}{body.strip()}\n<!-- END {name} -->\n"


def _section_pattern(name: str) -> re.Pattern:
    return re.compile(
        rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n?", re.S
    )


def replace_section(name: str, section: str, *, path: Path = BENCHMARKS_MD) -> None:
    """Put ``section`` (from :func:`render_section`) in place of ``name`` in ``path``, or append it;
    other sections are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else _HEADER
        pattern = _section_pattern(name)
        if pattern.search(text):
            text = pattern.sub(lambda _: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section
        path.write_text(text)


def read_section(name: str, path: Path) -> str:
    """The section ``name`` of ``path`` (markers included); ``ValueError`` if it has none."""
    found = _section_pattern(name).search(path.read_text())
    if not found:
        raise ValueError(f"{path} has no section {name!r} (<!-- BEGIN {name} --> ... END).")
    return found.group(0) if found.group(0).endswith("\n") else found.group(0) + "\n"


def write_section(name: str, title: str, body: str, *, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md.

    The section is stamped with the command, the machine and the date; other sections are kept.
    """
    replace_section(name, render_section(name, title, body), path=path)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
