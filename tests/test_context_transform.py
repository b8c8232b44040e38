"""RiseContextTransform: specs, embeddings, and the per-env window against a brute-force reference."""

from __future__ import annotations

import functools

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import Bounded, Categorical, Composite, LazyTensorStorage, ReplayBuffer, Unbounded
from torchrl.envs import (
    CatFrames,
    Compose,
    EnvBase,
    GrayScale,
    ParallelEnv,
    RenameTransform,
    Resize,
    SerialEnv,
    ToTensorImage,
    TransformedEnv,
    check_env_specs,
)
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import RandomPolicy

from torchrl_rise import keys
from torchrl_rise.encoders import FrozenEncoder, PixelPreprocessor, make_encoder
from torchrl_rise.transforms import RiseContextTransform

K = 4


def keys_done() -> tuple[str, ...]:
    return (keys.DONE, keys.TERMINATED, keys.TRUNCATED)


class FlickerEnv(EnvBase):
    """Random uint8 frames [4, 8, 8]; episodes end after a seeded random 1..6 steps, by
    termination or (every other episode) truncation, so batched copies reset at different times."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(batch_size=torch.Size([]))
        self.observation_spec = Composite(
            pixels=Bounded(0, 255, shape=(4, 8, 8), dtype=torch.uint8)
        )
        self.action_spec = Categorical(2)
        self.reward_spec = Unbounded(shape=(1,))
        self.full_done_spec = Composite(
            {key: Categorical(2, shape=(1,), dtype=torch.bool) for key in keys_done()}
        )
        self._set_seed(seed)

    def _set_seed(self, seed: int | None) -> None:
        self.generator = torch.Generator().manual_seed(int(seed or 0))
        self.episodes = 0

    def _frame(self) -> torch.Tensor:
        return torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8, generator=self.generator)

    def _flags(self, done: bool, truncate: bool) -> dict[str, torch.Tensor]:
        return {
            "done": torch.tensor([done]),
            "terminated": torch.tensor([done and not truncate]),
            "truncated": torch.tensor([done and truncate]),
        }

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        self.t = 0
        self.length = int(torch.randint(1, 7, (), generator=self.generator))
        self.episodes += 1
        return TensorDict({"pixels": self._frame(), **self._flags(False, False)}, [])

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.t += 1
        done = self.t >= self.length
        return TensorDict(
            {
                "pixels": self._frame(),
                "reward": torch.ones(1),
                **self._flags(done, self.episodes % 2 == 0),
            },
            [],
        )


def _encoder():
    return make_encoder("downsample", size=2)  # 4-d embeddings, distinct for every frame


def _transform(**kwargs) -> RiseContextTransform:
    return RiseContextTransform(_encoder(), context_length=K, **kwargs)


def _transformed_flicker(seed: int = 0) -> TransformedEnv:
    return TransformedEnv(FlickerEnv(seed), _transform())


def _reference_check(data: TensorDictBase, k: int = K) -> int:
    """Replays each env's trajectory and checks every window/mask; returns the number of ends.

    ``data`` is ``[*batch, T]``: consecutive steps of each env (as ``rollout`` or a collector give).
    """
    data = data.reshape(-1, data.shape[-1])
    encoder = _encoder()
    ends = 0
    for env_data in data.unbind(0):
        # embeddings are the encoder's output on the pixels, stored as float16
        torch.testing.assert_close(
            env_data[keys.EMBEDDING], encoder(env_data["pixels"]).half(), rtol=0, atol=0
        )
        torch.testing.assert_close(
            env_data["next", keys.EMBEDDING],
            encoder(env_data["next", "pixels"]).half(),
            rtol=0,
            atol=0,
        )
        history: list[torch.Tensor] = []
        for t in range(env_data.shape[0]):
            step = env_data[t]
            if t == 0 or bool(env_data[t - 1]["next", "done"]):
                history = [step[keys.EMBEDDING]]  # a new episode starts here
            else:
                assert torch.equal(step[keys.EMBEDDING], history[-1])
            for prefix, hist in (
                ((), history),
                (("next",), [*history, step["next", keys.EMBEDDING]]),
            ):
                window = torch.zeros(k, 4, dtype=torch.float16)
                mask = torch.zeros(k, dtype=torch.bool)
                recent = hist[-k:]
                if recent:
                    window[k - len(recent) :] = torch.stack(recent)
                    mask[k - len(recent) :] = True
                assert torch.equal(step[(*prefix, keys.CONTEXT)], window), (t, prefix)
                assert torch.equal(step[(*prefix, keys.CONTEXT_MASK)], mask), (t, prefix)
            history.append(step["next", keys.EMBEDDING])
            ends += int(step["next", "done"])
    return ends


def test_specs_on_the_mock_env() -> None:
    env = _transformed_flicker()
    check_env_specs(env, seed=0)
    spec = env.observation_spec
    assert spec[keys.EMBEDDING].shape == (4,) and spec[keys.EMBEDDING].dtype == torch.float16
    assert spec[keys.CONTEXT].shape == (K, 4) and spec[keys.CONTEXT].dtype == torch.float16
    assert spec[keys.CONTEXT_MASK].shape == (K,) and spec[keys.CONTEXT_MASK].dtype == torch.bool
    assert "pixels" in spec  # the pixels stay


def test_single_env_window_across_episode_ends() -> None:
    env = _transformed_flicker()
    data = env.rollout(40, break_when_any_done=False)
    assert _reference_check(data[None]) >= 5


def test_window_on_top_of_serial_env_with_partial_resets() -> None:
    env = TransformedEnv(
        SerialEnv(3, [functools.partial(FlickerEnv, seed=s) for s in range(3)]), _transform()
    )
    check_env_specs(env, seed=0)
    data = env.rollout(30, break_when_any_done=False)
    assert data.shape == (3, 30)
    done = data["next", "done"].squeeze(-1)
    # partial resets did happen: some steps end one env's episode but not all
    assert ((done.sum(0) > 0) & (done.sum(0) < 3)).any()
    assert _reference_check(data) >= 10


def test_window_inside_serial_env_workers() -> None:
    env = SerialEnv(2, [functools.partial(_transformed_flicker, seed=s) for s in range(2)])
    check_env_specs(env, seed=0)
    assert _reference_check(env.rollout(25, break_when_any_done=False)) >= 5


def test_window_on_top_of_parallel_env() -> None:
    env = TransformedEnv(
        ParallelEnv(
            2, [functools.partial(FlickerEnv, seed=s) for s in range(2)], mp_start_method="spawn"
        ),
        _transform(),
    )
    try:
        data = env.rollout(20, break_when_any_done=False)
        assert _reference_check(data) >= 4
    finally:
        env.close()


def test_window_in_a_collector_across_batches() -> None:
    env = TransformedEnv(
        SerialEnv(2, [functools.partial(FlickerEnv, seed=s) for s in range(2)]), _transform()
    )
    collector = Collector(env, RandomPolicy(env.action_spec), frames_per_batch=20, total_frames=60)
    batches = [batch.clone() for batch in collector]
    collector.shutdown()
    data = torch.cat(batches, dim=-1)  # consecutive batches continue each env's trajectory
    assert data.shape == (2, 30)
    assert _reference_check(data) >= 6


def test_explicit_reset_restarts_every_window() -> None:
    env = _transformed_flicker()
    env.rollout(5, break_when_any_done=False)
    td = env.reset()
    assert td[keys.CONTEXT_MASK].tolist() == [False] * (K - 1) + [True]
    assert torch.equal(td[keys.CONTEXT][-1], td[keys.EMBEDDING])
    assert not td[keys.CONTEXT][:-1].any()


def test_outputs_are_not_aliased_with_the_state() -> None:
    env = _transformed_flicker()
    td = env.reset()
    td[keys.CONTEXT].fill_(7)
    td[keys.EMBEDDING].fill_(7)
    td = env.rand_step(td)
    assert not (td["next", keys.CONTEXT] == 7).any()


def test_embed_only_mode_and_dtype() -> None:
    t = RiseContextTransform(_encoder(), embedding_dtype=torch.float32)
    env = TransformedEnv(FlickerEnv(), t)
    check_env_specs(env, seed=0)
    data = env.rollout(5, break_when_any_done=False)
    assert data[keys.EMBEDDING].dtype == torch.float32
    assert keys.CONTEXT not in data and keys.CONTEXT_MASK not in data
    assert torch.equal(data[keys.EMBEDDING], _encoder()(data["pixels"]))


def test_custom_keys() -> None:
    t = RiseContextTransform(
        _encoder(),
        in_keys=["obs"],
        out_keys=[("rise", "emb")],
        context_length=3,
        context_key=("rise", "ctx"),
        mask_key=("rise", "mask"),
    )
    env = TransformedEnv(
        FlickerEnv(), Compose(RenameTransform(["pixels"], ["obs"], create_copy=True), t)
    )
    check_env_specs(env, seed=0)
    data = env.rollout(4)
    assert data["rise", "ctx"].shape == (4, 3, 4) and data["rise", "mask"].shape == (4, 3)


def test_replay_buffer_transform_embeds_root_and_next() -> None:
    env = TransformedEnv(FlickerEnv(), _transform())
    data = env.rollout(12, break_when_any_done=False)
    stored = data.exclude(keys.EMBEDDING, keys.CONTEXT, keys.CONTEXT_MASK, "next")
    stored["next"] = data["next"].select("pixels", "done")
    rb = ReplayBuffer(
        storage=LazyTensorStorage(100),
        transform=RiseContextTransform(_encoder()),
        batch_size=12,
    )
    rb.extend(stored)
    assert keys.EMBEDDING not in rb.storage[:]  # stored without embeddings
    sample = rb.sample()
    encoder = _encoder()
    assert sample[keys.EMBEDDING].dtype == torch.float16
    assert torch.equal(sample[keys.EMBEDDING], encoder(sample["pixels"]).half())
    assert torch.equal(sample["next", keys.EMBEDDING], encoder(sample["next", "pixels"]).half())
    assert keys.CONTEXT not in sample
    # offline re-embedding with another encoder: a stored newest frame [1, H, W] is a stack of one
    other = RiseContextTransform(make_encoder("random_projection", embedding_dim=6))
    frames = TensorDict({"pixels": data["pixels"][:, -1:]}, [12])
    assert other(frames)[keys.EMBEDDING].shape == (12, 6)


def test_encoder_device_option_runs_encoder_elsewhere_and_returns_to_the_data_device() -> None:
    t = RiseContextTransform(_encoder(), encoder_device="meta")
    with pytest.raises(NotImplementedError):
        # the meta device cannot compute: proves the encoder really ran there
        t(TensorDict({"pixels": torch.zeros(2, 4, 8, 8, dtype=torch.uint8)}, [2]))
    assert t.encoder.device == torch.device("meta")


class _CountingEncoder(FrozenEncoder):
    """A frozen 1x1-conv encoder that records, per call, the batch it gets, whether autograd was
    off (inference mode), and the dtype/channels of what its device-side conversion receives."""

    def __init__(self) -> None:
        super().__init__(
            name="counting",
            embedding_dim=3,
            weights_source="test",
            preprocessor=PixelPreprocessor(frame_channels=1),
        )
        self.conv = torch.nn.Conv2d(1, 3, 1)
        self.freeze()
        self.calls: list[dict[str, object]] = []
        convert = self.preprocessor.convert_frames

        def recording(frames: torch.Tensor) -> torch.Tensor:
            self.calls.append(
                {"batch": frames.shape[0], "dtype": frames.dtype, "channels": frames.shape[1]}
            )
            return convert(frames)

        self.preprocessor.convert_frames = recording

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls[-1]["inference"] = torch.is_inference_mode_enabled()
        self.calls[-1]["grad"] = torch.is_grad_enabled()
        return self.conv(images).mean(dim=(-1, -2))


def test_one_encoder_call_per_step_covers_every_env() -> None:
    num_envs, steps = 3, 12
    encoder = _CountingEncoder()
    env = TransformedEnv(
        SerialEnv(num_envs, [functools.partial(FlickerEnv, seed=s) for s in range(num_envs)]),
        RiseContextTransform(encoder, context_length=K),
    )
    data = env.rollout(steps, break_when_any_done=False)
    # the rollout resets the envs that ended at every step but its last
    done = data["next", "done"].squeeze(-1)[:, :-1]
    ends, all_done = int(done.sum()), int(done.all(0).sum())
    assert ends > 0  # partial resets happened
    # the first reset and every step embed all envs in one call; a partial reset adds one call
    # for just the envs being reset (a full one embeds all of them)
    full = [c for c in encoder.calls if c["batch"] == num_envs]
    partial = [c for c in encoder.calls if c["batch"] != num_envs]
    assert len(full) == 1 + steps + all_done
    assert sum(c["batch"] for c in partial) == ends - num_envs * all_done
    # each call: the newest frame only, still uint8, autograd off in inference mode
    assert all(c["dtype"] == torch.uint8 and c["channels"] == 1 for c in encoder.calls)
    assert all(c["inference"] and not c["grad"] for c in encoder.calls)
    assert all(not p.requires_grad for p in encoder.parameters())
    # what the env writes is an ordinary tensor: the learner may backpropagate through its uses
    embedding = data[keys.EMBEDDING]
    assert not embedding.is_inference() and not embedding.requires_grad
    weight = torch.ones(3, requires_grad=True)
    (embedding.float() * weight).sum().backward()
    assert weight.grad is not None


def test_output_is_the_same_whichever_device_path_on_cpu() -> None:
    def run(**kwargs) -> TensorDictBase:
        env = TransformedEnv(
            SerialEnv(2, [functools.partial(FlickerEnv, seed=s) for s in range(2)]),
            RiseContextTransform(
                make_encoder("resnet18", weights="random"), context_length=K, **kwargs
            ),
        )
        env.set_seed(0)
        return env.rollout(6, break_when_any_done=False)

    default, pinned = run(), run(encoder_device="cpu")
    for key in (keys.EMBEDDING, keys.CONTEXT, keys.CONTEXT_MASK):
        assert torch.equal(default[key], pinned[key])
        assert torch.equal(default["next", key], pinned["next", key])
    assert default[keys.EMBEDDING].dtype == torch.float16


def test_int8_encoder_refuses_a_gpu_encoder_device() -> None:
    int8 = make_encoder("resnet18", weights="random", precision="int8", calibration_size=8)
    with pytest.raises(ValueError, match=r"int8 encoder runs on CPU only"):
        RiseContextTransform(int8, encoder_device="meta")
    t = RiseContextTransform(int8, encoder_device="cpu", context_length=K)
    data = TransformedEnv(FlickerEnv(), t).rollout(3)
    assert data[keys.EMBEDDING].shape == (3, 512) and t.encoder.device == torch.device("cpu")


def test_bad_configuration_errors() -> None:
    with pytest.raises(TypeError, match=r"needs a FrozenEncoder"):
        RiseContextTransform(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"one pixels key"):
        RiseContextTransform(_encoder(), in_keys=["a", "b"], out_keys=["c", "d"])
    with pytest.raises(ValueError, match=r"context_length must be a positive int"):
        RiseContextTransform(_encoder(), context_length=0)
    with pytest.raises(TypeError, match=r"floating torch.dtype"):
        RiseContextTransform(_encoder(), embedding_dtype=torch.int8)
    with pytest.raises(KeyError, match=r"no 'frames' entry"):
        TransformedEnv(FlickerEnv(), RiseContextTransform(_encoder(), in_keys=["frames"])).reset()
    rgb = make_encoder("downsample", size=2, frame_channels=3)
    with pytest.raises(ValueError, match=r"not a multiple of the encoder's frame_channels=3"):
        TransformedEnv(FlickerEnv(), RiseContextTransform(rgb)).observation_spec
    t = _transform()
    with pytest.raises(RuntimeError, match=r"step before reset"):
        t._call(TensorDict({"pixels": torch.zeros(4, 8, 8, dtype=torch.uint8)}, []))


def test_describe_records_encoder_and_window() -> None:
    d = _transform(embedding_dtype=torch.bfloat16).describe()
    assert d["name"] == "downsample" and d["weights"] == "none (raw pixels)"
    assert d["context_length"] == K and d["embedding_dtype"] == "bfloat16"


@pytest.mark.atari
def test_real_atari_pong_specs_and_embeddings() -> None:
    base = GymEnv(
        "ALE/Pong-v5", frameskip=4, repeat_action_probability=0.0, categorical_action_encoding=True
    )
    env = TransformedEnv(
        base,
        Compose(
            ToTensorImage(from_int=False, dtype=torch.uint8, shape_tolerant=True),
            GrayScale(),
            Resize(84, 84),
            CatFrames(N=4, dim=-3, padding="same"),
        ),
    )
    encoder = make_encoder("resnet18", weights="random", seed=0)
    env.append_transform(RiseContextTransform(encoder, context_length=8))
    env.set_seed(0)
    check_env_specs(env, seed=0)
    data = env.rollout(12)
    assert data["pixels"].shape == (12, 4, 84, 84) and data["pixels"].dtype == torch.uint8
    assert data["action"].dtype == torch.int64 and data["action"].shape == (12,)
    assert data[keys.EMBEDDING].shape == (12, 512) and data[keys.EMBEDDING].dtype == torch.float16
    assert data[keys.CONTEXT].shape == (12, 8, 512)
    torch.testing.assert_close(
        data["next", keys.EMBEDDING].float(), encoder(data["next", "pixels"]), rtol=2e-3, atol=2e-3
    )
    # the episode goes on for 12 steps: the mask fills up one slot per step
    assert data[keys.CONTEXT_MASK].sum(-1).tolist() == [min(t + 1, 8) for t in range(12)]
    assert _reference_check_dims(data, k=8)
    env.close()


def _reference_check_dims(data: TensorDictBase, k: int) -> bool:
    """The window at t holds the embeddings of steps t-k+1..t (no episode end in ``data``)."""
    emb = data[keys.EMBEDDING]
    for t in range(data.shape[0]):
        n = min(t + 1, k)
        if not torch.equal(data[keys.CONTEXT][t, k - n :], emb[t + 1 - n : t + 1]):
            return False
    return True


def test_online_encoder_in_the_env_uses_the_current_weights() -> None:
    cnn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    encoder = make_encoder("online", module=cnn, embedding_dim=5, to_float=True)
    env = TransformedEnv(FlickerEnv(), RiseContextTransform(encoder, context_length=2))
    td = env.reset()
    with torch.no_grad():
        expected = cnn(td["pixels"].float().div(255)[None])[0].half()
    assert torch.equal(td[keys.EMBEDDING], expected)
    with torch.no_grad():
        cnn[1].weight.mul_(-1)  # "an optimizer step"
    td = env.rand_step(td)
    with torch.no_grad():
        expected = cnn(td["next", "pixels"].float().div(255)[None])[0].half()
    assert torch.equal(td["next", keys.EMBEDDING], expected)
    assert cnn[1].weight.requires_grad and not td["next", keys.CONTEXT].requires_grad
