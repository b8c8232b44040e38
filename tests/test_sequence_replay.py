"""SequenceReplayBuffer against a brute-force, record-by-record reference: sequence assembly over
episode ends, truncations, lanes and the ring seam; stored states; priorities; dumps/loads."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torchrl_rise import keys
from torchrl_rise.replay import SequenceReplayBuffer

C, H, W = 1, 1, 4  # a frame encodes (lane, step % 256, step // 256, is_final)
GAMMA = 0.9


def _frame(lane: int, step: int, final: bool) -> torch.Tensor:
    return torch.tensor([lane, step % 256, step // 256, int(final)], dtype=torch.uint8).view(
        C, H, W
    )


class Reference:
    """Every record of every lane in a Python list; the sequences computed by loops."""

    def __init__(self, num_envs, lane_capacity, *, burn_in, learning_length, period, n, S):
        self.E, self.L = num_envs, lane_capacity
        self.burn, self.learn, self.period, self.n, self.S = (
            burn_in,
            learning_length,
            period,
            n,
            S,
        )
        self.recs = [[] for _ in range(num_envs)]
        self.open = [False] * num_envs
        self.ep_id = [-1] * num_envs
        self.ep_step = [0] * num_envs
        self.next_id = 0

    def add(self, e, t, action, reward, term, trunc, state):
        if not self.open[e]:
            self.ep_id[e], self.next_id, self.ep_step[e] = self.next_id, self.next_id + 1, 0
        rec = dict(
            frame=_frame(e, t, False), action=action, reward=reward, term=term, trunc=trunc,
            final=False, ep=self.ep_id[e], ep_step=self.ep_step[e], state=state,
        )  # fmt: skip
        self.recs[e].append(rec)
        if term or trunc:
            final = dict(rec, frame=_frame(e, t, True), action=0, reward=0.0, final=True)
            final["ep_step"] = self.ep_step[e] + 1
            self.recs[e].append(final)
            self.open[e] = False
        else:
            self.open[e] = True
            self.ep_step[e] += 1

    def close_open_episodes(self):
        self.open = [False] * self.E

    def _valid(self, e, s, q):
        recs, oldest = self.recs[e], len(self.recs[e]) - self.L
        if q < max(0, oldest) or q >= len(recs) or recs[q]["ep"] != recs[s]["ep"]:
            return False
        return q - min(self.S - 1, recs[q]["ep_step"]) >= oldest

    def ready(self, e, s):
        recs = self.recs[e]
        r = recs[s]
        if r["final"] or r["ep_step"] % self.period or not self._valid(e, s, s):
            return False
        count = 0
        for q in range(s, s + self.learn + self.n):
            if not self._valid(e, s, q):
                break
            count += 1
        return count == self.learn + self.n or recs[s + count - 1]["final"]

    def ready_set(self):
        out = set()
        for e in range(self.E):
            for s in range(max(0, len(self.recs[e]) - self.L), len(self.recs[e])):
                if self.ready(e, s):
                    out.add(e * self.L + s % self.L)
        return out

    def sequence(self, e, s):
        recs, n, S = self.recs[e], self.n, self.S
        T = self.burn + self.learn + n
        out = dict(
            valid=torch.zeros(T, dtype=torch.bool),
            learn=torch.zeros(T, dtype=torch.bool),
            pixels=torch.zeros(T, S * C, H, W, dtype=torch.uint8),
            ret=torch.zeros(T),
            discount=torch.zeros(T),
            m=torch.zeros(T, dtype=torch.long),
            action=torch.zeros(T, dtype=torch.long),
            state=None,
        )
        for p in range(T):
            q = s - self.burn + p
            if not self._valid(e, s, q):
                continue
            rec = recs[q]
            out["valid"][p] = True
            if out["state"] is None:
                out["state"] = rec["state"]
            out["learn"][p] = self.burn <= p < self.burn + self.learn and not rec["final"]
            out["action"][p] = rec["action"]
            stack = [recs[q + max(k, -rec["ep_step"])]["frame"] for k in range(-S + 1, 1)]
            out["pixels"][p] = torch.cat(stack)
            if out["learn"][p]:
                ret, m = 0.0, n
                for k in range(n):
                    ret += GAMMA**k * recs[q + k]["reward"]
                    if recs[q + k]["term"] or recs[q + k]["trunc"]:
                        m = k + 1
                        break
                out["ret"][p], out["m"][p] = ret, m
                out["discount"][p] = 0.0 if recs[q + m - 1]["term"] else GAMMA**m
        return out


def _data(E, T, t0, *, p_end=0.15, hidden=3, S=2, gen=None):
    """A collector-like batch [E, T] whose frames say which lane and step they are."""
    end = torch.rand(E, T, 1, generator=gen) < p_end
    trunc = end & (torch.rand(E, T, 1, generator=gen) < 0.4)
    term = end & ~trunc
    px = torch.zeros(E, T, S * C, H, W, dtype=torch.uint8)
    nxt = torch.zeros_like(px)
    for e in range(E):
        for t in range(T):
            px[e, t, -C:] = _frame(e, t0 + t, False)
            nxt[e, t, -C:] = _frame(e, t0 + t, True)
    return TensorDict(
        {
            "pixels": px,
            "action": torch.randint(0, 5, (E, T), generator=gen),
            "recurrent_state_h": torch.randn(E, T, hidden, generator=gen),
            "recurrent_state_c": torch.randn(E, T, hidden, generator=gen),
            ("next", "pixels"): nxt,
            ("next", "reward"): torch.randn(E, T, 1, generator=gen),
            ("next", "terminated"): term,
            ("next", "truncated"): trunc,
        },
        batch_size=[E, T],
    )


def _feed(ref, td, t0):
    E, T = td.batch_size
    for e in range(E):
        for t in range(T):
            ref.add(
                e, t0 + t, int(td["action"][e, t]), float(td["next", "reward"][e, t]),
                bool(td["next", "terminated"][e, t]), bool(td["next", "truncated"][e, t]),
                (td["recurrent_state_h"][e, t], td["recurrent_state_c"][e, t]),
            )  # fmt: skip


def _buffer(tmp_path, name="rb", **kw):
    opts = dict(
        num_envs=3, frame_shape=(C, H, W), frame_stack=2, burn_in=3, learning_length=4,
        period=2, n_step=2, gamma=GAMMA, state_dim=3, state_dtype=torch.float32, batch_size=8,
        scratch_dir=tmp_path / name, seed=0, check_disk=False,
    )  # fmt: skip
    opts.update(kw)
    capacity = opts.pop("capacity", 3 * 20)
    return SequenceReplayBuffer(capacity, **opts)


def _check_against(rb, ref):
    L = rb.lane_capacity
    got = set(rb.sampleable_index().tolist())
    assert got == ref.ready_set()
    assert len(rb) == len(got)
    if not got:
        return 0
    index = torch.tensor(sorted(got))
    batch = rb.gather(index)
    T = rb.sequence_length
    assert batch["pixels"].shape == (len(got), T, rb.frame_stack * C, H, W)
    for i, slot in enumerate(index.tolist()):
        e, pos = divmod(slot, L)
        s = next(q for q in range(max(0, len(ref.recs[e]) - L), len(ref.recs[e])) if q % L == pos)
        want = ref.sequence(e, s)
        torch.testing.assert_close(batch["sequence_mask"][i], want["valid"])
        torch.testing.assert_close(batch["learn_mask"][i], want["learn"])
        torch.testing.assert_close(batch["pixels"][i], want["pixels"])
        learn = want["learn"]
        torch.testing.assert_close(batch["action"][i][want["valid"]], want["action"][want["valid"]])
        torch.testing.assert_close(batch["next", "reward"][i, learn, 0], want["ret"][learn])
        torch.testing.assert_close(batch["next", "discount"][i, learn, 0], want["discount"][learn])
        torch.testing.assert_close(batch["steps_to_next_obs"][i, learn, 0], want["m"][learn])
        # every trained step's bootstrap observation is a valid position of the sequence
        boot = torch.arange(T)[learn] + want["m"][learn]
        assert bool(want["valid"][boot].all())
        torch.testing.assert_close(batch["recurrent_state_h"][i], want["state"][0])
        torch.testing.assert_close(batch["recurrent_state_c"][i], want["state"][1])
    return len(got)


def test_sequences_equal_brute_force_over_episodes_lanes_and_seam(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rb = _buffer(tmp_path)
    ref = Reference(3, rb.lane_capacity, burn_in=3, learning_length=4, period=2, n=2, S=2)
    t0, checked = 0, 0
    # 150 steps per lane over a 20-record ring: it wraps about 8 times
    for i, T in enumerate([1, 5, 7, 3, 12, 2, 9, 6, 11, 4, 8, 10, 13, 5, 9, 7, 6, 8, 14, 10]):
        td = _data(3, T, t0, gen=gen)
        rb.extend(td)
        _feed(ref, td, t0)
        t0 += T
        if i == 10:  # a resume: the envs restart without the buffer seeing the episodes end
            rb.close_open_episodes()
            ref.close_open_episodes()
        checked += _check_against(rb, ref)
    assert checked > 200
    rb.close()


def test_batch_layout_and_sampling(tmp_path):
    gen = torch.Generator().manual_seed(1)
    rb = _buffer(tmp_path, capacity=3 * 40, alpha=1.0)  # alpha 1: a decisive priority test
    rb.extend(_data(3, 30, 0, gen=gen))
    batch = rb.sample()
    T = rb.sequence_length
    assert batch.batch_size == (8,)
    assert batch["next", "reward"].shape == (8, T, 1) and batch[keys.WEIGHT].shape == (8,)
    assert set(batch["index"].tolist()) <= set(rb.sampleable_index().tolist())
    # priorities are per sequence: one start with all the mass gets every draw
    every = rb.sampleable_index()
    prio = torch.full((every.numel(),), 1e-8)
    prio[3] = 1e6
    rb.update_priority(every, prio)
    assert set(rb.sample()["index"].tolist()) == {int(every[3])}
    # BTR's importance weights through the same sampler: (P(i) / min_batch P) ** -alpha
    rb.update_priority(every, torch.linspace(0.5, 4.0, every.numel()))
    batch = rb.sample()
    tree = rb.sampler.tree_values(batch["index"]).double()
    want = (tree / tree.min()) ** -1.0
    torch.testing.assert_close(batch[keys.WEIGHT].double(), want, rtol=1e-5, atol=1e-6)
    batch["td_error"] = batch["index"].float() / 100 + 0.1  # (a slot drawn twice: same value)
    rb.update_tensordict_priority(batch)
    torch.testing.assert_close(
        rb.sampler.tree_values(batch["index"]), (batch["td_error"] + 1e-6) ** 1.0
    )
    rb.close()


def test_zero_state_and_fp16_state(tmp_path):
    gen = torch.Generator().manual_seed(2)
    td = _data(3, 25, 0, gen=gen)
    zero = _buffer(tmp_path, "zero", capacity=120, recurrent_state="zero")
    zero.extend(td.exclude("recurrent_state_h", "recurrent_state_c"))
    batch = zero.sample()
    assert batch["recurrent_state_h"].shape == (8, 3) and not batch["recurrent_state_h"].any()
    half = _buffer(tmp_path, "half", capacity=120, state_dtype=torch.float16)
    full = _buffer(tmp_path, "full", capacity=120)
    half.extend(td)
    full.extend(td)
    index = full.sampleable_index()
    a, b = half.gather(index), full.gather(index)
    torch.testing.assert_close(a["recurrent_state_h"], b["recurrent_state_h"].half().float())
    # per record: nothing stored for "zero", 2 x 3 halves, 2 x 3 floats
    assert half.nbytes_per_transition - zero.nbytes_per_transition == 2 * 3 * 2
    assert full.nbytes_per_transition - zero.nbytes_per_transition == 2 * 3 * 4
    for rb in (zero, half, full):
        rb.close()


def test_bad_settings_and_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="state_dim"):
        _buffer(tmp_path, state_dim=None)
    with pytest.raises(ValueError, match="recurrent_state"):
        _buffer(tmp_path, recurrent_state="learned")
    with pytest.raises(ValueError, match="burn_in"):
        _buffer(tmp_path, burn_in=-1)
    with pytest.raises(ValueError, match="a sequence needs"):
        _buffer(tmp_path, capacity=3 * 10)
    rb = _buffer(tmp_path)
    td = _data(3, 5, 0)
    with pytest.raises(KeyError, match="recurrent state"):
        rb.extend(td.exclude("recurrent_state_c"))
    with pytest.raises(ValueError, match="state_dim"):
        rb.extend(td.set("recurrent_state_h", torch.zeros(3, 5, 4)))
    rb.close()


def test_dumps_loads_resume_exactly(tmp_path):
    gen = torch.Generator().manual_seed(3)
    rb = _buffer(tmp_path, capacity=120)
    for t0, T in ((0, 17), (17, 13), (30, 9)):
        rb.extend(_data(3, T, t0, gen=gen))
    batch = rb.sample()
    batch["td_error"] = torch.rand(8) * 3
    rb.update_tensordict_priority(batch)
    rb.dumps(tmp_path / "dump", chunk_store=tmp_path / "store")
    resumed = _buffer(tmp_path, "resumed", capacity=120, seed=123)
    resumed.loads(tmp_path / "dump")
    assert len(resumed) == len(rb)
    more = _data(3, 11, 39, gen=gen)
    for _ in range(2):
        a, b = rb.sample(), resumed.sample()
        assert (a == b).all()
        rb.extend(more)
        resumed.extend(more)
    assert (rb.sample() == resumed.sample()).all()
    other = _buffer(tmp_path, "other", capacity=120, burn_in=2)
    with pytest.raises(ValueError, match="burn_in"):
        other.loads(tmp_path / "dump")
    for x in (rb, resumed, other):
        x.close()
