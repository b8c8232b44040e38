"""PER draw and priority update: BTR's rules on TorchRL's C++ trees and on the pure-torch trees,
against TorchRL's own ``PrioritizedSampler``.

Times ``ReadinessSampler.sample`` (the index draw and importance weights only, no data gathered)
and ``update_priority`` on trees of 2^20 slots, 7 of 8 ready with random priorities, batch 256:
the default (BTR's code: stratified draws, ``(capacity * P) ** -alpha`` over the batch maximum) on
``tree="torchrl"`` and ``tree="torch"``, the ``torchrl`` options of the same class, and a TorchRL
``PrioritizedSampler`` holding the same priorities. The variants are interleaved call by call;
medians. Writes the "per" section of docs/benchmarks.md.

    python benchmarks/bench_per.py
    python benchmarks/bench_per.py --quick    # 2^15 slots
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torchrl.data import LazyTensorStorage, PrioritizedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import add_int_options, markdown_table, write_section
from torchrl_rise.replay import ReadinessSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2^15 slots, fewer repeats")
    add_int_options(parser, capacity=2**20, batch=256, repeats=300)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.capacity, args.repeats = 2**15, 50
    torch.set_num_threads(2)
    cap = args.capacity
    storage = LazyTensorStorage(cap)
    storage.set(torch.arange(cap), torch.zeros(cap, dtype=torch.uint8))
    g = torch.Generator().manual_seed(0)
    priority = torch.rand(cap, generator=g) * 10
    unready = torch.arange(0, cap, 8)
    ready = torch.tensor(sorted(set(range(cap)) - set(unready.tolist())))

    def sampler(**kwargs) -> ReadinessSampler:
        s = ReadinessSampler(cap, 0.2, 0.4, generator=torch.Generator().manual_seed(1), **kwargs)
        s.update_priority(torch.arange(cap), priority)
        s.mark_unready(unready)
        return s

    btr = sampler(tree="torchrl")
    btr_torch = sampler(tree="torch")
    torchrl_opts = sampler(tree="torchrl", importance_weights="torchrl", stratified=False)
    reference = PrioritizedSampler(cap, 0.2, 0.4, eps=1e-6)
    reference.update_priority(ready, priority[ready])
    upd_index = torch.randint(0, cap, (args.batch,), generator=g)
    upd_value = torch.rand(args.batch, generator=g)
    variants = {
        "draw: default (stratified, BTR's batch-max weights), TorchRL tree": lambda: btr.sample(
            storage, args.batch
        ),
        "draw: default, torch tree": lambda: btr_torch.sample(storage, args.batch),
        "draw: `importance_weights='torchrl', stratified=False`, TorchRL tree": (
            lambda: torchrl_opts.sample(storage, args.batch)
        ),
        "draw: TorchRL's `PrioritizedSampler.sample` (same priorities)": lambda: reference.sample(
            storage, args.batch
        ),
        "update_priority: TorchRL tree": lambda: btr.update_priority(upd_index, upd_value),
        "update_priority: torch tree": lambda: btr_torch.update_priority(upd_index, upd_value),
        "update_priority: TorchRL's `PrioritizedSampler`": lambda: reference.update_priority(
            upd_index, upd_value
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):
        for fn in variants.values():
            fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    ref = med["draw: TorchRL's `PrioritizedSampler.sample` (same priorities)"]
    ref_upd = med["update_priority: TorchRL's `PrioritizedSampler`"]
    rows = [
        [name, f"{m * 1e3:.3f}", f"{m / (ref if name.startswith('draw') else ref_upd):.2f}x"]
        for name, m in med.items()
    ]
    body = f"""
The PER draw alone (indices and importance weights, no data gathered) and a priority update of
{args.batch} slots, on trees of {cap} slots ({cap - len(unready)} ready), interleaved call by call,
median of {args.repeats}:

{markdown_table(["operation", "median (ms)", "vs TorchRL's sampler"], rows)}

The draw is one vectorised scan of the sum tree for the batch (the torch tree: one gather per tree
level, {cap.bit_length() - 1} levels); the stratified masses and the batch-max weights are a few
tensor operations on {args.batch} values. The torch tree's update recomputes the touched parents
level by level (one read of the children and one write per level). Both trees give the same indices for the same draws
(`tests/test_replay_sum_tree.py`). Against `RiseReplayBuffer.sample()` (the gather: the "replay"
section) the draw is small in every variant.
"""
    print(body)
    if not args.no_write:
        write_section("per", "PER draw: BTR's rules vs TorchRL's (`ReadinessSampler`)", body)


if __name__ == "__main__":
    main()
