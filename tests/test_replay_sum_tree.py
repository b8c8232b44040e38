"""The pure-torch segment trees against TorchRL's C++ ones, and the sampler on either tree."""

from __future__ import annotations

import pytest
import torch
from torchrl.data import LazyTensorStorage
from torchrl.data.replay_buffers.samplers import MinSegmentTreeFp32, SumSegmentTreeFp32

from torchrl_rise.replay import (
    ReadinessSampler,
    TorchMinTree,
    TorchSumTree,
    _torchrl_adapter,
)
from torchrl_rise.replay import sampler as sampler_module

native = pytest.mark.skipif(SumSegmentTreeFp32 is None, reason="TorchRL's C++ trees not built")


def _fill(size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    trees = (
        SumSegmentTreeFp32(size),
        TorchSumTree(size),
        MinSegmentTreeFp32(size),
        TorchMinTree(size),
    )
    for _ in range(4):
        index = torch.randint(0, size, (min(size, 40),), generator=g)  # repeats: the last wins
        value = torch.rand(index.numel(), generator=g) ** 3 * 10
        value[::5] = 0.0
        for tree in trees:
            tree[index] = value
    return trees


@native
@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 100, 1025])
def test_same_sums_minima_and_scans_as_torchrl(size):
    ref_sum, sum_tree, ref_min, min_tree = _fill(size, seed=size)
    every = torch.arange(size)
    assert torch.equal(torch.as_tensor(ref_sum[every]).reshape(-1), sum_tree[every])
    step = max(1, size // 6)
    for lo in range(0, size, step):
        for hi in range(lo + 1, size + 1, step):
            assert sum_tree.query(lo, hi) == float(ref_sum.query(lo, hi)), (lo, hi)
            assert min_tree.query(lo, hi) == float(ref_min.query(lo, hi)), (lo, hi)
    total = float(ref_sum.query(0, size))
    g = torch.Generator().manual_seed(1)
    prefix = torch.cumsum(torch.as_tensor(ref_sum[every]).reshape(-1), 0)
    # random masses, the exact prefix sums (ties at leaf edges), 0 and beyond the total
    mass = torch.cat(
        [
            torch.rand(3000, generator=g) * total * 1.05,
            prefix,
            torch.tensor([0.0, total, 2 * total]),
        ]
    ).float()
    want = torch.as_tensor(ref_sum.scan_lower_bound(mass)).long()
    assert torch.equal(sum_tree.scan_lower_bound(mass), want)


def test_rebuild_equals_incremental_updates():
    a, b = TorchSumTree(37), TorchSumTree(37)
    value = torch.rand(37)
    a[torch.arange(37)] = value
    b.set_all(value)
    assert torch.equal(a.values, b.values)
    with pytest.raises(IndexError, match="out of range"):
        a[torch.tensor([37])] = 1.0
    with pytest.raises(ValueError, match="2 values for 3 indices"):
        a[torch.arange(3)] = torch.ones(2)


def _sampler(tree: str, **kwargs):
    capacity = 50
    storage = LazyTensorStorage(capacity)
    storage.set(torch.arange(capacity), torch.zeros(capacity))
    s = ReadinessSampler(
        capacity, 0.5, 0.4, tree=tree, generator=torch.Generator().manual_seed(3), **kwargs
    )
    ready = torch.tensor([i for i in range(capacity) if i % 4])
    s.update_priority(ready, torch.linspace(0.01, 3.0, ready.numel()))
    s.mark_unready(torch.tensor([5, 6]))
    return s, storage


@native
@pytest.mark.parametrize("weights", ["btr", "torchrl"])
@pytest.mark.parametrize("stratified", [True, False])
def test_sampler_draws_the_same_slots_and_weights_on_either_tree(weights, stratified):
    a, storage = _sampler("torchrl", importance_weights=weights, stratified=stratified)
    b, _ = _sampler("torch", importance_weights=weights, stratified=stratified)
    assert (a.tree, b.tree) == ("torchrl", "torch")
    for _ in range(5):
        ia, wa = a.sample(storage, 64)
        ib, wb = b.sample(storage, 64)
        assert torch.equal(ia, ib)
        assert torch.equal(wa["priority_weight"], wb["priority_weight"])
        assert not ({0, 4, 5, 6} & set(ia.tolist()))
        new = torch.rand(64)
        a.update_priority(ia, new)
        b.update_priority(ib, new)
    assert a.default_priority == b.default_priority


def test_tree_option_auto_falls_back_to_torch_where_torchrl_does_not_load(monkeypatch):
    if _torchrl_adapter.native_trees() is not None:
        assert ReadinessSampler(8, 0.2, 0.4).tree == "torchrl"
    monkeypatch.setattr(_torchrl_adapter, "native_trees", lambda: None)
    assert sampler_module._torchrl_adapter.native_trees() is None
    auto = ReadinessSampler(8, 0.2, 0.4)
    assert auto.tree == "torch" and isinstance(auto._sum_tree, TorchSumTree)
    with pytest.raises(RuntimeError, match="tree='torch' or 'auto'"):
        ReadinessSampler(8, 0.2, 0.4, tree="torchrl")
    with pytest.raises(ValueError, match="tree must be one of"):
        ReadinessSampler(8, 0.2, 0.4, tree="numpy")


def test_torchrl_tree_is_cpu_only():
    if _torchrl_adapter.native_trees() is None:
        pytest.skip("TorchRL's C++ trees not built")
    with pytest.raises(ValueError, match="CPU only"):
        ReadinessSampler(8, 0.2, 0.4, tree="torchrl", device="meta")


@native
def test_buffer_samples_identically_on_both_trees_and_dumps_move_between_them(tmp_path):
    from tests.test_replay import make_batch, make_rb

    out = {}
    for tree in ("torchrl", "torch"):
        rb = make_rb(tmp_path, gamma=0.997, scratch_dir=tmp_path / tree, tree=tree)
        rb.extend(make_batch(2, 20, end_every=7))
        batches = []
        for _ in range(4):
            batch = rb.sample()
            batch["td_error"] = batch["index"].float() / 10
            rb.update_tensordict_priority(batch)
            batches.append(batch["index"])
        rb.dumps(tmp_path / f"dump-{tree}")
        out[tree] = (batches, rb)
    for a, b in zip(out["torchrl"][0], out["torch"][0]):
        assert torch.equal(a, b)
    # a dump written on one tree resumes on the other with the same draws
    rb_t, rb_c = out["torch"][1], out["torchrl"][1]
    rb_t.loads(tmp_path / "dump-torchrl")
    assert torch.equal(rb_t.sample()["index"], rb_c.sample()["index"])
    for _, rb in out.values():
        rb.close()
