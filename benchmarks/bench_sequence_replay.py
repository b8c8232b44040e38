"""Sequence replay (the recurrent baseline) against context-window replay (RISE): footprint per
stored step, bytes per batch and sampling time, measured in the same run.

Fills a SequenceReplayBuffer (Atari layout: 84x84 uint8 frames, stack 4, a stored 512-d fp16 LSTM
state, 64 env lanes) and a RiseReplayBuffer (same frames, 512-d fp16 embeddings) with the same
episodes, then times ``sample()`` of each, interleaved call by call: 64 sequences of 40 burn-in +
80 trained + 3 bootstrap positions (R2D2's batch) against 256 transitions with K=80 windows (BTR's
and RISE's batch). Writes the "sequence_replay" section of docs/benchmarks.md.

    python benchmarks/bench_sequence_replay.py            # 2^18 records per buffer
    python benchmarks/bench_sequence_replay.py --quick    # 2^15 records, seconds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._data import collector_batch, stacks_and_embeddings
from benchmarks._report import add_int_options, markdown_table, parse_replay_args, write_section
from torchrl_rise.replay import RiseReplayBuffer, SequenceReplayBuffer

HIDDEN = 512


def fill(buffers, *, num_envs: int, lane: int, chunk: int, p_end: float, seed: int = 0) -> None:
    """Write the same [num_envs, chunk] collector batches into every buffer until full."""
    g = torch.Generator().manual_seed(seed)
    pixels, emb = stacks_and_embeddings(num_envs, chunk, (1, 84, 84), 4, 512, g)
    state = torch.randn(num_envs, chunk, HIDDEN, generator=g)
    written = 0
    while written < lane:
        td = collector_batch(
            pixels, emb, g, p_end=p_end, recurrent_state_h=state, recurrent_state_c=state
        )
        for rb in buffers:
            rb.extend(td)
        written += chunk


def nbytes(td: TensorDict) -> int:
    return sum(v.numel() * v.element_size() for v in td.values(True, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2^15 records, a few repeats")
    add_int_options(parser, capacity=2**18, num_envs=64, repeats=15)
    args = parse_replay_args(parser, Path("/tmp/rise_bench_sequence_replay"))
    shutil.rmtree(args.scratch, ignore_errors=True)
    E = args.num_envs
    seq = SequenceReplayBuffer(
        args.capacity, E, state_dim=HIDDEN, batch_size=64, scratch_dir=args.scratch / "seq",
        seed=0,
    )  # fmt: skip
    rise = RiseReplayBuffer(
        args.capacity, E, context_length=80, batch_size=256, scratch_dir=args.scratch / "rise",
        seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    fill([seq, rise], num_envs=E, lane=args.capacity // E, chunk=128, p_end=2e-3)
    print(f"filled 2 x {args.capacity} records in {time.perf_counter() - start:.1f} s")
    print(f"sampleable: {len(seq)} sequences, {len(rise)} transitions")

    times = {"seq": [], "rise": []}
    for _ in range(2):  # warm-up
        seq.sample(), rise.sample()
    for _ in range(args.repeats):  # interleaved
        for name, rb in (("seq", seq), ("rise", rise)):
            t = time.perf_counter()
            rb.sample()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    seq_bytes, rise_bytes = nbytes(seq.sample()), nbytes(rise.sample())
    steps_seq = 64 * seq.learning_length
    rows = [
        [
            "`SequenceReplayBuffer.sample()`: 64 x (40 + 80 + 3), stack 4, stored state",
            seq.nbytes_per_transition,
            f"{seq_bytes / 1e6:.0f}",
            f"{med['seq'] * 1e3:.0f}",
            f"{med['seq'] / steps_seq * 1e6:.1f}",
        ],
        [
            "`RiseReplayBuffer.sample()`: 256 transitions, K = 80 windows at t and t + n",
            rise.nbytes_per_transition,
            f"{rise_bytes / 1e6:.0f}",
            f"{med['rise'] * 1e3:.0f}",
            f"{med['rise'] / 256 * 1e6:.1f}",
        ],
    ]
    table = markdown_table(
        ["batch", "bytes / stored step", "MB / batch", "ms / batch", "us / trained step"], rows
    )
    body = f"""\
{args.capacity} records per buffer, {E} lanes, Atari layout (84x84 uint8 frames, stack 4), the
same episodes in both (episode end probability {2e-3} per step). The recurrent baseline's batch is
R2D2's: 64 sequences of 40 burn-in + 80 trained + 3 bootstrap positions, each position a frame
stack, with the stored 512-d fp16 `(h, c)` at each sequence start; RISE's and BTR's is 256
transitions. Medians of {args.repeats} interleaved calls.

{table}

The sequence batch trains {steps_seq} steps against 256, and moves {seq_bytes / rise_bytes:.1f}x
the bytes: mostly the frame stacks of all 123 positions (the stacks of consecutive positions share
3 of their 4 frames; building them in the network from `T + 3` frames would move 4x fewer).
Sampling per batch: sequences / transitions = **{med["seq"] / med["rise"]:.2f}**."""
    print(table)
    if not args.no_write:
        write_section("sequence_replay", "Sequence replay (`SequenceReplayBuffer`)", body)
    seq.close()
    rise.close()
    shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
