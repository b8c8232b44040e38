"""Learner walltime: time per gradient update of btr, rise (K = 20, 80, 160) and the recurrent
baseline, first on synthetic batches (sampling excluded), then sampling from replay (included).

One update = `torchrl_rise.training.learner.Learner.update(1)`: IQNLoss forward (online pass, target
pass(es), Munchausen targets) + backward + grad-norm clip 10 + Adam step + priorities + target
update, at batch 256 (BTR's), 4 x 84x84 frame stacks, 18 actions, 512-d fp16 embeddings. The
recurrent baseline updates on 64 sequences of 40 burn-in + 80 steps (R2D2), as 4 updates of 16
sequences each (the same CNN work as one 64-sequence update; the whole batch's CNN activations
would not fit in this machine's memory). A first part tries the CPU speed-ups (bf16 autocast +
channels-last, one batched target pass, BTR's online log-policy, `Learner(compile=True)`: speed,
and the compiled loss against eager on the same weights and noise) on btr and rise K=80; the main
table uses the setting chosen there. Writes the "learner" section of docs/benchmarks.md.

    python benchmarks/bench_learner.py            # batch 256, a few minutes per config on 2 cores
    python benchmarks/bench_learner.py --quick    # batch 16, tiny sequences, seconds
    python benchmarks/bench_learner.py --no-compile --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, SliceSampler, TensorDictReplayBuffer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import markdown_table, median_time, native_bf16, write_section
from torchrl_rise.modules import make_q_network
from torchrl_rise.objectives import IQNLoss

ACTIONS, STACK, D = 18, 4, 512


def synthetic_batch(b: int, k: int | None, *, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict:
        out = {"pixels": torch.randint(0, 256, (b, STACK, 84, 84), dtype=torch.uint8, generator=g)}
        if k:
            mask = torch.ones(b, k, dtype=torch.bool)
            mask[: b // 4, : k // 2] = False  # some windows start mid-episode
            out["rise_context"] = (torch.randn(b, k, D, generator=g) * mask.unsqueeze(-1)).half()
            out["rise_context_mask"] = mask
        return out

    return TensorDict(
        {
            **obs(),
            "action": torch.randint(0, ACTIONS, (b,), generator=g),
            "_weight": torch.rand(b, generator=g),
            "next": {
                **obs(),
                "reward": torch.randn(b, 1, generator=g),
                "discount": torch.full((b, 1), 0.997**3),
            },
        },
        [b],
    )


def sequence_batch(b: int, t: int, *, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "pixels": torch.randint(0, 256, (b, t, STACK, 84, 84), dtype=torch.uint8, generator=g),
            "action": torch.randint(0, ACTIONS, (b, t), generator=g),
            "steps_to_next_obs": torch.full((b, t, 1), 5),
            "_weight": torch.rand(b, generator=g),
            "next": {
                "reward": torch.randn(b, t, 1, generator=g),
                "discount": torch.full((b, t, 1), 0.99),
            },
        },
        [b],
    )


class FixedReplay:
    """A replay that hands out the same batch (sampling excluded from the timing)."""

    def __init__(self, batch: TensorDict) -> None:
        self.batch = batch

    def sample(self) -> TensorDict:
        return self.batch

    def update_tensordict_priority(self, td: TensorDict) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BenchLearner:
    """The library's :class:`~torchrl_rise.training.learner.Learner` (BTR's lr, eps, clip 10).

    ``update(batch)`` runs one update of ``batch`` (a fixed replay) and waits for the device;
    ``replay=`` times sampling too. The recurrent baseline's ``chunks`` splits the batch: one
    update per chunk (the same CNN work as one accumulated update, plus ``chunks - 1`` extra Adam
    steps, negligible next to it).
    """

    def __init__(
        self,
        kind: str,
        *,
        k: int | None = None,
        burn_in: int = 40,
        chunks: int = 1,
        device: str = "cpu",
        compile: bool = False,
        bf16: bool | None = None,
        net_kwargs: dict | None = None,
        **loss_kwargs,
    ):
        from torchrl_rise.objectives import HardTargetUpdate
        from torchrl_rise.training.learner import Learner, build_learner_optimizer

        net_kwargs = dict(net_kwargs or {})
        if "channels_last" in loss_kwargs:
            net_kwargs["channels_last"] = loss_kwargs.pop("channels_last")
        self.device = torch.device(device)
        self.net = make_q_network(
            kind,
            num_actions=ACTIONS,
            in_channels=STACK,
            burn_in=burn_in,
            context_length=k,
            **net_kwargs,  # none given: the library's defaults
        ).to(self.device)
        self.loss = IQNLoss(self.net, **loss_kwargs)
        self.opt = build_learner_optimizer(self.loss, lr=1e-4, eps=1.95e-5, device=self.device)
        self.replay = FixedReplay(TensorDict())
        self.learner = Learner(
            self.loss,
            self.opt,
            self.replay,
            HardTargetUpdate(self.loss, interval=500),
            device=self.device,
            grad_clip=10.0,
            bf16=bf16,
            compile=compile,
        )
        self.chunks = chunks

    def update(self, batch: TensorDict) -> None:
        for part in batch.chunk(self.chunks, 0) if self.chunks > 1 else (batch,):
            self.replay.batch = part
            self.learner.update(1)
        sync(self.device)

    def update_from(self, replay) -> None:
        """One update sampling from ``replay`` (priorities written back)."""
        self.learner.replay = replay
        try:
            self.learner.update(1)
        finally:
            self.learner.replay = self.replay
        sync(self.device)


def compiled_loss_gap(kind: str, k: int | None, batch: TensorDict) -> float:
    """|loss(compiled) - loss(eager)| / |loss(eager)| on one batch, same weights and noise.

    Inductor draws its own random numbers (taus, noise) unless ``fallback_random`` is set: set
    here, so that both draw the same and only the arithmetic differs.
    """
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    torch.manual_seed(0)
    eager = BenchLearner(kind, k=k)
    torch.manual_seed(0)
    compiled = BenchLearner(kind, k=k, compile=True)
    torch.manual_seed(1)
    a = eager.learner._forward(batch.clone())["loss"].detach()
    torch.manual_seed(1)
    b = compiled.learner._forward(batch.clone())["loss"].detach()
    return float((a - b).abs() / a.abs().clamp_min(1e-12))


def fill_rise_buffer(k: int, *, capacity: int, envs: int = 8, chunk: int = 64, **replay_kwargs):
    from torchrl_rise.replay import RiseReplayBuffer

    rb = RiseReplayBuffer(
        capacity,
        num_envs=envs,
        frame_shape=(1, 84, 84),
        frame_stack=STACK,
        embedding_dim=D,
        context_length=k,
        n_step=3,
        gamma=0.997,
        seed=0,
        batch_size=256,
        **replay_kwargs,
    )
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (envs, chunk, 1, 84, 84), dtype=torch.uint8, generator=g)
    pixels = frames.expand(envs, chunk, STACK, 84, 84)
    emb = torch.randn(envs, chunk, D, generator=g).half()
    while int(rb._lane_next.min()) < rb.lane_capacity - chunk:
        end = torch.rand(envs, chunk, 1, generator=g) < 0.002
        td = {
            "pixels": pixels,
            "action": torch.randint(0, ACTIONS, (envs, chunk), generator=g),
            ("next", "reward"): torch.randn(envs, chunk, 1, generator=g),
            ("next", "terminated"): end,
            ("next", "truncated"): torch.zeros_like(end),
            ("next", "pixels"): pixels,
        }
        if k:
            td["rise_embedding"] = emb
            td[("next", "rise_embedding")] = emb
        rb.extend(TensorDict(td, batch_size=[envs, chunk]))
    return rb


def fill_sequence_buffer(length: int, *, capacity: int, scratch: str | None = None):
    """R2D2-style store: each step's frame stack, sampled as slices of ``length`` steps."""
    rb = TensorDictReplayBuffer(
        storage=LazyMemmapStorage(capacity, scratch_dir=scratch),
        sampler=SliceSampler(slice_len=length, traj_key="episode", strict_length=True),
    )
    g = torch.Generator().manual_seed(0)
    chunk = 500
    for start in range(0, capacity, chunk):
        rb.extend(
            TensorDict(
                {
                    "pixels": torch.randint(
                        0, 256, (chunk, STACK, 84, 84), dtype=torch.uint8, generator=g
                    ),
                    "action": torch.randint(0, ACTIONS, (chunk,), generator=g),
                    "steps_to_next_obs": torch.full((chunk, 1), 5),
                    "episode": torch.full((chunk,), start // 2000),
                    "next": {
                        "reward": torch.randn(chunk, 1, generator=g),
                        "discount": torch.full((chunk, 1), 0.99),
                    },
                },
                [chunk],
            )
        )
    return rb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, short windows, seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed updates per config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--speedup-warmup", type=int, default=1, help="warm-up updates per part-1 setting"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile row"
    )
    parser.add_argument("--device", default="cpu", help="where the learner runs (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does: see docs/network.md (context stream)
    torch.manual_seed(0)
    if args.quick:
        batch, ks, seqs, chunk_seqs, burn, train, repeats = (
            8,
            (4, 8, 16),
            2,
            1,
            2,
            4,
            args.repeats or 1,
        )
        capacity, seq_capacity = 2048, 1000
    else:
        batch, ks, seqs, chunk_seqs, burn, train, repeats = (
            256,
            (20, 80, 160),
            64,
            16,
            40,
            80,
            args.repeats or 3,
        )
        capacity, seq_capacity = 1 << 15, 8000
    k_mid = ks[1]
    started = time.perf_counter()
    rows_opt, times = [], {}

    def timed(learner: BenchLearner, make_batch, *, reps: int = repeats, warmup: int = 1) -> float:
        return median_time(lambda: learner.update(make_batch()), repeats=reps, warmup=warmup)

    # ---- part 1: CPU speed-ups on btr and rise K=k_mid --------------------------------------
    variants = [
        (
            "fp32, NCHW, M-IQN log-policy from the target at s_t (target runs on 2B)",
            dict(channels_last=False, munchausen_log_policy="target", batched_target=True),
        ),
        (
            "fp32, NCHW, BTR's online log-policy at s_t (target runs on B)",
            dict(channels_last=False, munchausen_log_policy="online"),
        ),
        (
            "fp32, channels-last, online log-policy (the library default)",
            dict(channels_last=True, munchausen_log_policy="online"),
        ),
        (
            "bf16 autocast, channels-last, online log-policy",
            dict(channels_last=True, munchausen_log_policy="online", autocast_dtype=torch.bfloat16),
        ),
    ]
    compile_label = "fp32, channels-last, online log-policy, `Learner(compile=True)`"
    if args.compile:
        variants.append((compile_label, dict(channels_last=True, compile=True)))
    compile_notes = []
    for label, kwargs in variants:
        row = [label]
        warmup = args.speedup_warmup
        if kwargs.get("compile"):
            warmup = max(2, warmup)  # the first call compiles
        for kind, k in (("btr", None), ("rise", k_mid)):
            data = synthetic_batch(batch, k)
            try:
                learner = BenchLearner(kind, k=k, device=args.device, **dict(kwargs))
                t = timed(learner, lambda d=data: d, reps=1, warmup=warmup)
            except Exception as err:  # torch.compile may not work on every machine
                if not kwargs.get("compile"):
                    raise
                t = math.nan
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                compile_notes.append(f"torch.compile failed for {kind}: {reason}")
            times[(label, kind)] = t
            row.append(f"{t:.2f}")
            print(f"[opt] {label} {kind}: {t:.2f} s", flush=True)
            if kwargs.get("compile") and not math.isnan(t):
                gap = compiled_loss_gap(kind, k, synthetic_batch(8, k, seed=1))
                compile_notes.append(
                    f"{kind}: compiled loss vs eager on the same weights, noise and batch: "
                    f"relative difference {gap:.1e}"
                )
                print(f"[opt] compile {kind}: relative loss difference {gap:.1e}", flush=True)
        row.append(f"{times[(label, 'rise')] / times[(label, 'btr')]:.2f}")
        rows_opt.append(row)
    base = times[(variants[0][0], "btr")]
    for row, (label, _) in zip(rows_opt, variants):
        row.insert(3, f"{base / times[(label, 'btr')]:.2f}x")

    # bf16 autocast only pays with hardware bf16 (AVX512-BF16 / AMX); elsewhere it is emulated.
    bf16 = native_bf16()
    chosen = {}  # the library defaults: fp32, channels-last CNN, online log-policy at s_t
    if bf16:
        chosen.update(autocast_dtype=torch.bfloat16)
    setting = (
        "the library defaults (channels-last CNN, online log-policy) + bf16 autocast"
        if bf16
        else "the library defaults: fp32, channels-last CNN, online log-policy at s_t (this CPU "
        "has no native bf16)"
    )

    # ---- part 2: the three configurations with the chosen setting --------------------------
    configs = [("btr", None)] + [("rise", k) for k in ks]
    excl, incl = {}, {}
    for kind, k in configs:
        learner = BenchLearner(kind, k=k, device=args.device, **dict(chosen))
        data = synthetic_batch(batch, k)
        excl[(kind, k)] = timed(learner, lambda d=data: d)
        print(f"[main] {kind} K={k} sample excluded: {excl[(kind, k)]:.2f} s", flush=True)
        rb = fill_rise_buffer(k or 0, capacity=capacity)

        rb.batch_size = batch
        incl[(kind, k)] = median_time(
            lambda rb=rb, learner=learner: learner.update_from(rb), repeats=repeats, warmup=1
        )
        rb.cleanup()
        print(f"[main] {kind} K={k} sample included: {incl[(kind, k)]:.2f} s", flush=True)

    seq_len = burn + train
    baseline = BenchLearner(
        "recurrent_baseline",
        burn_in=burn,
        chunks=seqs // chunk_seqs,
        device=args.device,
        **dict(chosen),
    )
    seq_data = sequence_batch(seqs, seq_len)
    excl[("recurrent_baseline", None)] = timed(baseline, lambda: seq_data, reps=1, warmup=0)
    print(
        f"[main] baseline sample excluded: {excl[('recurrent_baseline', None)]:.2f} s", flush=True
    )
    seq_rb = fill_sequence_buffer(seq_len, capacity=seq_capacity)

    def seq_sample():
        return seq_rb.sample(seqs * seq_len).reshape(seqs, seq_len)

    seq_sample_time = median_time(seq_sample, repeats=3, warmup=1)
    if args.quick:  # check once that the sampled [B, T] layout trains (not timed)
        baseline.update(seq_sample())
    incl[("recurrent_baseline", None)] = excl[("recurrent_baseline", None)] + seq_sample_time
    print(
        f"[main] baseline sample included: {incl[('recurrent_baseline', None)]:.2f} s", flush=True
    )

    btr_e, btr_i = excl[("btr", None)], incl[("btr", None)]
    # the same btr update (part 2's setting) timed three ways: part 1's row, part 2 without/with sampling
    default_label = variants[2][0] if not bf16 else variants[3][0]
    btr_all = [times[(default_label, "btr")], btr_e, btr_i]
    rise_mid_e = excl[("rise", k_mid)]
    rows = []
    for kind, k in [*configs, ("recurrent_baseline", None)]:
        name = (
            f"{kind} K={k}"
            if k
            else (
                f"recurrent_baseline ({seqs} x ({burn} burn-in + {train}))"
                if kind != "btr"
                else "btr"
            )
        )
        rows.append(
            [
                name,
                f"{excl[(kind, k)]:.2f}",
                f"{excl[(kind, k)] / btr_e:.2f}",
                f"{incl[(kind, k)]:.2f}",
                f"{incl[(kind, k)] / btr_i:.2f}",
            ]
        )
    ratio_mid = rise_mid_e / btr_e
    base_vs_rise = excl[("recurrent_baseline", None)] / rise_mid_e
    elapsed = time.perf_counter() - started
    body = f"""
Time per gradient update (IQNLoss + backward + clip + Adam), batch {batch}, Atari shapes
(4 x 84 x 84 uint8, 18 actions, 512-d fp16 embeddings), {args.threads} torch threads; medians of
{repeats} updates after 1 warm-up (recurrent baseline: a single update, no warm-up; part 1:
one update after {args.speedup_warmup} warm-up). For the baseline, "sample included" is its update
time plus the median time of its sample (3 repeats), measured separately. The baseline's {seqs} sequences run as {seqs // chunk_seqs}
updates of {chunk_seqs} (the CNN work of one pass; one pass would need
~12 GB of CNN activations). "Sample included" adds `RiseReplayBuffer.sample` (prioritized, K-window
and frame-stack assembly, {capacity} records) and the priority write-back; for the baseline,
TorchRL's `SliceSampler` over a `LazyMemmapStorage` of frame stacks. Whole run: {elapsed / 60:.1f} min.

### Part 1: CPU speed-ups (seconds per update)

{markdown_table(["setting", "btr", "rise K=" + str(k_mid), "btr speed-up vs first row", "rise/btr"], rows_opt)}

{"; ".join(compile_notes) + "." if compile_notes else "(no torch.compile row: --no-compile)"}
The compile row times one update after {max(2, args.speedup_warmup)} warm-ups (the first
compiles; compile time is not in the figure).

### Part 2: the three configurations ({setting})

{markdown_table(["network", "s/update (sample excluded)", "/ btr", "s/update (sample included)", "/ btr"], rows)}

Goals: rise/btr <= 1.3 at K={k_mid}: **{ratio_mid:.2f}**; recurrent baseline >= 5x rise per update:
**{base_vs_rise:.1f}x**.

What bounds these figures: part 1 times one update per setting after {args.speedup_warmup}
warm-up update(s); part 2 is the median of {repeats} updates per configuration (the baseline: one
update, it is slow). The machine is a shared 2-core CPU: the btr update was timed
{len(btr_all)} times with part 2's setting in this run (part 1 and part 2): {min(btr_all):.2f}-{max(btr_all):.2f} s,
a {100 * (max(btr_all) / min(btr_all) - 1):.0f}% spread, the resolution of the ratios; part 2 compares
medians measured in the same run. The IMPALA CNN dominates btr; rise adds the
LSTM over K steps (online forward + backward at s_t, target forward at s_{{t+n}}: with the online
log-policy the target network runs on {batch} states, not {2 * batch}); the baseline encodes
{seqs * seq_len} frames per update against btr's {batch} (+{batch} without gradient). bf16 autocast
is used in part 2 only when the CPU has
native bf16 (`avx512_bf16`/`amx_bf16` in /proc/cpuinfo: {"yes" if bf16 else "no"} here).
"""
    print(body)
    if not args.no_write:
        write_section("learner", "Learner: time per gradient update (`IQNLoss`)", body)


if __name__ == "__main__":
    main()
