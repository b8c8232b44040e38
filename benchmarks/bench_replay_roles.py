"""``sample()`` of the role-composed replay against the monolithic one it replaced, interleaved.

The old :class:`RiseReplayBuffer` is loaded from git at ``--base`` (the commit before the split
into roles) into a module of its own; both buffers are built with the same settings and seed, filled
with the same collector batches, and their ``sample()`` calls alternate call by call (so a
background load slows both alike). Every pair of batches is compared: the split must be bit-for-bit
the same buffer. Prints the medians (ms per call) and the ratio new / old.

    python benchmarks/bench_replay_roles.py                 # 2^15 records, Atari layout
    python benchmarks/bench_replay_roles.py --repeats 400 --reuse-output
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import add_int_options  # noqa: E402
from benchmarks.bench_replay import buffer_source, fill  # noqa: E402
from torchrl_rise.replay import RiseReplayBuffer  # noqa: E402


def old_buffer_class(base: str) -> type:
    """``RiseReplayBuffer`` as of commit ``base``, in a module of its own."""
    src = buffer_source(base)
    module = types.ModuleType("_base_replay_buffer")
    sys.modules[module.__name__] = module
    exec(compile(src, "base_replay_buffer.py", "exec"), module.__dict__)
    return module.RiseReplayBuffer


def same(a, b) -> bool:
    """Whether two batches hold the same keys and bit-identical values."""
    keys_a, keys_b = set(a.keys(True, True)), set(b.keys(True, True))
    return keys_a == keys_b and all(torch.equal(a[k], b[k]) for k in keys_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="208810e", help="commit of the monolithic buffer")
    add_int_options(parser, capacity=2**15, num_envs=64, context=80, batch=256, repeats=200)
    parser.add_argument("--reuse-output", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    old_cls = old_buffer_class(args.base)
    scratch = Path(tempfile.mkdtemp(prefix="bench_replay_roles_"))
    buffers = {}
    for name, cls in (("old", old_cls), ("new", RiseReplayBuffer)):
        buffers[name] = cls(
            args.capacity,
            args.num_envs,
            context_length=args.context,
            batch_size=args.batch,
            scratch_dir=scratch / name,
            seed=0,
            reuse_output=args.reuse_output,
        )
        fill(buffers[name], chunk=64, p_end=1e-2, seed=0)
    times = {name: [] for name in buffers}
    identical = True
    for i in range(args.repeats + 5):
        batches = {}
        for name, rb in buffers.items() if i % 2 else reversed(buffers.items()):
            t0 = time.perf_counter()
            batches[name] = rb.sample()
            if i >= 5:  # warm-up
                times[name].append(time.perf_counter() - t0)
        identical &= same(batches["old"], batches["new"])
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(
        f"sample(): old {med['old']:.2f} ms, new {med['new']:.2f} ms (median of {args.repeats}, "
        f"interleaved), new/old {med['new'] / med['old']:.3f}; batches identical: {identical}"
    )
    for rb in buffers.values():
        rb.close()


if __name__ == "__main__":
    main()
