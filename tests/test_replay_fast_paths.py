"""Sampling fast paths: one gather per window pair (views), reused output buffers, device-resident
storage, background prefetch. Contents are checked against the brute-force reference in
tests/test_replay_properties.py; these tests pin the mechanics."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.test_replay import assert_same, make_batch, make_rb
from torchrl_rise import keys
from torchrl_rise.replay import Prefetcher


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_both_windows_are_views_of_one_block_when_no_episode_ends(tmp_path):
    rb = make_rb(tmp_path, context_length=4)
    rb.extend(make_batch(2, 20))  # no episode end: m == n for every row
    batch = rb.sample()
    assert (batch["steps_to_next_obs"] == rb.n_step).all()
    for key in ("rise_context", "rise_context_mask", "pixels"):
        cur, nxt = batch[key], batch["next", key]
        assert _ptr(cur) == _ptr(nxt), key  # no second copy
        # the next window starts n rows (n frames of C channels for pixels) into the same block
        rows = rb.n_step * (rb.frame_shape[0] if key == "pixels" else 1)
        assert nxt.data_ptr() - cur.data_ptr() == rows * cur.stride(1) * cur.element_size()
    assert_same(batch, rb.gather(batch["index"]))


def test_rows_with_an_early_episode_end_get_their_own_next_window(tmp_path):
    rb = make_rb(tmp_path, context_length=4, n_step=3)
    rb.extend(make_batch(2, 24, end_every=5))
    index = rb.sampleable_index()
    batch = rb.gather(index)
    m = batch["steps_to_next_obs"].squeeze(-1)
    assert (m < 3).any() and (m == 3).any()
    assert _ptr(batch["rise_context"]) != _ptr(batch["next", "rise_context"])
    # the current windows are still views of the block (only the next ones were copied)
    assert not batch["rise_context"].is_contiguous()


def test_reused_buffers_stay_valid_until_the_second_next_sample(tmp_path):
    rb = make_rb(tmp_path, reuse_output=True)
    rb.extend(make_batch(2, 20, end_every=6))
    first = rb.sample()
    kept = first.clone()
    second = rb.sample()
    assert_same(first, kept)  # one more sample: still valid
    assert _ptr(first["rise_context"]) != _ptr(second["rise_context"])
    third = rb.sample()
    assert _ptr(third["rise_context"]) == _ptr(first["rise_context"])  # the ring came round
    fresh = make_rb(tmp_path / "fresh", reuse_output=False)
    fresh.extend(make_batch(2, 20, end_every=6))
    for want in (kept, second.clone(), third.clone()):
        assert_same(want, fresh.sample())  # same draws, same contents as allocated batches


def test_pin_memory_is_a_no_op_without_cuda(tmp_path):
    rb = make_rb(tmp_path, reuse_output=True, pin_memory=True)
    rb.extend(make_batch(2, 20))
    assert rb.pin_memory == torch.cuda.is_available()
    batch = rb.sample()
    assert batch["rise_context"].is_pinned() == torch.cuda.is_available()


@pytest.mark.parametrize("device_frames", [True, False])
def test_device_storage_samples_and_checkpoints_exactly(tmp_path, device_frames):
    dev = make_rb(tmp_path / "dev", storage_device="cpu", device_frames=device_frames)
    ref = make_rb(tmp_path / "ref")
    data = make_batch(2, 26, end_every=7)
    dev.extend(data)
    ref.extend(data)
    memmapped = {p.name for p in (tmp_path / "dev" / "storage").glob("*.memmap")}
    assert "embedding.memmap" not in memmapped
    assert ("frame.memmap" in memmapped) != device_frames
    for _ in range(3):
        assert_same(dev.sample(), ref.sample())
    stats = dev.dumps(tmp_path / "ckpt-dev")
    assert stats["files_written"] > 2
    # a device-resident dump loads into a memmap buffer and back, byte for byte
    mem = make_rb(tmp_path / "mem")
    mem.loads(tmp_path / "ckpt-dev")
    back = make_rb(tmp_path / "back", storage_device="cpu", device_frames=device_frames)
    mem.dumps(tmp_path / "ckpt-mem")
    back.loads(tmp_path / "ckpt-mem")
    for name in dev._fields:
        assert torch.equal(dev._fields[name], mem._fields[name]), name
        assert torch.equal(dev._fields[name], back._fields[name]), name
    assert_same(back.sample(), dev.sample())


def _priority_loop(rb, batches, steps):
    seen = []
    for _ in range(steps):
        batch = batches()
        seen.append(batch["index"].clone())
        batch["td_error"] = batch["index"].float() % 7 + 0.1
        rb.update_tensordict_priority(batch)
    return seen


def test_prefetch_draws_each_batch_before_the_previous_update(tmp_path):
    data = make_batch(2, 28, end_every=9)
    pre = make_rb(tmp_path / "a")
    pre.extend(data)
    with Prefetcher(pre) as batches:
        got = _priority_loop(pre, batches.next, 6)
    # the documented order: draw k+1 happens when batch k is handed out, before update k
    manual = make_rb(tmp_path / "b")
    manual.extend(data)
    drawn = [manual.sample()]
    want = []
    for _ in range(6):
        drawn.append(manual.sample())
        batch = drawn.pop(0)
        want.append(batch["index"].clone())
        batch["td_error"] = batch["index"].float() % 7 + 0.1
        manual.update_tensordict_priority(batch)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # without prefetch each draw sees the previous update: exactly sample()'s sequence
    off = make_rb(tmp_path / "c")
    off.extend(data)
    plain = make_rb(tmp_path / "d")
    plain.extend(data)
    with Prefetcher(off, enabled=False) as batches:
        a = _priority_loop(off, batches.next, 6)
    b = _priority_loop(plain, plain.sample, 6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, got))  # the two orders differ


def test_prefetched_batch_stays_valid_until_the_next_call_and_is_deterministic(tmp_path):
    runs = []
    for k in range(2):
        rb = make_rb(tmp_path / str(k))
        rb.extend(make_batch(2, 28, end_every=9))
        with Prefetcher(rb, 8) as batches:
            out = []
            for _ in range(4):
                batch = batches.next()
                again = rb.gather(batch["index"])
                again[keys.WEIGHT] = batch[keys.WEIGHT]
                assert_same(batch, again)
                out.append(batch.clone())
        runs.append(out)
    for a, b in zip(*runs):
        assert_same(a, b)


def test_extend_waits_for_the_gather_in_flight(tmp_path, monkeypatch):
    rb = make_rb(tmp_path)
    rb.extend(make_batch(2, 20))
    started, release = threading.Event(), threading.Event()
    gather = rb._gather

    def slow_gather(*args):
        started.set()
        release.wait(5)
        return gather(*args)

    monkeypatch.setattr(rb, "_gather", slow_gather)
    future = rb.sample_async()
    started.wait(5)
    writer = threading.Thread(target=rb.extend, args=(make_batch(2, 20, seed=3),))
    writer.start()
    writer.join(0.2)
    assert writer.is_alive()  # blocked until the background gather is done
    release.set()
    writer.join(5)
    assert not writer.is_alive() and future.done()
    rb.close()


def test_a_subclass_with_the_two_argument_gather_still_samples_and_prefetches(tmp_path):
    from torchrl_rise.replay import RiseReplayBuffer

    class Legacy(
        RiseReplayBuffer
    ):  # written against _gather(index, weight), e.g. a sequence replay
        def _gather(self, index, weight):
            out = super()._gather(index, weight)
            out["legacy"] = torch.ones(index.numel())
            return out

    rb = make_rb(tmp_path, cls=Legacy, gamma=0.997, scratch_dir=tmp_path / "s", reuse_output=True)
    rb.extend(make_batch(2, 20))
    assert (rb.sample()["legacy"] == 1).all()
    with Prefetcher(rb) as batches:
        assert (batches.next()["legacy"] == 1).all()
        assert (batches.next()["legacy"] == 1).all()
    rb.close()
