"""Property tests: RiseReplayBuffer against a brute-force reference kept in python lists.

A small simulator produces several envs' streams with random episode lengths, terminations and
truncations (env-side frame stacks with "same" padding, one embedding per observation); the data is
fed to the buffer in random chunks through ring wrap-around. The reference recomputes, from the raw
per-env history alone, which transitions must be sampleable and what every sampled key must hold.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensordict import TensorDict

from torchrl_rise.replay import Prefetcher, RiseReplayBuffer

D = 3  # embedding: (observation id, env, episode), exact in float16


@dataclass
class Episode:
    obs: list[int] = field(default_factory=list)  # observation ids, first to last (incl. final)
    rewards: list[float] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    end: str | None = None  # None (running), "term", "trunc" or "cut" (close_open_episodes)


@dataclass
class Lane:
    episodes: list[Episode] = field(default_factory=list)


class Simulator:
    """Several envs stepping in lockstep; observations get globally unique ids."""

    def __init__(self, num_envs: int, frame_stack: int, rng: random.Random, p_end: float):
        self.E, self.S, self.rng, self.p_end = num_envs, frame_stack, rng, p_end
        self.next_id = 0
        self.lanes = [Lane() for _ in range(num_envs)]
        for e in range(num_envs):
            self._new_episode(e)

    def _obs(self, e: int) -> int:
        self.next_id += 1
        return self.next_id

    def _new_episode(self, e: int) -> None:
        lane = self.lanes[e]
        lane.episodes.append(Episode(obs=[self._obs(e)]))

    def cut(self) -> None:
        """Every env restarts (as after a resume): the running episodes end without a done."""
        for e, lane in enumerate(self.lanes):
            lane.episodes[-1].end = "cut"
            self._new_episode(e)

    def frame(self, obs_id: int) -> torch.Tensor:
        return torch.tensor([[obs_id % 251, obs_id // 251]], dtype=torch.uint8).view(1, 1, 2)

    def embedding(self, obs_id: int, e: int, ep: int) -> torch.Tensor:
        return torch.tensor([obs_id, e, ep], dtype=torch.float16)

    def stack(self, ep: Episode, pos: int) -> torch.Tensor:
        ids = [ep.obs[max(pos - self.S + 1 + j, 0)] for j in range(self.S)]
        return torch.cat([self.frame(i) for i in ids], 0)

    def step(self, T: int) -> TensorDict:
        """T steps of every env, as a collector's [num_envs, T] batch."""
        rows = []
        for e, lane in enumerate(self.lanes):
            steps = []
            for _ in range(T):
                ep_i = len(lane.episodes) - 1
                ep = lane.episodes[ep_i]
                pos = len(ep.obs) - 1
                action = self.rng.randrange(5)
                reward = self.rng.uniform(-2.0, 2.0)
                r = self.rng.random()
                end = None if r >= self.p_end else ("term" if r < self.p_end / 2 else "trunc")
                nxt = self._obs(e)
                ep.obs.append(nxt)
                ep.rewards.append(reward)
                ep.actions.append(action)
                steps.append(
                    {
                        "pixels": self.stack(ep, pos),
                        "rise_embedding": self.embedding(ep.obs[pos], e, ep_i),
                        "action": torch.tensor(action),
                        ("next", "reward"): torch.tensor([reward], dtype=torch.float32),
                        ("next", "terminated"): torch.tensor([end == "term"]),
                        ("next", "truncated"): torch.tensor([end == "trunc"]),
                        ("next", "done"): torch.tensor([end is not None]),
                        ("next", "pixels"): self.stack(ep, pos + 1),
                        ("next", "rise_embedding"): self.embedding(nxt, e, ep_i),
                    }
                )
                if end is not None:
                    ep.end = end
                    self._new_episode(e)
            rows.append(torch.stack([TensorDict(s, []) for s in steps]))
        return torch.stack(rows)


def _window(sim, ep, e, ep_i, p, K, where, oldest):
    """The embeddings of the K observations of episode ``ep_i`` ending at position ``p``."""
    ctx = torch.zeros(K, D, dtype=torch.float16)
    mask = torch.zeros(K, dtype=torch.bool)
    for k in range(K):
        q = p - (K - 1 - k)
        if q >= 0 and where[(ep_i, q)] >= oldest:
            ctx[k] = sim.embedding(ep.obs[q], e, ep_i)
            mask[k] = True
    return ctx, mask


def reference(sim: Simulator, L: int, n: int, K: int, gamma: float) -> dict[int, dict]:
    """Slot -> expected transition, from the raw episode history alone."""
    out = {}
    for e, lane in enumerate(sim.lanes):
        # Records the buffer has written: every step's observation, plus each ended episode's final
        # observation. A running episode's newest observation is not written yet (no step from it).
        written = []
        for ep_i, ep in enumerate(lane.episodes):
            # A cut episode, like a running one, never had its newest observation written.
            last = len(ep.obs) if ep.end in ("term", "trunc") else len(ep.obs) - 1
            written += [(ep_i, p) for p in range(last)]
        total = len(written)
        oldest = total - L
        where = {rec: r for r, rec in enumerate(written)}
        for r in range(max(oldest, 0), total):
            ep_i, pos = written[r]
            ep = lane.episodes[ep_i]
            if pos == len(ep.rewards):  # final observation: not a transition
                continue
            if r - min(sim.S - 1, pos) < oldest:  # frame stack partly overwritten
                continue
            steps_left = len(ep.rewards) - pos
            ended = ep.end in ("term", "trunc")
            m = min(n, steps_left) if ended else n
            if m > steps_left or r + m >= total:  # n-step future not written yet
                continue
            if ep.end == "cut" and pos + m >= len(ep.rewards):  # its future never comes
                continue
            ended_here = ended and pos + m == len(ep.rewards)
            term = ended_here and ep.end == "term"
            trunc = ended_here and ep.end == "trunc"

            ctx, mask = _window(sim, ep, e, ep_i, pos, K, where, oldest)
            nctx, nmask = _window(sim, ep, e, ep_i, pos + m, K, where, oldest)
            out[e * L + r % L] = {
                "pixels": sim.stack(ep, pos),
                "next_pixels": sim.stack(ep, pos + m),
                "action": ep.actions[pos],
                "return": sum(gamma**j * ep.rewards[pos + j] for j in range(m)),
                "discount": 0.0 if term else gamma**m,
                "terminated": term,
                "truncated": trunc,
                "m": m,
                "context": ctx,
                "mask": mask,
                "next_context": nctx,
                "next_mask": nmask,
            }
    return out


def check_rows(rb: RiseReplayBuffer, got, ref: dict[int, dict]) -> None:
    """Every row of a batch (gathered or sampled) equals the reference at its slot."""
    for i, slot in enumerate(got["index"].tolist()):
        want = ref[slot]
        assert torch.equal(got["pixels"][i].cpu(), want["pixels"]), slot
        assert torch.equal(got["next", "pixels"][i].cpu(), want["next_pixels"]), slot
        assert got["action"][i].item() == want["action"]
        assert got["next", "reward"][i].item() == pytest.approx(want["return"], abs=1e-5)
        assert got["next", "discount"][i].item() == pytest.approx(want["discount"], rel=1e-6)
        assert got["next", "terminated"][i].item() == want["terminated"]
        assert got["next", "truncated"][i].item() == want["truncated"]
        assert got["steps_to_next_obs"][i].item() == want["m"]
        if rb.use_embeddings:
            assert torch.equal(got["rise_context_mask"][i].cpu(), want["mask"]), slot
            assert torch.equal(got["rise_context"][i].cpu(), want["context"]), slot
            assert torch.equal(got["next", "rise_context_mask"][i].cpu(), want["next_mask"]), slot
            assert torch.equal(got["next", "rise_context"][i].cpu(), want["next_context"]), slot


def check_against_reference(rb: RiseReplayBuffer, ref: dict[int, dict], variant: str) -> None:
    slots = rb.sampleable_index()
    assert sorted(ref) == slots.tolist()
    assert len(rb) == len(ref)
    if not len(ref):
        return
    check_rows(rb, rb.gather(slots), ref)
    # The sampling paths: reused buffers (the first batch still valid after one more sample),
    # the prefetcher (a batch valid until the next call), or fresh batches.
    if variant == "prefetch":
        with Prefetcher(rb, 16) as batches:
            for _ in range(3):
                check_rows(rb, batches.next(), ref)
    else:
        first, second = rb.sample(), rb.sample()
        check_rows(rb, first, ref)
        check_rows(rb, second, ref)


VARIANTS = {
    "memmap": {},
    "reuse": {"reuse_output": True},
    "device_cpu": {"storage_device": "cpu", "reuse_output": True},
    "device_cpu_frames_in_memmap": {"storage_device": "cpu", "device_frames": False},
    "torch_tree": {"tree": "torch"},
    "prefetch": {"tree": "torch"},
}


@given(
    seed=st.integers(0, 2**31 - 1),
    num_envs=st.integers(1, 3),
    n_step=st.integers(1, 4),
    context_length=st.integers(1, 6),
    frame_stack=st.integers(1, 4),
    extra_lane=st.integers(1, 25),
    p_end=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    chunks=st.lists(
        st.tuples(st.integers(1, 7), st.sampled_from([False, False, True])), min_size=1, max_size=8
    ),
    prioritized=st.booleans(),
    chunk_records=st.integers(3, 24),
    variant=st.sampled_from(sorted(VARIANTS)),
)
def test_matches_bruteforce_reference(
    tmp_path_factory,
    seed,
    num_envs,
    n_step,
    context_length,
    frame_stack,
    extra_lane,
    p_end,
    chunks,
    prioritized,
    chunk_records,
    variant,
):
    rng = random.Random(seed)
    gamma = 0.9
    lane = n_step + frame_stack + 1 + extra_lane
    sim = Simulator(num_envs, frame_stack, rng, p_end)
    run = tmp_path_factory.mktemp("run")

    def build(k: int) -> RiseReplayBuffer:
        return RiseReplayBuffer(
            lane * num_envs,
            num_envs,
            frame_shape=(1, 1, 2),
            frame_stack=frame_stack,
            embedding_dim=D,
            context_length=context_length,
            n_step=n_step,
            gamma=gamma,
            prioritized=prioritized,
            batch_size=16,
            scratch_dir=run / f"scratch{k}",
            seed=seed + k,
            chunk_records=chunk_records,
            **VARIANTS[variant],
        )

    rb = build(0)
    for k, (T, cut) in enumerate(chunks, 1):
        T = min(T, lane // 2)  # one write never exceeds a lane (steps + final observations)
        if cut:  # a resume: incremental dump, load into a new buffer, the envs restart
            rb.dumps(run / f"ckpt{k}", chunk_store=run / "chunks")
            rb.close()
            rb = build(k)
            rb.loads(run / f"ckpt{k}")
            check_against_reference(
                rb, reference(sim, lane, n_step, context_length, gamma), variant
            )
            rb.close_open_episodes()
            sim.cut()
        rb.extend(sim.step(T))
        check_against_reference(rb, reference(sim, lane, n_step, context_length, gamma), variant)
    if len(rb):
        batch = rb.sample()
        assert rb._ready[batch["index"]].all()
        again = rb.gather(batch["index"])
        for key in ("pixels", ("next", "pixels"), ("next", "reward"), "rise_context"):
            assert torch.equal(batch[key], again[key])
