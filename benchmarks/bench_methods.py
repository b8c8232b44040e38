"""The three methods' learner walltime on Atari shapes: seconds per update and hours of updates per
1M frames of training for ``btr``, ``rise`` (K=80) and ``recurrent``, built by the recipes'
builders (so ``recurrent`` is ``SequenceReplayBuffer`` + ``SequenceIQNLoss`` + the
``recurrent_baseline`` network, R2D2's 64 sequences of 40 burn-in + 80 trained + 3 bootstrap
positions) and timed round-robin in one process (btr, rise, recurrent, btr, ...), medians.

One update is what the trainer does per update: ``replay.sample()``, the loss, backward, grad-norm
clip, Adam, priority write-back, target-counter step. The replays are filled with synthetic Atari
data (uint8 84x84 frames, episodes of ~500 steps) through ``extend``, as the collector's batches
would be. BTR's replay ratio (one update per vector step of 64 envs x frame skip 4) makes 1M frames
``1e6 / 256 = 3,906`` updates for every method; collection is not included.

    python benchmarks/bench_methods.py              # Atari shapes; minutes per round on 2 cores
    python benchmarks/bench_methods.py --quick      # small shapes, seconds (a smoke check)

``--chunks`` splits the recurrent batch into gradient-accumulation chunks (the same gradient,
less activation memory: one 64-sequence pass needs ~12 GB on the CPU). Writes the "methods"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tensordict import TensorDict

from benchmarks._report import markdown_table, write_section

PAPER_SAVING = 0.84  # RISE: "84% less walltime" than the recurrent model (paper)


def make_cfg(method: str, *, quick: bool, root: str):
    from torchrl_rise.training import load_config

    over = {
        "method": method,
        "encoder": {"weights": "random", "context_length": 8 if quick else 80},
        "replay": {
            "capacity": 2**13 if quick else 2**15,
            "learning_starts": 512 if quick else 8192,
        },
        "logging": {"root": root},
    }
    if quick:
        over["env"] = {"num_envs": 4, "frame_size": 42}
        over["replay"]["batch_size"] = 16
        over["recurrent"] = {"burn_in": 4, "learning_length": 8, "period": 4, "batch_size": 4}
        over["network"] = {"kwargs": {"width_scale": 0.25, "mlp_hidden": 64, "lstm_hidden": 32}}
    return load_config(over)


class MethodLearner:
    """The pieces of one method and its filled replay; :meth:`update` is one trainer update."""

    def __init__(self, method: str, *, quick: bool, chunks: int, scratch: Path) -> None:
        from torchrl_rise.training.builders import (
            build_loss,
            build_network,
            build_optimizer,
            build_replay,
            make_env_factory,
            probe_env,
        )

        self.method = method
        cfg = make_cfg(method, quick=quick, root=str(scratch))
        self.cfg = cfg
        env_info, _ = probe_env(make_env_factory(cfg))
        self.env_info = env_info
        dim = 512 if method == "rise" else None
        self.net = build_network(cfg, env_info=env_info, embedding_dim=dim)
        self.loss, self.target = build_loss(cfg, self.net)
        self.opt = build_optimizer(cfg, self.loss)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.replay = build_replay(
            cfg, env_info=env_info, embedding_dim=dim, scratch_dir=scratch / method
        )
        self.chunks = chunks if method == "recurrent" else 1
        self.batch = cfg.recurrent.batch_size if method == "recurrent" else cfg.replay.batch_size
        self._fill(dim)

    def _fill(self, dim: int | None, chunk: int = 64) -> None:
        rb, info, cfg = self.replay, self.env_info, self.cfg
        E = cfg.env.num_envs
        S, C, (H, W) = info.frame_stack, info.frame_channels, info.frame_size
        g = torch.Generator().manual_seed(0)
        hidden = int(getattr(self.net, "lstm_hidden", 0))
        while int(rb._lane_next.min()) < rb.lane_capacity - chunk:
            frames = torch.randint(0, 256, (E, chunk, C, H, W), dtype=torch.uint8, generator=g)
            pixels = frames.repeat(1, 1, S, 1, 1)
            end = torch.rand(E, chunk, 1, generator=g) < 0.002
            td = {
                "pixels": pixels,
                "action": torch.randint(0, info.num_actions, (E, chunk), generator=g),
                ("next", "reward"): torch.randn(E, chunk, 1, generator=g),
                ("next", "terminated"): end,
                ("next", "truncated"): torch.zeros_like(end),
                ("next", "pixels"): pixels,
            }
            if dim:
                emb = torch.randn(E, chunk, dim, generator=g).half()
                td["rise_embedding"] = emb
                td[("next", "rise_embedding")] = emb
            if hidden:
                td["recurrent_state_h"] = torch.randn(E, chunk, hidden, generator=g)
                td["recurrent_state_c"] = torch.randn(E, chunk, hidden, generator=g)
            rb.extend(TensorDict(td, batch_size=[E, chunk]))

    def update(self) -> float:
        start = time.perf_counter()
        batch = self.replay.sample()
        self.opt.zero_grad(set_to_none=True)
        parts = batch.chunk(self.chunks, 0) if self.chunks > 1 else (batch,)
        for part in parts:
            (self.loss(part)["loss"] / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.opt.step()
        if len(parts) > 1:
            batch.set("td_error", torch.cat([p.get("td_error") for p in parts]))
        self.replay.update_tensordict_priority(batch)
        self.target.step()
        return time.perf_counter() - start

    def close(self) -> None:
        self.replay.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds")
    parser.add_argument("--chunks", type=int, default=4, help="recurrent accumulation chunks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--recurrent-warmup", type=int, default=1, help="0: no warm-up update for recurrent"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    methods = ("btr", "rise", "recurrent")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_methods_") as tmp:
        learners = {m: MethodLearner(m, quick=args.quick, chunks=args.chunks, scratch=Path(tmp))
                    for m in methods}  # fmt: skip
        try:
            for m in methods:  # warm-up: first allocation, first sample
                if m != "recurrent" or args.recurrent_warmup:
                    print(f"[warm-up] {m}: {learners[m].update():.2f} s", flush=True)
            times: dict[str, list[float]] = {m: [] for m in methods}
            for r in range(args.rounds):
                for m in methods:
                    times[m].append(learners[m].update())
                    print(f"[round {r}] {m}: {times[m][-1]:.2f} s", flush=True)
                # a report after every round: a long run stopped early keeps what it measured
                report(args, learners, times, time.perf_counter() - started)
        finally:
            for learner in learners.values():
                learner.close()


def report(args, learners, times, elapsed: float) -> None:
    methods = tuple(times)
    info = {m: (learners[m].batch, learners[m].cfg) for m in learners}
    cfg = info["btr"][1]
    updates_per_m = 1e6 / (cfg.env.num_envs * 4) * cfg.optim.updates_per_vector_step
    med = {m: statistics.median(times[m]) for m in methods}
    rc = info["recurrent"][1].recurrent
    positions = {
        "btr": f"{info['btr'][0]} transitions",
        "rise": f"{info['rise'][0]} transitions, K={info['rise'][1].encoder.context_length}",
        "recurrent": (
            f"{rc.batch_size} sequences x ({rc.burn_in} burn-in + {rc.learning_length} trained + "
            f"{cfg.loss.n_step}), {args.chunks} chunks"
        ),
    }
    rows = [
        [
            m,
            positions[m],
            f"{med[m]:.2f}",
            f"{min(times[m]):.2f}-{max(times[m]):.2f}",
            f"{med[m] / med['btr']:.2f}",
            f"{med[m] * updates_per_m / 3600:.1f}",
        ]
        for m in methods
    ]
    saving = 1 - med["rise"] / med["recurrent"]
    body = f"""
{"Quick mode (small shapes): not Atari's. " if args.quick else ""}Seconds per update (sample +
loss + backward + clip + Adam + priority write-back) of the three methods as the recipes build
them ({
        "Atari shapes: 4 x 84 x 84 uint8, 18 actions; rise: 512-d fp16 embeddings"
        if not args.quick
        else "42 x 42 frames, small networks"
    }), {args.threads} torch threads, medians of {len(times["btr"])}
round-robin rounds (btr, rise, recurrent, btr, ...) after one warm-up update each{
        "" if args.recurrent_warmup else " (recurrent: none, its update is minutes long)"
    }, in one process
on the shared 2-core CPU machine. Hours per 1M frames: {updates_per_m:,.0f} updates (BTR's one
update per vector step of {cfg.env.num_envs} envs x frame skip 4, kept for every method), learner
only (collection excluded). Whole run: {elapsed / 60:.1f} min.

{
        markdown_table(
            [
                "method",
                "batch",
                "s / update (median)",
                "range",
                "/ btr",
                "h of updates / 1M frames",
            ],
            rows,
        )
    }

RISE's learner walltime is **{100 * saving:.0f}% less** than the recurrent baseline's here
(recurrent / rise = {med["recurrent"] / med["rise"]:.1f}x); the paper reports about
{100 * PAPER_SAVING:.0f}% less walltime for RISE than for its recurrent model (whole runs on GPUs,
collection included, so only the direction and rough size compare). The recurrent update encodes
{rc.batch_size * (rc.burn_in + rc.learning_length + cfg.loss.n_step)} frame stacks with the
learnable CNN (online and target unrolls) against btr's and rise's {info["btr"][0]} (rise adds the
LSTM over K stored embeddings, no CNN work). Few rounds: the recurrent update is slow on this CPU,
so the medians carry the shared machine's spread (see the range column).
"""
    print(body)
    if not args.no_write:
        write_section("methods", "The three methods: learner walltime on Atari shapes", body)


if __name__ == "__main__":
    main()
