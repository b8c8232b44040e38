"""Context-window replay: footprint per stored step, and sampling time of the old and new gather
paths, the device-resident storage and background prefetch, each beside a memcpy of the same bytes.

Phase 1 fills a memmap RiseReplayBuffer (Atari layout: 84x84 uint8 frames, stack 4, 512-d fp16
embeddings, 64 env lanes) to capacity and times, interleaved call by call on the same drawn slots:
the previous gather (two windows gathered separately into fresh tensors, loaded from git at the
commit before this change), the new one (``K + n`` rows and ``S + n`` frames once, both windows
views) with fresh and with reused output buffers, TorchRL's ``Sequence`` sample unit over the same
records, and memcpys of the bytes each path writes. Then the prefetch overlap: a loop of sample +
fake update with and without :class:`~torchrl_rise.replay.Prefetcher`. Phase 2 (after phase 1's
files are deleted) fills a buffer with ``storage_device="cpu"`` (embeddings in RAM tensors, the
device path without a GPU) and times it against a memcpy. Writes the "replay" section of
docs/benchmarks.md.

    python benchmarks/bench_replay.py            # 2^20 records (~8.5 GB of memmap under --scratch)
    python benchmarks/bench_replay.py --quick    # 2^15 records, seconds
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer, Sequence, TensorStorage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._data import collector_batch, stacks_and_embeddings  # noqa: E402
from benchmarks._report import add_int_options, markdown_table, parse_replay_args, write_section  # noqa: E402
from torchrl_rise.replay import Prefetcher, RiseReplayBuffer, _torchrl_adapter  # noqa: E402

# The commit whose gather is the "old path" (two separate window gathers, fresh output).
OLD_GATHER_COMMIT = "dae74f8"


def fill(rb: RiseReplayBuffer, *, chunk: int, p_end: float, seed: int = 0) -> float:
    """Write ``rb.capacity`` records in [num_envs, chunk] collector batches; returns seconds."""
    g = torch.Generator().manual_seed(seed)
    pixels, emb = stacks_and_embeddings(
        rb.num_envs, chunk, rb.frame_shape, rb.frame_stack, rb.embedding_dim, g
    )
    start = time.perf_counter()
    while int(rb._lane_next.min()) < rb.lane_capacity:
        rb.extend(collector_batch(pixels, emb, g, p_end=p_end))
    return time.perf_counter() - start


def buffer_source(commit: str) -> str:
    """The source of torchrl_rise/replay/buffer.py as of ``commit`` (``git show``)."""
    show = ["git", "show", f"{commit}:torchrl_rise/replay/buffer.py"]
    return subprocess.run(show, capture_output=True, text=True, check=True, cwd=ROOT).stdout


def old_gather() -> Callable | None:
    """``RiseReplayBuffer._gather`` as of OLD_GATHER_COMMIT (None where git cannot show it)."""
    try:
        src = buffer_source(OLD_GATHER_COMMIT)
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("_old_replay_buffer")
    exec(compile(src, "old_replay_buffer.py", "exec"), module.__dict__)
    return module.RiseReplayBuffer._gather


def nbytes(td: TensorDict) -> int:
    """Bytes a batch's tensors occupy (a storage shared by views counted once)."""
    seen = {}
    for v in td.values(True, True):
        seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    return sum(seen.values())


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3):
    """Seconds and minor page faults of each call of each fn, run in turn call by call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    faults = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return times, faults


def medians(values: dict[str, list[float]], keep: list[bool] | None = None) -> dict[str, float]:
    """Median of each list, over the calls where ``keep`` is true (all if ``None``)."""
    out = {}
    for k, v in values.items():
        chosen = [x for x, ok in zip(v, keep or [True] * len(v)) if ok]
        out[k] = statistics.median(chosen) if chosen else float("nan")
    return out


def make(args, capacity: int, scratch: Path, **kwargs) -> RiseReplayBuffer:
    return RiseReplayBuffer(
        capacity,
        args.num_envs,
        context_length=args.context,
        n_step=args.n_step,
        batch_size=args.batch,
        scratch_dir=scratch,
        seed=0,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2^15 records, a few repeats")
    add_int_options(
        parser, capacity=2**20, num_envs=64, context=80, n_step=3, batch=256, repeats=30
    )
    parser.add_argument("--update-ms", type=float, default=20.0, help="fake update's length")
    args = parse_replay_args(parser, Path("/tmp/rise_bench_replay"))

    footprint = {
        k: RiseReplayBuffer(
            2**20, 64, context_length=k, scratch_dir=args.scratch / "probe", check_disk=False
        ).nbytes_per_transition
        for k in (20, 80, 160)
    }
    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    per = footprint[80]
    free = shutil.disk_usage(args.scratch).free
    capacity = args.capacity
    while capacity * per * 1.1 > free:
        capacity //= 2
    bounded = "" if capacity == args.capacity else f" (disk-bound: {args.capacity} did not fit)"

    # ---------------------------------------------------------------- phase 1: memmap
    rb = make(args, capacity, args.scratch / "rise")
    fill_s = fill(rb, chunk=256, p_end=1e-3)
    print(f"filled {capacity} records in {fill_s:.1f} s ({len(rb)} sampleable)")
    old = old_gather()
    ring = rb.output_ring(2)
    state = {"mixed": []}

    def draw() -> None:
        state["index"], state["weight"] = rb._draw(args.batch)
        state["mixed"].append(bool(short(rb, state["index"]).any()))

    paths = {
        "draw": draw,
        "new": lambda: rb._gather(state["index"], state["weight"], None),
        "new_reused": lambda: rb._gather(state["index"], state["weight"], ring),
    }
    if old is not None:
        paths["old"] = lambda: old(rb, state["index"], state["weight"])
    # Batch sizes in bytes: a batch where no row's episode ends within n steps (both windows
    # views of the block) and one where some row's does (the next windows copied out).
    sizes = {}
    while len(sizes) < 2:
        draw()
        sizes.setdefault(state["mixed"][-1], nbytes(rb._gather(state["index"], state["weight"])))
    new_bytes, mixed_bytes = sizes[False], sizes[True]
    old_bytes = nbytes(old(rb, state["index"], state["weight"])) if old else 2 * new_bytes
    state["mixed"].clear()
    src_new, dst_new = (
        torch.empty(new_bytes, dtype=torch.uint8),
        torch.empty(new_bytes, dtype=torch.uint8),
    )
    src_mix, dst_mix = (
        torch.empty(mixed_bytes, dtype=torch.uint8),
        torch.empty(mixed_bytes, dtype=torch.uint8),
    )
    src_old, dst_old = (
        torch.empty(old_bytes, dtype=torch.uint8),
        torch.empty(old_bytes, dtype=torch.uint8),
    )
    paths["memcpy_new"] = lambda: dst_new.copy_(src_new)
    paths["memcpy_old"] = lambda: dst_old.copy_(src_old)
    paths["memcpy_mixed"] = lambda: dst_mix.copy_(src_mix)
    seq_rb = ReplayBuffer(
        storage=TensorStorage(_torchrl_adapter.storage_fields(rb.storage)),
        sample_unit=Sequence(
            length=1, burn_in=args.context - 1, bootstrap=args.n_step, done_key="terminated"
        ),
        batch_size=args.batch,
    )
    times, fault_lists = interleaved(paths, args.repeats)
    flags = state["mixed"][-args.repeats :]
    med, faults = medians(times), medians(fault_lists)
    med_pure = medians(times, [not x for x in flags])
    med_mixed = medians(times, flags)
    seq_rb.sample()  # warm-up
    t_seq = statistics.median(_timed(seq_rb.sample) for _ in range(max(3, args.repeats // 3)))
    # Share of batches with a row whose episode ends within n steps (its next window is copied).
    mixed = statistics.mean(float(short(rb, rb._draw(args.batch)[0]).any()) for _ in range(2000))

    # Prefetch overlap: sample + fake update, without and with the prefetcher, interleaved in
    # blocks. "GPU-like": the update holds no CPU (a sleep, as a host thread waiting on a GPU
    # step); "CPU": a matmul on torch's 2 threads, competing with the gather for the cores.
    a = torch.randn(384, 384)

    # A fixed amount of work (not a fixed time), sized to about --update-ms when run alone.
    one = min(
        statistics.median(_timed(lambda: [a @ a for _ in range(10)]) for _ in range(5)) / 10,
        1.0,
    )
    reps = max(1, round(args.update_ms / 1e3 / max(one, 1e-6)))

    def cpu_update() -> None:
        for _ in range(reps):
            a @ a

    def gpu_update() -> None:
        time.sleep(args.update_ms / 1e3)

    def loop(next_batch, update, steps=10):
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next_batch()
            update()
            batch["td_error"] = torch.rand(args.batch)
            rb.update_tensordict_priority(batch)
        return (time.perf_counter() - t0) / steps

    overlap = {}
    for label, update in (("GPU-like update (no CPU)", gpu_update), ("CPU update", cpu_update)):
        t_upd = statistics.median(_timed(update) for _ in range(5))
        plain, pre = [], []
        for _ in range(max(2, args.repeats // 6)):
            plain.append(loop(lambda: rb.sample(), update))
            with Prefetcher(rb) as batches:
                pre.append(loop(batches.next, update))
        overlap[label] = (t_upd, statistics.median(plain), statistics.median(pre))
    rb.close()
    shutil.rmtree(args.scratch / "rise", ignore_errors=True)

    # ---------------------------------------------------------------- phase 2: device path
    dev = make(args, capacity, args.scratch / "dev", storage_device="cpu", device_frames=False)
    fill(dev, chunk=256, p_end=1e-3)
    dev_ring = dev.output_ring(2)
    dstate = {}

    def ddraw() -> None:
        dstate["index"], dstate["weight"] = dev._draw(args.batch)

    ddraw()
    times_dev, faults_dev = interleaved(
        {
            "draw": ddraw,
            "dev": lambda: dev._gather(dstate["index"], dstate["weight"], dev_ring),
            "memcpy_new": lambda: dst_new.copy_(src_new),
        },
        args.repeats,
    )
    med_dev, faults_dev = medians(times_dev), medians(faults_dev)
    dev.close()

    ms = lambda t: f"{t * 1e3:.2f}"  # noqa: E731
    ref = med["new_reused"]

    def path_row(label: str, key: str, mbytes: str) -> list[str]:
        """A gather path's row: median, ratio to the reference, pure/mixed medians, faults."""
        ratio = f"{med[key] / ref:.2f}x"
        return [
            label,
            ms(med[key]),
            ratio,
            ms(med_pure[key]),
            ms(med_mixed[key]),
            f"{faults[key]:.0f}",
            mbytes,
        ]

    def copy_row(label: str, t: float, digits: int = 2) -> list[str]:
        """A row of one time and its ratio to the reference only."""
        return [label, ms(t), f"{t / ref:.{digits}f}x", "", "", "", ""]

    rows = []
    if old is not None:
        rows.append(
            path_row("old: two window gathers, fresh output", "old", f"{old_bytes / 1e6:.0f}")
        )
    both = f"{new_bytes / 1e6:.0f} / {mixed_bytes / 1e6:.0f}"
    rows += [
        path_row("new: one block gather, views, fresh output", "new", both),
        path_row("new: one block gather, views, reused buffers", "new_reused", both),
        ["  PER draw (TorchRL sum tree), added to each", ms(med["draw"]), "", "", "", "", ""],
        copy_row(
            f"memcpy of {new_bytes / 1e6:.0f} MB (new path, no row with m < n)", med["memcpy_new"]
        ),
        copy_row(
            f"memcpy of {mixed_bytes / 1e6:.0f} MB (new path, some row with m < n)",
            med["memcpy_mixed"],
        ),
        copy_row(f"memcpy of {old_bytes / 1e6:.0f} MB (old path)", med["memcpy_old"]),
        copy_row(
            "`torchrl.data.Sequence(length=1, burn_in=K-1, bootstrap=n)`, every key", t_seq, 1
        ),
    ]
    sample_new = med["new_reused"] + med["draw"]
    rows_dev = [
        [
            "`storage_device='cpu'` (embeddings in a RAM tensor, frames memmap), reused buffers",
            ms(med_dev["dev"]),
            f"{med_dev['dev'] / med_dev['memcpy_new']:.2f}x",
            f"{faults_dev['dev']:.0f}",
        ],
        [f"memcpy of {new_bytes / 1e6:.0f} MB (same run)", ms(med_dev["memcpy_new"]), "1.00x", ""],
    ]
    rows_pre = [
        [label, ms(t_upd), ms(plain), ms(pre), f"{plain / pre:.2f}x"]
        for label, (t_upd, plain, pre) in overlap.items()
    ]
    ram_per_slot = 2 * 2 * 4 + 1  # sum + min segment trees (fp32, 2x leaves) + readiness flag
    rows_fp = [
        [k, footprint[k], f"{footprint[k] / 1e3:.2f}", f"{footprint[k] * 2**20 / 1e9:.2f}"]
        for k in footprint
    ]
    per_record = [
        "frame 84x84 uint8: 7056",
        "embedding 512 x fp16: 1024",
        "action int64 + reward fp32 + 3 flags: 15",
        "episode id, lane step, episode step (int64): 24",
    ]
    met = "met" if sample_new <= 0.015 else "not met"
    body = f"""
Footprint per stored step (a record: newest frame, embedding, action, reward, flags, bookkeeping);
one extra record per episode holds its final observation. Frame stacks and context windows are
assembled at sample time, so the footprint does not depend on `K`:

{markdown_table(["K", "bytes per record", "KB", "GB for 2^20 records"], rows_fp)}

Breakdown: {"; ".join(per_record)}. In RAM, besides the page cache: {ram_per_slot} bytes per slot
for the priority trees and readiness ({ram_per_slot * 2**20 / 1e6:.0f} MB for 2^20). Target: at
most 9.5 KB per transition: met ({per} B).

Assembling a batch of {args.batch}, K={args.context}, n={args.n_step}, from a full buffer of
{capacity} records{bounded} ({args.num_envs} lanes, {capacity * per / 1e9:.2f} GB of memmap), the
same drawn slots for every path, interleaved call by call, median of {args.repeats} (minor page
faults per call from `getrusage`):

{markdown_table(["path", "median (ms)", "vs new, reused", "batches without m < n", "batches with m < n", "page faults", "MB written"], rows)}

`sample()` on the new path with reused buffers (`reuse_output=True`) is the gather plus the draw:
{ms(sample_new)} ms. Target: at most 15 ms median on the 2-core CPU: {met}. In this run a memcpy
moved {new_bytes / med["memcpy_new"] / 1e9:.1f} GB/s (load average {os.getloadavg()[0]:.1f} on
{os.cpu_count()} cores at the end: other jobs share the cores and the memory bus), so the floor for
the {new_bytes / 1e6:.0f} MB the new path writes was {ms(med["memcpy_new"])} ms. The old path is the
gather at commit {OLD_GATHER_COMMIT}: the windows at `t` and `t+m` gathered separately into
freshly allocated tensors ({old_bytes / 1e6:.0f} MB a batch, which glibc hands back to the OS and
faults in again: the page-fault column). The new one gathers each transition's `K + n` embedding
rows and `S + n` frames once, into reused buffers; both windows (and masks) are views of that block
when no row's episode ends within `n` steps. In {mixed * 100:.0f}% of batches here (episodes end
with probability 1e-3 a step) some row has `m < n`: the next windows are then copied out of the
block into their own tensor and those rows re-gathered (a sequential copy in RAM: the second
figure of "MB written"); the two middle columns split the medians by that. What bounds the rest: the memcpy rows, the same bytes copied once in RAM in the same
run, are the floor on this machine at this moment (other jobs share its memory bus); the gather
reads rows at random places of a {capacity * per / 1e9:.2f} GB mapping, so it pays TLB misses on
top. The figures assume the memmap is in the page cache (the buffer was just written and fits in
RAM); a buffer larger than RAM is bounded by the disk's random reads instead. `Sequence` gathers
all keys of all {args.batch * (args.context + args.n_step)} records and scans the done flags of the
whole storage; its windows are not the same windows (it does not know the lanes), so its ratio
compares the data movement, not outputs.

Device-resident storage, run on CPU tensors (`storage_device="cpu"`, `device_frames=False`: the
1 GB of embeddings in a RAM tensor, frames in the memmap; a second buffer of the same records,
filled after the first was deleted, so measured under the load of a later moment: compare it with
its own memcpy row), interleaved with a memcpy of the same bytes:

{markdown_table(["path", "median (ms)", "vs memcpy", "page faults"], rows_dev)}

On a GPU (`storage_device="cuda"`) the same code runs `index_select` in device memory; not
measured here (no GPU on this machine).

Prefetch: a loop of `next batch -> update -> update_priority`, per step, without and with
`Prefetcher` (the next batch gathered on a worker thread during the update; Ape-X-style: drawn
before the previous batch's priorities are written), median over blocks of 10 steps:

{markdown_table(["update", "update alone (ms)", "sample + update (ms)", "with prefetch (ms)", "speed-up"], rows_pre)}

The GPU-like row is the case prefetch is for: the update leaves the CPU free and the gather runs
beside it. A CPU update (a fixed number of matmuls on torch's 2 threads) shares the 2 cores with
the gather thread instead. Filling took {fill_s:.0f} s
({capacity / fill_s:.0f} records/s, memmap writes).
"""
    if not args.no_write:
        write_section("replay", "Context-window replay (`torchrl_rise.replay`)", body)
    shutil.rmtree(args.scratch, ignore_errors=True)
    print(body)


def short(rb: RiseReplayBuffer, index: torch.Tensor) -> torch.Tensor:
    """Which drawn slots' episodes end within n steps (m < n: their next window is copied)."""
    f, L, n = rb._fields, rb.lane_capacity, rb.n_step
    s = f["lane_step"][index]
    fut = (index - index % L)[:, None] + (s[:, None] + torch.arange(n - 1)) % L
    return (f["terminated"][fut] | f["truncated"][fut]).any(1)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
