"""RiseReplayBuffer: resume, prioritized/uniform statistics, layouts, footprint and input errors.

Content correctness against a brute-force reference is in tests/test_replay_properties.py.
"""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch
from tensordict import TensorDict

from torchrl_rise import keys
from torchrl_rise._fileio import CheckpointCorruptError
from torchrl_rise.replay import InsufficientDiskSpaceError, RiseReplayBuffer
from torchrl_rise.replay import scratch as scratch_module


def make_batch(E: int, T: int, *, S: int = 2, D: int = 4, end_every: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    done = torch.zeros(E, T, 1, dtype=torch.bool)
    if end_every:
        done[:, end_every - 1 :: end_every] = True
    return TensorDict(
        {
            "pixels": torch.randint(0, 255, (E, T, S, 3, 3), dtype=torch.uint8, generator=g),
            "rise_embedding": torch.randn(E, T, D, generator=g).half(),
            "action": torch.randint(0, 4, (E, T), generator=g),
            ("next", "reward"): torch.randn(E, T, 1, generator=g),
            ("next", "terminated"): done.clone(),
            ("next", "truncated"): torch.zeros_like(done),
            ("next", "done"): done.clone(),
            ("next", "pixels"): torch.randint(
                0, 255, (E, T, S, 3, 3), dtype=torch.uint8, generator=g
            ),
            ("next", "rise_embedding"): torch.randn(E, T, D, generator=g).half(),
        },
        batch_size=[E, T],
    )


def make_rb(tmp_path, *, capacity=64, E=2, cls=RiseReplayBuffer, **kwargs):
    """A small ``cls`` (a RiseReplayBuffer class) of 3x3 frames; ``kwargs`` override its options."""
    opts = dict(
        frame_shape=(1, 3, 3),
        frame_stack=2,
        embedding_dim=4,
        context_length=3,
        n_step=2,
        gamma=0.9,
        batch_size=8,
        scratch_dir=tmp_path / "storage",
        seed=1,
    )
    opts.update(kwargs)
    return cls(capacity, E, **opts)


def assert_same(a: TensorDict, b: TensorDict) -> None:
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", ["self_contained", "chunk_store", "moved", "dump_moved"])
def test_resume_samples_exactly_the_same(tmp_path, mode):
    rb = make_rb(tmp_path, alpha=0.6)
    for i in range(5):  # 5 x 12 steps + finals > 32 slots per lane: the rings wrap
        rb.extend(make_batch(2, 12, end_every=5, seed=i))
        batch = rb.sample()
        batch["td_error"] = torch.rand(8) * (i + 1)
        rb.update_tensordict_priority(batch)
    store = tmp_path / "run" / "chunks" if mode != "self_contained" else None
    rb.dumps(tmp_path / "run" / "ckpt", chunk_store=store)
    ckpt = tmp_path / "run" / "ckpt"
    if mode == "moved":  # the run directory moves as a whole: the store is found relative to it
        shutil.move(tmp_path / "run", tmp_path / "moved")
        ckpt = tmp_path / "moved" / "ckpt"
    resumed = make_rb(tmp_path, alpha=0.6, scratch_dir=tmp_path / "s2", seed=99)  # seed restored
    if mode == "dump_moved":  # the dump alone moves: it names its store only relative to itself
        shutil.move(tmp_path / "run" / "ckpt", tmp_path / "elsewhere" / "deeper" / "ckpt")
        ckpt = tmp_path / "elsewhere" / "deeper" / "ckpt"
        with pytest.raises(CheckpointCorruptError, match="missing"):
            resumed.loads(ckpt)
        resumed = make_rb(tmp_path, alpha=0.6, scratch_dir=tmp_path / "s3", seed=99)
        resumed.loads(ckpt, chunk_store=store)  # so its store is named
    else:
        resumed.loads(ckpt)
    assert len(resumed) == len(rb)
    assert torch.equal(resumed.sampleable_index(), rb.sampleable_index())
    for i in range(3):
        assert_same(rb.sample(), resumed.sample())
        more = make_batch(2, 7, end_every=3, seed=10 + i)
        rb.extend(more)
        resumed.extend(more)
    assert_same(rb.sample(), resumed.sample())


def test_close_open_episodes_starts_new_episodes(tmp_path):
    rb = make_rb(tmp_path, E=1, context_length=3)
    first, second = make_batch(1, 5, seed=1), make_batch(1, 5, seed=2)
    rb.extend(first)  # an episode left open (no done)
    rb.close_open_episodes()
    rb.extend(second)
    # The first slot of the second batch begins an episode: its window holds only itself.
    td = rb.gather(torch.tensor([5]))
    assert td["rise_context_mask"][0].tolist() == [False, False, True]
    assert torch.equal(td["rise_context"][0, -1], second["rise_embedding"][0, 0])
    assert not td["rise_context"][0, :2].any()
    # Without the call, the same write would continue the open episode.
    rb2 = make_rb(tmp_path / "b", E=1, context_length=3)
    rb2.extend(first)
    rb2.extend(second)
    assert rb2.gather(torch.tensor([5]))["rise_context_mask"][0].all()


def test_close_open_episodes_never_splices_the_cut_episode(tmp_path):
    rb = make_rb(tmp_path, E=1, n_step=2, frame_stack=2, context_length=3)
    first, second = make_batch(1, 6, seed=1), make_batch(1, 6, seed=2)
    rb.extend(first)  # steps 0-5 of an episode the envs never finish
    rb.close_open_episodes()
    rb.extend(second)  # a new episode in slots 6-11
    # Steps 4 and 5 lack their n-step future in their own episode: they stay unsampleable.
    assert rb.sampleable_index().tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    rb.extend(make_batch(1, 6, seed=3))
    assert 4 not in rb.sampleable_index().tolist() and 5 not in rb.sampleable_index().tolist()
    got = rb.gather(torch.tensor([3]))  # the cut episode's last sampleable step: all its own
    assert torch.equal(got["next", "pixels"][0, -1], first["pixels"][0, 5, -1])
    assert torch.equal(got["next", "rise_context"][0, -1], first["rise_embedding"][0, 5])


def test_resume_rejects_a_different_layout(tmp_path):
    rb = make_rb(tmp_path)
    rb.extend(make_batch(2, 6))
    rb.dumps(tmp_path / "ckpt")
    other = make_rb(tmp_path, frame_shape=(1, 4, 4), scratch_dir=tmp_path / "s2")
    with pytest.raises(ValueError, match="frame_shape"):
        other.loads(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="dumps"):
        other.loads(tmp_path / "nothing")


def test_dumps_before_any_data(tmp_path):
    rb = make_rb(tmp_path)
    rb.dumps(tmp_path / "ckpt")
    empty = rb.dumps(tmp_path / "empty", chunk_store=tmp_path / "store")
    assert empty["files_written"] == 3 and empty["files_reused"] == 0  # state, sampler, manifest
    rb.extend(make_batch(2, 6))
    full = rb.dumps(tmp_path / "first", chunk_store=tmp_path / "store")
    assert full["files_reused"] == 0 and full["files_written"] == 3 + len(rb._chunk_bounds)
    resumed = make_rb(tmp_path, scratch_dir=tmp_path / "s2")
    resumed.loads(tmp_path / "ckpt")
    assert len(resumed) == 0
    resumed.extend(make_batch(2, 6))
    assert len(resumed) == 2 * (6 - 2)


# ---------------------------------------------------------------- prioritized replay


def test_per_sampling_frequencies_and_weights(tmp_path):
    alpha, beta, eps = 0.7, 0.5, 1e-6
    rb = make_rb(
        tmp_path, alpha=alpha, beta=beta, eps=eps, E=1, capacity=32, importance_weights="torchrl"
    )
    rb.extend(make_batch(1, 10))  # 8 ready transitions (n_step=2)
    index = rb.sampleable_index()
    assert len(index) == 8
    priority = torch.arange(1, 9, dtype=torch.float32)
    rb.update_priority(index, priority)
    batch = rb.sample(40_000)
    p = (priority.double() + eps) ** alpha
    expected = p / p.sum()
    counts = torch.bincount(batch["index"], minlength=rb.capacity)[index].double()
    freq = counts / counts.sum()
    # 40k draws: standard error < 0.0025 per cell
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
    w = (p / p.min()) ** -beta
    lookup = dict(zip(index.tolist(), w.tolist()))
    want = torch.tensor([lookup[i] for i in batch["index"].tolist()], dtype=torch.double)
    assert torch.allclose(batch[keys.WEIGHT].double(), want, rtol=1e-5)
    assert batch[keys.WEIGHT].max() <= 1.0


def test_new_items_get_max_priority_and_beta_is_settable(tmp_path):
    rb = make_rb(tmp_path, alpha=1.0, beta=0.4, E=1, capacity=32)
    rb.extend(make_batch(1, 6))
    old = rb.sampleable_index()
    rb.update_priority(old, torch.tensor([0.5, 3.0, 0.1, 0.2]))
    rb.extend(make_batch(1, 3, seed=1))
    new = rb.sampleable_index()[len(old) :]
    assert len(new) == 3
    values = rb.sampler.tree_values(new)
    assert torch.allclose(values, torch.full((3,), 3.0 + 1e-6))
    rb.beta = 1.0
    assert rb.beta == 1.0
    with pytest.raises(ValueError, match="beta"):
        rb.beta = -0.1


def test_priority_updates_skip_overwritten_slots(tmp_path):
    rb = make_rb(tmp_path, E=1, capacity=16, alpha=1.0)
    rb.extend(make_batch(1, 8))
    stale = rb.sampleable_index()[:2].clone()
    rb.extend(make_batch(1, 8, seed=3))  # the lane wraps: the old slots now hold new steps
    rb.extend(make_batch(1, 1, seed=4))
    ready = rb._ready[stale]
    rb.update_priority(stale, torch.tensor([100.0, 100.0]))
    for i, slot in enumerate(stale.tolist()):
        if not ready[i]:
            assert rb.sampler.tree_values(torch.tensor([slot])).item() == 0.0
    with pytest.raises(ValueError, match="finite"):
        rb.update_priority(rb.sampleable_index()[:1], torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="priorities for"):
        rb.update_priority(rb.sampleable_index()[:2], torch.ones(3))


def test_uniform_sampling(tmp_path):
    rb = make_rb(tmp_path, prioritized=False, E=1, capacity=32)
    rb.extend(make_batch(1, 10))
    index = rb.sampleable_index()
    rb.update_priority(index, torch.arange(8.0))  # ignored: uniform
    batch = rb.sample(20_000)
    assert torch.equal(batch[keys.WEIGHT], torch.ones(20_000))
    counts = torch.bincount(batch["index"], minlength=rb.capacity)[index].double()
    assert torch.allclose(
        counts / counts.sum(), torch.full((8,), 1 / 8, dtype=torch.double), atol=0.015
    )
    assert set(batch["index"].tolist()) == set(index.tolist())


# ---------------------------------------------------------------- layouts and modes


def test_collector_layouts_are_equivalent(tmp_path):
    data = make_batch(3, 6, end_every=4)
    a = make_rb(tmp_path / "a", E=3, capacity=60)
    a.extend(data)
    b = make_rb(tmp_path / "b", E=3, capacity=60)
    for t in range(6):  # one vector step at a time: batch [num_envs]
        b.extend(data[:, t])
    assert torch.equal(a.sampleable_index(), b.sampleable_index())
    assert_same(a.gather(a.sampleable_index()), b.gather(b.sampleable_index()))
    c = make_rb(tmp_path / "c", E=1, capacity=20)
    c.extend(data[0])  # [T] with a single env
    assert torch.equal(c.sampleable_index(), a.sampleable_index()[a.sampleable_index() < 20])


def test_without_embeddings(tmp_path):
    rb = make_rb(tmp_path, embedding_key=None)
    data = make_batch(2, 8, end_every=3).exclude("rise_embedding", ("next", "rise_embedding"))
    rb.extend(data)
    batch = rb.sample()
    assert batch.get("rise_context", None) is None
    assert ("next", "rise_context") not in batch.keys(True)
    assert batch["pixels"].shape == (8, 2, 3, 3)
    assert rb.storage._storage.get("embedding", None) is None
    rb0 = make_rb(tmp_path / "k0", context_length=0)
    assert not rb0.use_embeddings
    assert rb0.nbytes_per_transition == rb.nbytes_per_transition


def test_reward_clip_and_truncation_bootstraps(tmp_path):
    rb = make_rb(tmp_path, E=1, capacity=32, reward_clip=1.0, n_step=3, gamma=0.5)
    data = make_batch(1, 4)
    data["next", "reward"] = torch.tensor([5.0, -5.0, 0.25, 1.0]).view(1, 4, 1)
    data["next", "truncated"][0, 1] = True  # episode 1: steps 0-1 (truncated), episode 2: 2-3
    data["next", "done"][0, 1] = True
    rb.extend(data)
    got = rb.gather(torch.tensor([0, 1]))
    assert got["next", "reward"].view(-1).tolist() == [1.0 - 0.5, -1.0]
    assert got["next", "discount"].view(-1).tolist() == [0.25, 0.5]  # truncation bootstraps
    assert got["next", "truncated"].all() and not got["next", "terminated"].any()
    assert got["steps_to_next_obs"].view(-1).tolist() == [2, 1]
    # the bootstrap frame of a truncated episode is the final observation, stored once
    final = data["next", "pixels"][0, 1, -1]
    assert torch.equal(got["next", "pixels"][0, -1], final)


def test_footprint_is_independent_of_context_length(tmp_path):
    sizes = {
        k: RiseReplayBuffer(
            2**20, 64, embedding_dim=512, context_length=k, scratch_dir=tmp_path / str(k)
        ).nbytes_per_transition
        for k in (1, 20, 80, 160)
    }
    assert len(set(sizes.values())) == 1
    assert sizes[80] <= 9500  # Atari: 84x84 uint8 frame + 512-d fp16 embedding + bookkeeping


# ---------------------------------------------------------------- errors


def test_disk_space_is_checked_up_front(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(scratch_module.shutil, "disk_usage", lambda _: usage(10**9, 0, 10**6))
    with pytest.raises(InsufficientDiskSpaceError, match="GiB") as err:
        RiseReplayBuffer(2**20, 64, scratch_dir=tmp_path / "rb")
    assert "scratch_dir" in str(err.value)
    RiseReplayBuffer(64, 1, frame_shape=(1, 8, 8), embedding_dim=8, scratch_dir=tmp_path / "ok")


def test_bad_inputs_are_explained(tmp_path):
    rb = make_rb(tmp_path)
    with pytest.raises(ValueError, match=r"\[num_envs, T\]"):
        rb.extend(make_batch(3, 4))
    with pytest.raises(ValueError, match="1-d batch"):
        rb.extend(make_batch(2, 4).reshape(-1))
    bad = make_batch(2, 4)
    bad["pixels"] = bad["pixels"].float()
    with pytest.raises(TypeError, match="uint8"):
        rb.extend(bad)
    with pytest.raises(ValueError, match="S \\* C, H, W"):
        rb.extend(make_batch(2, 4, S=3))
    with pytest.raises(ValueError, match="embedding_dim"):
        rb.extend(make_batch(2, 4, D=5))
    with pytest.raises(KeyError, match="action"):
        rb.extend(make_batch(2, 4).exclude("action"))
    onehot = make_batch(2, 4)
    onehot["action"] = torch.zeros(2, 4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="one-hot"):
        rb.extend(onehot)
    with pytest.raises(ValueError, match="extend in shorter chunks"):
        rb.extend(make_batch(2, 40))
    with pytest.raises(RuntimeError, match="no transition is ready"):
        rb.sample()
    with pytest.raises(ValueError, match="at least"):
        make_rb(tmp_path, capacity=8)
    with pytest.raises(ValueError, match="frame_shape"):
        make_rb(tmp_path, frame_shape=(84, 84))
    rb.extend(make_batch(2, 6))
    with pytest.raises(IndexError, match="sampleable"):
        rb.gather(torch.tensor([5]))  # the newest steps wait for their n-step future
