"""Env factories: shared transforms, make_env errors, and each suite (specs, episode boundaries)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import GymEnv
from torchrl.envs.utils import check_env_specs

from tests.helpers import SIMULATORS, mortar_mayhem_with_cue
from torchrl_rise._optional import MissingDependencyError
from torchrl_rise.envs import (
    EPISODE_LENGTH,
    EPISODE_SCORE,
    PixelPreprocess,
    describe_env,
    list_env_ids,
    make_env,
    standard_transforms,
)
from torchrl_rise.envs.common import frame_size_tuple


def _roll(env, steps, policy=None):
    """``steps`` steps with auto-resets (as a collector does); returns the stacked transitions."""
    td = env.reset()
    out = []
    for _ in range(steps):
        td = policy(td) if policy is not None else env.rand_action(td)
        step, td = env.step_and_maybe_reset(td)
        out.append(step)
    return torch.stack(out, dim=1)


def _check_boundaries(steps, channels):
    """At every done step the next step starts a new episode padded with its first frame."""
    done = steps["next", "done"].squeeze(-1)
    assert done.any(), "the test needs at least one episode end"
    for b, t in done[:, :-1].nonzero().tolist():
        first = steps["pixels"][b, t + 1]
        newest = first[-channels:]
        stack = first.unflatten(0, (-1, channels))
        assert all(torch.equal(frame, newest) for frame in stack)
        assert steps[EPISODE_LENGTH][b, t + 1].item() == 0
        assert steps[EPISODE_SCORE][b, t + 1].item() == 0
        # the done step's next frame is the old episode's, not the new one's
        assert steps["next", EPISODE_LENGTH][b, t].item() == steps[EPISODE_LENGTH][b, t].item() + 1


def _check_specs(env, **expected):
    """torchrl's spec check passes and ``describe_env`` reports ``expected``; closes ``env``."""
    try:
        check_env_specs(env)
        info = describe_env(env)
        assert {name: getattr(info, name) for name in expected} == expected
    finally:
        env.close()


@pytest.fixture(autouse=True)
def _needs_simulator(request):
    """A suite's tests (by their marker) skip where its simulator is not installed."""
    for mark, module in SIMULATORS.items():
        if request.node.get_closest_marker(mark) is not None:
            pytest.importorskip(module)


@pytest.mark.parametrize("num_envs", [1, 2])
@pytest.mark.parametrize(
    ("suite", "env_id", "expected"),
    [
        pytest.param(
            "vizdoom",
            "VizdoomBasic-v1",
            dict(pixels_shape=(12, 84, 84), num_actions=4, frame_skip=4),
            marks=pytest.mark.vizdoom,
        ),
        pytest.param(
            "procgen",
            "coinrun",
            dict(pixels_shape=(12, 64, 64), num_actions=15),
            marks=pytest.mark.procgen,
        ),
        pytest.param(
            "miniworld",
            "MiniWorld-Hallway-v0",
            dict(pixels_shape=(12, 60, 80), num_actions=3),
            marks=pytest.mark.miniworld,
        ),
        pytest.param(
            "memorygym",
            "MortarMayhem-Grid-v0",
            dict(pixels_shape=(12, 84, 84), num_actions=4, frame_skip=1),
            marks=pytest.mark.memorygym,
        ),
    ],
)
def test_suite_specs(suite, env_id, expected, num_envs):
    _check_specs(make_env(suite, env_id, num_envs=num_envs), **expected)


# ------------------------------------------------------------------------------------- common
def test_pixel_preprocess_layout_grayscale_and_area_resize():
    img = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    img[:, :2, :3] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # red top-left block
    t = PixelPreprocess(in_key="screen", channels_last=True, grayscale=True, size=(2, 2))
    out = t(TensorDict({"screen": img}, [2]))
    assert "screen" not in out
    px = out["pixels"]
    assert px.shape == (2, 1, 2, 2) and px.dtype == torch.uint8
    # area resize averages each 2x3 block; luma of pure red is 0.299 * 255
    assert px[0, 0].tolist() == [[round(0.299 * 255), 0], [0, 0]]
    rgb = PixelPreprocess(in_key="screen", channels_last=True, size=(8, 12))
    assert rgb(TensorDict({"screen": img}, [2]))["pixels"].shape == (2, 3, 8, 12)
    same = PixelPreprocess(in_key="pixels", channels_last=False)
    chw = torch.randint(0, 255, (2, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(same(TensorDict({"pixels": chw}, [2]))["pixels"], chw)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PixelPreprocess(in_key="x", channels_last=False)(
            TensorDict({"x": torch.zeros(2, 5, 4, 4)}, [2])
        )


def test_frame_size_validation():
    assert frame_size_tuple(84) == (84, 84)
    assert frame_size_tuple([60, 80]) == (60, 80)
    for bad in (0, (84,), (84, -1), "84x84"):
        with pytest.raises((ValueError, TypeError)):
            frame_size_tuple(bad)


def test_standard_transform_order():
    names = [type(t).__name__ for t in standard_transforms(frame_stack=1, clip_rewards=False)]
    assert names == ["RewardSum", "StepCounter"]


def test_reward_scale_scales_the_learning_reward_only():
    plain = make_env("memory", "cue-L2", num_envs=2, seed=3, clip_rewards=False)
    scaled = make_env("memory", "cue-L2", num_envs=2, seed=3, clip_rewards=False, reward_scale=0.5)
    torch.manual_seed(0)
    ref = plain.rollout(12, break_when_any_done=False)
    torch.manual_seed(0)
    out = scaled.rollout(12, break_when_any_done=False)
    assert torch.equal(ref["action"], out["action"])
    assert ref["next", "reward"].abs().sum() > 0
    torch.testing.assert_close(out["next", "reward"], 0.5 * ref["next", "reward"])
    assert torch.equal(out["next", EPISODE_SCORE], ref["next", EPISODE_SCORE])  # raw scores
    check_env_specs(scaled)
    with pytest.raises(ValueError, match="scale or clip the rewards, not both"):
        make_env("memory", "cue-L2", reward_scale=0.5)
    for bad in (0, -1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="reward_scale must be a positive number"):
            make_env("memory", "cue-L2", clip_rewards=False, reward_scale=bad)


def test_make_env_errors():
    with pytest.raises(ValueError, match=r"Unknown suite 'atary'.*'atari'"):
        make_env("atary", "pong")
    with pytest.raises(ValueError, match="env_id must be a non-empty string"):
        make_env("memory", "")
    with pytest.raises(TypeError, match="no EnvInfo"):
        describe_env(GymEnv("CartPole-v1"))


@pytest.mark.parametrize(
    ("suite", "module", "extra"),
    [
        ("vizdoom", "vizdoom", "vizdoom"),
        ("procgen", "procgen", "procgen"),
        ("miniworld", "miniworld", "miniworld"),
        ("memorygym", "memory_gym", "memorygym"),
    ],
)
def test_missing_optional_suite_names_the_extra(monkeypatch, suite, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf"torchrl_rise\[{extra}\]"):
        make_env(suite, "anything")


# -------------------------------------------------------------------------------------- atari
@pytest.mark.atari
class TestAtari:
    @pytest.mark.parametrize(("backend", "num_envs"), [("vector", 1), ("vector", 2), ("serial", 2)])
    def test_specs(self, backend, num_envs):
        env = make_env("atari", "ALE/Pong-v5", num_envs=num_envs, backend=backend)
        assert env.batch_size == (num_envs,)
        assert env.action_spec.dtype == torch.int64
        _check_specs(
            env,
            pixels_shape=(4, 84, 84),
            num_actions=6,
            frame_skip=4,
            max_episode_steps=27_000,
            backend=backend,
        )

    def test_ids(self):
        from torchrl_rise.envs.atari import rom_name

        assert rom_name("MsPacmanNoFrameskip-v4") == rom_name("ms_pacman") == "ms_pacman"
        assert "space_invaders" in list_env_ids("atari")
        with pytest.raises(ValueError, match=r"Unknown Atari env id 'Pongg'.*pong"):
            make_env("atari", "Pongg")
        with pytest.raises(ValueError, match="repeat_action_probability"):
            make_env("atari", "pong", repeat_action_probability=1.5)
        with pytest.raises(ValueError, match="backend 'gpu'"):
            make_env("atari", "pong", backend="gpu")

    @pytest.mark.parametrize("backend", ["vector", "serial"])
    def test_episode_boundaries_and_truncation(self, backend):
        # A 100-frame cap: at most 25 agent steps (ALE counts the no-op frames too).
        env = make_env("atari", "pong", num_envs=3, max_episode_frames=100, seed=1, backend=backend)
        steps = _roll(env, 40)
        _check_boundaries(steps, channels=1)
        done = steps["next", "done"].squeeze(-1)
        assert (steps["next", "truncated"].squeeze(-1) == done).all()
        assert not steps["next", "terminated"].any()
        lengths = steps["next", EPISODE_LENGTH].squeeze(-1)[done]
        assert (lengths <= 25).all()
        # the done step's final frame is not the next episode's first frame
        b, t = done[:, :-1].nonzero()[0].tolist()
        assert not torch.equal(steps["next", "pixels"][b, t, -1], steps["pixels"][b, t + 1, -1])
        if backend == "vector":
            assert not env.base_env._pending.any()  # pending first frames were handed out

    def test_partial_reset_of_a_running_episode(self):
        env = make_env("atari", "pong", num_envs=2, seed=0)
        td = env.reset()
        for _ in range(5):
            _, td = env.step_and_maybe_reset(env.rand_action(td))
        td.set("_reset", torch.tensor([[True], [False]]))
        out = env.reset(td)
        assert out[EPISODE_LENGTH].view(-1).tolist() == [0, 5]

    def test_seeded_runs_are_identical(self):
        def run(seed):
            env = make_env("atari", "breakout", num_envs=2, seed=seed)
            actions = torch.tensor([[1, 3]] * 30)
            td, frames = env.reset(), []
            for a in actions:
                td.set("action", a)
                step, td = env.step_and_maybe_reset(td)
                frames.append(step["next", "pixels"])
            env.close()
            return torch.stack(frames)

        assert torch.equal(run(3), run(3))

    def test_rgb_and_custom_size(self):
        env = make_env("atari", "pong", grayscale=False, frame_size=(64, 48), frame_stack=2)
        assert env.observation_spec["pixels"].shape == (1, 6, 64, 48)
        check_env_specs(env)


# ------------------------------------------------------------------------------------ vizdoom
@pytest.mark.vizdoom
class TestVizdoom:
    def test_time_limit_and_boundaries(self):
        env = make_env("vizdoom", "VizdoomBasic-v1", num_envs=2, max_episode_frames=40, seed=0)
        steps = _roll(env, 24)
        _check_boundaries(steps, channels=3)
        assert steps["next", EPISODE_LENGTH].max() <= 10
        env.close()

    def test_timeout_is_a_truncation_and_final_frame_is_real(self):
        import gymnasium

        from torchrl_rise.envs.vizdoom import VizdoomObservation

        class FakeDoom(gymnasium.Env):
            observation_space = gymnasium.spaces.Dict(
                screen=gymnasium.spaces.Box(0, 255, (2, 2, 3), np.uint8)
            )
            action_space = gymnasium.spaces.Discrete(2)

            def reset(self, **kwargs):
                self.t = 0
                return {"screen": np.full((2, 2, 3), 7, np.uint8)}, {}

            def step(self, action):
                self.t += 1
                timeout = self.t == 2
                screen = (
                    np.zeros((2, 2, 3), np.uint8) if timeout else np.full((2, 2, 3), 9, np.uint8)
                )
                return {"screen": screen}, 1.0, timeout, timeout, {}  # vizdoom 1.3 does this

        env = VizdoomObservation(FakeDoom())
        assert env.reset()[0].max() == 7
        assert env.step(0)[0].max() == 9
        screen, _, terminated, truncated, _ = env.step(0)
        assert (terminated, truncated) == (False, True)
        assert screen.max() == 9  # the last rendered frame, not vizdoom's black one

    def test_bad_ids(self):
        with pytest.raises(ValueError, match=r"Unknown ViZDoom env id 'Basic'.*VizdoomBasic-v1"):
            make_env("vizdoom", "Basic")
        with pytest.raises(ValueError, match="not available for suite 'vizdoom'"):
            make_env("vizdoom", "VizdoomBasic-v1", backend="vector")


# ------------------------------------------------------------------------------------ procgen
@pytest.mark.procgen
class TestProcgen:
    def test_levels_train_and_eval_are_disjoint(self):
        train = make_env("procgen", "coinrun", num_envs=8, seed=0)
        evaluation = make_env("procgen", "coinrun", num_envs=8, seed=0, eval_mode=True)
        assert describe_env(evaluation).eval_mode
        train.reset(), evaluation.reset()
        train_levels = [i["level_seed"] for i in train.base_env._gym3.get_info()]
        eval_levels = [i["level_seed"] for i in evaluation.base_env._gym3.get_info()]
        assert all(0 <= s < 200 for s in train_levels)
        assert all(s >= 200 for s in eval_levels)

    def test_episode_boundaries(self):
        env = make_env("procgen", "bigfish", num_envs=16, seed=0)
        steps = _roll(env, 120)
        _check_boundaries(steps, channels=3)
        done = steps["next", "done"].squeeze(-1)
        assert (steps["next", "terminated"].squeeze(-1) == done).all()
        # no final frame from gym3: the done step's next frame repeats the last one seen
        b, t = done.nonzero()[0].tolist()
        assert torch.equal(steps["next", "pixels"][b, t, -3:], steps["pixels"][b, t, -3:])

    def test_unsupported_requests(self):
        env = make_env("procgen", "coinrun", num_envs=2)
        td = env.reset()
        _, td = env.step_and_maybe_reset(env.rand_action(td))
        td.set("_reset", torch.tensor([[True], [False]]))
        with pytest.raises(RuntimeError, match="cannot restart the running episode"):
            env.reset(td)
        env.reset()  # a full reset of running episodes starts new games
        with pytest.raises(ValueError, match="max_episode_frames is not supported"):
            make_env("procgen", "coinrun", max_episode_frames=1000)
        with pytest.raises(ValueError, match="RGB 64x64 frames only"):
            make_env("procgen", "coinrun", frame_size=84)
        with pytest.raises(ValueError, match="Unknown Procgen env id 'CoinRun'"):
            make_env("procgen", "CoinRun")


# ---------------------------------------------------------------------------------- miniworld
@pytest.mark.miniworld
class TestMiniworld:
    def test_time_limit_and_boundaries(self):
        env = make_env("miniworld", "MiniWorld-Hallway-v0", num_envs=2, max_episode_frames=8)
        steps = _roll(env, 20)
        _check_boundaries(steps, channels=3)
        assert steps["next", EPISODE_LENGTH].max() <= 8
        env.close()

    def test_bad_id(self):
        with pytest.raises(ValueError, match="Unknown MiniWorld env id"):
            make_env("miniworld", "MiniWorld-Nowhere-v0")

    @pytest.mark.slow
    def test_parallel_backend_spawns_workers(self):
        env = make_env("miniworld", "MiniWorld-Hallway-v0", num_envs=2, backend="parallel")
        check_env_specs(env)
        env.close()


# ---------------------------------------------------------------------------------- memorygym
ONE_COMMAND = {
    "command_count": [1],
    "command_show_duration": [1],
    "command_show_delay": [6],
    "arena_size": 3,
    "allowed_commands": 4,
    "reward_command_success": 1.0,
}


@pytest.mark.memorygym
class TestMemoryGym:
    def test_ids(self):
        ids = list_env_ids("memorygym")
        assert {"MortarMayhem-Grid-v0", "MysteryPath-Grid-v0"} <= set(ids)
        assert all("Grid" in i for i in ids)  # the discrete-action variants only

    def test_envs_of_one_process_do_not_share_a_screen(self):
        """Envs of one process step in turn as each alone would, also after one was closed."""
        import gymnasium

        from torchrl_rise.envs.memorygym import MemoryGymScreen

        def make():
            return MemoryGymScreen(gymnasium.make("MortarMayhem-Grid-v0"), ONE_COMMAND)

        rng = np.random.default_rng(0)
        actions = rng.integers(0, 4, size=(2, 40))

        def run(env, seed, acts):
            frames = [env.reset(seed=seed)[0]]
            for a in acts:
                obs, _, terminated, truncated, _ = env.step(a)
                frames.append(obs)
                if terminated or truncated:
                    frames.append(env.reset()[0])
            return frames

        alone = []
        for seed in (0, 1):
            env = make()
            alone.append(run(env, seed, actions[seed]))
            env.close()  # leaves pygame working for the next env
        first, second, third = make(), make(), make()
        third.close()  # Memory Gym's own close() quits pygame for every env of the process
        together = [[first.reset(seed=0)[0]], [second.reset(seed=1)[0]]]
        for t in range(40):  # interleaved: the other env draws between two steps of one
            for i, env in enumerate((first, second)):
                obs, _, terminated, truncated, _ = env.step(actions[i, t])
                together[i].append(obs)
                if terminated or truncated:
                    together[i].append(env.reset()[0])
        for i in range(2):
            assert len(together[i]) == len(alone[i])
            assert all(np.array_equal(x, y) for x, y in zip(together[i], alone[i], strict=True))
        assert not np.array_equal(together[0][0], together[1][0])  # different seeds differ
        assert together[0][0].shape == (84, 84, 3) and together[0][0].dtype == np.uint8

    def test_reset_params_and_boundaries(self):
        env = make_env(
            "memorygym",
            "MortarMayhem-Grid-v0",
            num_envs=2,
            frame_size=42,
            grayscale=True,
            reset_params=ONE_COMMAND,
        )
        steps = _roll(env, 60)
        _check_boundaries(steps, channels=1)
        done = steps["next", "done"].squeeze(-1)
        # one command: every episode ends by the first check, within 1 + 6 + 6 + 1 steps
        assert steps["next", EPISODE_LENGTH][done].max() <= 14
        assert set(steps["next", EPISODE_SCORE][done].unique().tolist()) <= {0.0, 1.0}
        env.close()

    def test_crop_to_arena_keeps_the_native_pixels_of_the_arena(self):
        import gymnasium

        from torchrl_rise.envs.memorygym import MemoryGymScreen

        full = MemoryGymScreen(gymnasium.make("MortarMayhem-Grid-v0"), ONE_COMMAND)
        crop = MemoryGymScreen(
            gymnasium.make("MortarMayhem-Grid-v0"), ONE_COMMAND, crop_to_arena=True
        )
        assert crop.observation_space.shape == (42, 42, 3)  # 3x3 tiles of 14 pixels
        frames = [(full.reset(seed=4)[0], crop.reset(seed=4)[0])]
        for action in [0] * 7 + [1, 3, 2, 3]:
            frames.append((full.step(action)[0], crop.step(action)[0]))
        for whole, part in frames:
            assert np.array_equal(whole[21:63, 21:63], part)
            assert whole.sum() == part.sum()  # nothing but black outside the arena
        with pytest.raises(ValueError, match="moved the arena"):
            crop.reset(options={"arena_size": 5})
        env = make_env(
            "memorygym",
            "MortarMayhem-Grid-v0",
            frame_size=42,
            grayscale=True,
            reset_params=ONE_COMMAND,
            crop_to_arena=True,
        )
        check_env_specs(env)
        assert describe_env(env).pixels_shape == (4, 42, 42)
        env.close()

    def test_expose_cue_names_the_command_to_remember(self):
        import gymnasium

        from torchrl_rise.envs.memorygym import MemoryGymScreen

        screen = MemoryGymScreen(
            gymnasium.make("MortarMayhem-Grid-v0"), ONE_COMMAND, expose_cue=True
        )
        game = screen.env.unwrapped
        names = list(type(game)._generate_commands.__globals__["Command"].COMMANDS.items())
        for seed in range(6):
            _, info = screen.reset(seed=seed)
            _, (dx, dy) = names[int(info["cue"])]
            start = game.normalized_agent_position
            assert game._target_pos == (start[0] + dx, start[1] + dy)  # Memory Gym's own target
            assert int(screen.step(0)[4]["cue"]) == int(info["cue"])  # constant in the episode
        env = mortar_mayhem_with_cue(2, 21, ONE_COMMAND)
        check_env_specs(env)
        cues = env.rollout(20, break_when_any_done=False)["cue"]
        assert cues.dtype == torch.int64 and ((cues >= 0) & (cues < 4)).all()
        env.close()
        with pytest.raises(ValueError, match="no command to remember"):
            make_env("memorygym", "MysteryPath-Grid-v0", expose_cue=True)
        with pytest.raises(TypeError, match="expose_cue must be true or false"):
            make_env("memorygym", "MortarMayhem-Grid-v0", expose_cue=1)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="draws no arena"):
            make_env("memorygym", "MysteryPath-Grid-v0", crop_to_arena=True)
        with pytest.raises(TypeError, match="crop_to_arena must be true or false"):
            make_env("memorygym", "MortarMayhem-Grid-v0", crop_to_arena="yes")
        with pytest.raises(ValueError, match="Unknown Memory Gym env id"):
            make_env("memorygym", "MortarMayhem-v9")
        with pytest.raises(TypeError, match="reset_params must be a dict"):
            make_env("memorygym", "MortarMayhem-Grid-v0", reset_params=[1])
        with pytest.raises(TypeError, match="unknown option"):
            make_env("memorygym", "MortarMayhem-Grid-v0", command_count=1)


@pytest.mark.atari
@pytest.mark.slow
def test_atari_parallel_backend_spawns_workers():
    env = make_env("atari", "pong", num_envs=2, backend="parallel", seed=0)
    check_env_specs(env)
    steps = _roll(env, 5)
    assert steps["next", "pixels"].shape == (2, 5, 4, 84, 84)
    env.close()
