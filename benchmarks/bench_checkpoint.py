"""Replay checkpoints: a full dump, an incremental dump after BTR's checkpoint interval, a load.

Fills a RiseReplayBuffer of Atari size (64 env lanes, 1x84x84 uint8 frames, 512-d fp16 embeddings,
K=80) with synthetic data, dumps it into a chunk store (the first dump into a store is full),
writes 250k more transitions (the env steps of 1M Atari frames at frame skip 4: BTR's checkpoint
interval), dumps again (only the chunks written since). Then the trainer's redundancy policy
(checkpoint.keep >= 2: consecutive checkpoints share no chunk file,
``dumps(share_with_previous=False)``) on the same buffer, into a second store: two full dumps with
the same writes between them, the same writes again, and the steady-state dump (it rewrites the
chunks changed over two intervals); the disk of each store holding its two newest dumps is
compared. Last, the second dump of the first store is loaded into a fresh buffer (every file size-
and CRC-checked). Writes the "checkpoint" section of docs/benchmarks.md. Each figure is one run (a
dump of 8.5 GB takes tens of seconds).

    python benchmarks/bench_checkpoint.py                       # 2^20 records: ~45 GB of disk
    python benchmarks/bench_checkpoint.py --quick --no-write   # 2^16 records: seconds
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import collector_batch, stacks_and_embeddings
from benchmarks._report import markdown_table, write_section
from torchrl_rise.replay import RiseReplayBuffer, prune_chunk_store


def write_steps(rb: RiseReplayBuffer, steps: int, *, chunk: int, p_end: float, seed: int) -> float:
    """Write ``steps`` env steps in total as [num_envs, chunk] collector batches; returns seconds."""
    g = torch.Generator().manual_seed(seed)
    pixels, emb = stacks_and_embeddings(
        rb.num_envs, chunk, rb.frame_shape, rb.frame_stack, rb.embedding_dim, g
    )
    start = time.perf_counter()
    for _ in range(max(1, steps // (rb.num_envs * chunk))):
        rb.extend(collector_batch(pixels, emb, g, p_end=p_end))
    return time.perf_counter() - start


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def redundant_phase(rb: RiseReplayBuffer, args: argparse.Namespace) -> dict[str, float]:
    """Dumps with ``share_with_previous=False`` (the trainer's policy for keep >= 2)."""
    store = args.dir / "redundant_store"
    out: dict[str, float] = {}
    for k in (1, 2, 3):
        if k > 1:
            write_steps(rb, args.steps, chunk=64, p_end=1e-3, seed=10 + k)
        t = time.perf_counter()
        stats = rb.dumps(args.dir / f"red_{k}", chunk_store=store, share_with_previous=False)
        out[f"s{k}"] = time.perf_counter() - t
        out[f"w{k}"] = stats["bytes_written"]
        out[f"r{k}"] = stats["bytes_reused"]
        print(
            f"redundant dump {k}: {out[f's{k}']:.1f} s, {stats['bytes_written'] / 1e9:.2f} GB "
            f"written, {stats['bytes_reused'] / 1e9:.2f} GB reused",
            flush=True,
        )
    # keep=2: red_1 goes, red_2 and red_3 stay
    shutil.rmtree(args.dir / "red_1")
    prune_chunk_store(store, keep=[args.dir / "red_2", args.dir / "red_3"])
    out["store_keep2"] = dir_bytes(store)
    shutil.rmtree(store)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capacity", type=int, default=2**20, help="records in the buffer")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=250_000, help="transitions between the two dumps"
    )
    parser.add_argument("--chunk-records", type=int, default=None, help="default: the buffer's")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rise_bench_checkpoint"))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--quick", action="store_true", help="2^16 records, 16384 steps, chunks of 256: seconds"
    )
    args = parser.parse_args()
    if args.quick:
        args.capacity, args.steps, args.chunk_records = 2**16, 2**14, 256
    torch.set_num_threads(2)

    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    opts = dict(
        frame_shape=(1, 84, 84),
        frame_stack=4,
        embedding_dim=512,
        context_length=80,
        n_step=3,
        seed=0,
    )
    if args.chunk_records:
        opts["chunk_records"] = args.chunk_records
    store = args.dir / "chunk_store"
    try:
        rb = RiseReplayBuffer(
            args.capacity, args.num_envs, scratch_dir=args.dir / "scratch", **opts
        )
        nbytes = rb.nbytes
        frac = min(1.0, args.steps / rb.capacity)
        # Per lane, the steps written between dumps dirty their chunks plus about one partial
        # chunk at each end.
        incr = min(nbytes, int(frac * nbytes) + 2 * rb.num_envs * rb.chunk_nbytes)
        # scratch + the shared store (full + increment) + the redundant store (2 full + 2
        # increments) + the second scratch of the load
        need = 5 * nbytes + incr + 2 * min(nbytes, 2 * incr) + 6 * rb.state_nbytes
        free = shutil.disk_usage(args.dir).free
        print(
            f"disk needed: {need / 1e9:.1f} GB (scratch {nbytes / 1e9:.2f} GB + full dump "
            f"{nbytes / 1e9:.2f} GB + incremental dump <= {incr / 1e9:.2f} GB); "
            f"free: {free / 1e9:.1f} GB",
            flush=True,
        )
        if need > free:
            raise SystemExit(
                f"Not enough disk under {args.dir}: lower --capacity or point --dir elsewhere."
            )
        fill_s = write_steps(rb, rb.capacity, chunk=64, p_end=1e-3, seed=0)
        print(f"filled {rb.capacity} records in {fill_s:.0f} s ({len(rb)} sampleable)", flush=True)

        t = time.perf_counter()
        full = rb.dumps(args.dir / "ckpt_1", chunk_store=store)
        full_s = time.perf_counter() - t
        print(f"full dump: {full_s:.1f} s, {full['bytes_written'] / 1e9:.2f} GB", flush=True)

        more_s = write_steps(rb, args.steps, chunk=64, p_end=1e-3, seed=1)
        t = time.perf_counter()
        inc = rb.dumps(args.dir / "ckpt_2", chunk_store=store)
        inc_s = time.perf_counter() - t
        print(
            f"incremental dump after {args.steps} transitions: {inc_s:.1f} s, "
            f"{inc['bytes_written'] / 1e9:.2f} GB written, {inc['bytes_reused'] / 1e9:.2f} GB "
            "reused",
            flush=True,
        )
        expected_sample = rb.sample()["index"]
        shared_keep2 = dir_bytes(store)  # ckpt_1's files + ckpt_2's new ones
        shutil.rmtree(args.dir / "ckpt_1")
        freed = prune_chunk_store(store, keep=[args.dir / "ckpt_2"])
        store_after = dir_bytes(store)
        redundant = redundant_phase(rb, args)
        rb.close()

        resumed = RiseReplayBuffer(
            args.capacity, args.num_envs, scratch_dir=args.dir / "scratch2", **opts
        )
        t = time.perf_counter()
        resumed.loads(args.dir / "ckpt_2")
        load_s = time.perf_counter() - t
        print(f"load: {load_s:.1f} s", flush=True)
        # The dump was taken before the sample above: the resumed buffer draws it again.
        assert torch.equal(resumed.sample()["index"], expected_sample)
        resumed.close()
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)

    gb = 1e9
    rows = [
        [
            "full dump (first into the chunk store)",
            f"{full_s:.1f}",
            f"{full['bytes_written'] / gb:.2f}",
            f"{full['files_written']}",
            f"{full['bytes_written'] / gb / full_s:.2f} GB/s",
        ],
        [
            f"incremental dump after {args.steps} more transitions",
            f"{inc_s:.1f}",
            f"{inc['bytes_written'] / gb:.2f} (+ {inc['bytes_reused'] / gb:.2f} reused)",
            f"{inc['files_written']} (+ {inc['files_reused']} reused)",
            f"{inc['bytes_written'] / gb / inc_s:.2f} GB/s",
        ],
        [
            "load of the incremental dump (verify + copy into scratch)",
            f"{load_s:.1f}",
            f"{(inc['bytes_written'] + inc['bytes_reused']) / gb:.2f} read",
            f"{inc['files_written'] + inc['files_reused']}",
            f"{(inc['bytes_written'] + inc['bytes_reused']) / gb / load_s:.2f} GB/s",
        ],
    ]
    red = redundant
    red_rows = [
        [
            "first dump (full)",
            f"{red['s1']:.1f}",
            f"{red['w1'] / gb:.2f}",
            f"{red['w1'] / gb / red['s1']:.2f} GB/s",
        ],
        [
            f"second dump after {args.steps} transitions (shares nothing: full)",
            f"{red['s2']:.1f}",
            f"{red['w2'] / gb:.2f} (+ {red['r2'] / gb:.2f} reused)",
            f"{red['w2'] / gb / red['s2']:.2f} GB/s",
        ],
        [
            f"steady state: third dump after {args.steps} more",
            f"{red['s3']:.1f}",
            f"{red['w3'] / gb:.2f} (+ {red['r3'] / gb:.2f} reused)",
            f"{red['w3'] / gb / red['s3']:.2f} GB/s",
        ],
    ]
    body = f"""
A {rb.capacity}-record buffer ({args.num_envs} env lanes, 1x84x84 uint8 frames, 512-d fp16
embeddings, K=80; {nbytes / gb:.2f} GB of memmap, chunks of {rb.chunk_records} records =
{rb.chunk_nbytes / 1e6:.1f} MB), filled with synthetic data, dumped into a chunk store; then
{args.steps} more transitions (the env steps of 1M Atari frames at frame skip 4, BTR's checkpoint
interval; {frac:.1%} of the capacity) and a second dump; then a load of the second dump into a fresh
buffer. One run each:

{markdown_table(["step", "seconds", "GB written", "files", "rate"], rows)}

The incremental dump wrote {inc["bytes_written"] / full["bytes_written"]:.1%} of the full dump's
bytes, for {frac:.1%} of the records changed: each of the {args.num_envs} lanes also rewrites the
partly written chunk at each end of what it wrote. Deleting the first checkpoint and pruning the
store freed {freed / gb:.2f} GB, leaving {store_after / gb:.2f} GB (the second dump's chunks).
Disk to budget: scratch ({nbytes / gb:.2f} GB) + the first dump ({nbytes / gb:.2f} GB) + each
later checkpoint's increment. The dump reads the memmap through the page cache and every file is
fsynced; the load may have read some of the just-written chunk files from the page cache (not
dropped before it), so a cold load can be slower, bounded by the disk's read rate. Filling took
{fill_s:.0f} s, the {args.steps} transitions {more_s:.0f} s.

**Redundancy (the trainer's policy with `checkpoint.keep >= 2`).** Consecutive checkpoints share no
chunk file (`dumps(share_with_previous=False)`): a dump refers only to files of the dump before
the previous one, so one damaged chunk file costs at most one of two consecutive checkpoints
(docs/training.md). The same buffer, dumped that way into a fresh store, with {args.steps}
transitions written before the second and the third dump:

{markdown_table(["dump", "seconds", "GB written", "rate"], red_rows)}

Steady state per checkpoint: {red["w3"] / gb:.2f} GB written in {red["s3"]:.1f} s, against
{inc["bytes_written"] / gb:.2f} GB in {inc_s:.1f} s when consecutive checkpoints share chunks (the
chunks changed over two intervals instead of one, plus the partly written chunk at each end of each
lane's writes: {2 * rb.num_envs * rb.chunk_nbytes / gb:.2f} GB here, a larger share of a smaller
buffer). Disk of the store with two checkpoints kept:
{red["store_keep2"] / gb:.2f} GB (two disjoint full copies), against {shared_keep2 / gb:.2f} GB
(one full copy + one increment); during a save add one steady-state increment. The first
checkpoint after a resume is full again (the buffer knows only the files of the checkpoint it
loaded, and must not reuse them).
"""
    if not args.no_write:
        write_section("checkpoint", "Replay checkpoints (`RiseReplayBuffer.dumps`)", body)
    print(body)


if __name__ == "__main__":
    main()
