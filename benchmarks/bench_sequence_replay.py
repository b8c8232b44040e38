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

from benchmarks._report import markdown_table, write_section
from torchrl_rise.replay import RiseReplayBuffer, SequenceReplayBuffer

HIDDEN = 512


def fill(buffers, *, num_envs: int, lane: int, chunk: int, p_end: float, seed: int = 0) -> None:
    """Write the same [num_envs, chunk] collector batches into every buffer until full."""
    g = torch.Generator().manual_seed(seed)
    E, S = num_envs, 4
    frames = torch.randint(0, 256, (E, chunk, 1, 84, 84), dtype=torch.uint8, generator=g)
    pixels = frames.unsqueeze(2).expand(E, chunk, S, 1, 84, 84).reshape(E, chunk, S, 84, 84)
    emb = torch.randn(E, chunk, 512, generator=g).half()
    state = torch.randn(E, chunk, HIDDEN, generator=g)
    written = 0
    while written < lane:
        end = torch.rand(E, chunk, 1, generator=g) < p_end
        td = TensorDict(
            {
                "pixels": pixels,
                "rise_embedding": emb,
                "recurrent_state_h": state,
                "recurrent_state_c": state,
                "action": torch.randint(0, 18, (E, chunk), generator=g),
                ("next", "reward"): torch.randn(E, chunk, 1, generator=g),
                ("next", "terminated"): end,
                ("next", "truncated"): torch.zeros_like(end),
                ("next", "pixels"): pixels,
                ("next", "rise_embedding"): emb,
            },
            batch_size=[E, chunk],
        )
        for rb in buffers:
            rb.extend(td)
        written += chunk


def nbytes(td: TensorDict) -> int:
    return sum(v.numel() * v.element_size() for v in td.values(True, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2^15 records, a few repeats")
    parser.add_argument("--capacity", type=int, default=2**18)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/rise_bench_sequence_replay"))
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.capacity, args.repeats = 2**15, 5
    torch.set_num_threads(2)
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
