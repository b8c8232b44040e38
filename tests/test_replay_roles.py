"""The replay as roles: each part has one job and stays small; a TorchRL user adds a transform and
swaps the sampler."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.envs import ExcludeTransform

from tests.test_replay import make_rb as make_small_rb
from torchrl_rise import keys
from torchrl_rise.replay import Prefetcher, ReadinessSampler, RiseReplayBuffer, SequenceReplayBuffer
from torchrl_rise.replay.composition import ComposedReplay

REPLAY = Path(__file__).resolve().parents[1] / "torchrl_rise" / "replay"


def make_rb(tmp_path, **kwargs) -> RiseReplayBuffer:
    """tests/test_replay.py's small replay, on 4x4 frames."""
    options = dict(frame_shape=(1, 4, 4), gamma=0.997, seed=0, scratch_dir=tmp_path / "scratch")
    return make_small_rb(tmp_path, **{**options, **kwargs})


def make_batch(E: int, T: int, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    end = torch.rand(E, T, 1, generator=g) < 0.1
    pixels = torch.randint(0, 255, (E, T, 2, 4, 4), dtype=torch.uint8, generator=g)
    emb = torch.randn(E, T, 4, generator=g)
    return TensorDict(
        {
            "pixels": pixels,
            "rise_embedding": emb,
            "action": torch.randint(0, 3, (E, T), generator=g),
            ("next", "reward"): torch.randn(E, T, 1, generator=g),
            ("next", "terminated"): end,
            ("next", "truncated"): torch.zeros_like(end),
            ("next", "pixels"): pixels,
            ("next", "rise_embedding"): emb,
        },
        batch_size=[E, T],
    )


def test_every_replay_class_and_function_is_small():
    too_big = []
    for path in REPLAY.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - start + 1
                limit = 400 if isinstance(node, ast.ClassDef) else 80
                if size > limit:
                    too_big.append(f"{path.name}:{node.name} ({size} lines)")
    assert too_big == []


def test_both_buffers_compose_the_same_parts(tmp_path):
    rb = make_rb(tmp_path)
    seq = SequenceReplayBuffer(
        64, 1, frame_shape=(1, 4, 4), frame_stack=1, burn_in=1, learning_length=2, period=1,
        n_step=1, state_dim=2, scratch_dir=tmp_path / "seq",
    )  # fmt: skip
    for buffer in (rb, seq):
        assert isinstance(buffer, ComposedReplay)
        assert isinstance(buffer.sampler, Sampler)  # TorchRL's sampler interface
        assert buffer.readiness.sampler is buffer.sampler is buffer.snapshotter.sampler
        assert buffer.storage is buffer.step_storage.memmap
    assert type(rb.writer) is type(seq.writer)
    assert type(rb.readiness) is not type(seq.readiness)
    rb.close()
    seq.close()


def test_a_torchrl_transform_applies_to_sampled_batches(tmp_path):
    rb = make_rb(tmp_path)
    rb.extend(make_batch(2, 20))
    plain = rb.sample()
    assert rb.append_transform(ExcludeTransform(keys.STEPS_TO_NEXT)) is rb
    assert len(rb.transform) == 1
    assert keys.STEPS_TO_NEXT in plain
    assert keys.STEPS_TO_NEXT not in rb.sample()
    assert keys.STEPS_TO_NEXT not in rb.sample_async().result()
    with Prefetcher(rb, 4) as batches:
        assert keys.STEPS_TO_NEXT not in batches.next()
    assert keys.STEPS_TO_NEXT in rb.gather(rb.sampleable_index()[:2])  # not a sample
    rb.close()


class EveryOtherSlot(ReadinessSampler):
    """A drawing rule of a user's own: only even slots are ever drawn."""

    def mark_ready(self, index: torch.Tensor) -> None:
        super().mark_ready(index[index % 2 == 0])


def test_a_swapped_sampler_draws_the_batches(tmp_path):
    rb = make_rb(tmp_path, prioritized=False)
    rb.set_sampler(EveryOtherSlot(rb.capacity, 0.0, 0.0, generator=torch.Generator()))
    rb.extend(make_batch(2, 20))
    for _ in range(5):
        assert (rb.sample()[keys.INDEX] % 2 == 0).all()
    with pytest.raises(RuntimeError, match="before the first extend"):
        rb.set_sampler(ReadinessSampler(rb.capacity, 0.0, 0.0))
    with pytest.raises(TypeError, match="ReadinessSampler of 64 slots"):
        make_rb(tmp_path, scratch_dir=tmp_path / "b").set_sampler(ReadinessSampler(8, 0.0, 0.0))
    rb.close()
