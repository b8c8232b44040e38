"""The cue-memory diagnostic env: specs, reward logic, oracle vs frame-stack-only policies."""

from __future__ import annotations

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchrl_rise.envs import SUCCESS, describe_env, make_env
from torchrl_rise.envs.memory import CueMemoryEnv, parse_memory_id


def _episodes(env, policy, num_steps):
    """Run ``policy(td) -> action`` with auto-resets; return the stacked step tensordicts."""
    td = env.reset()
    out = []
    for _ in range(num_steps):
        td.set("action", policy(td))
        step, td = env.step_and_maybe_reset(td)
        out.append(step)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("num_envs", [1, 2])
@pytest.mark.parametrize("distractor", ["blank", "noise"])
def test_specs(num_envs, distractor):
    env = make_env("memory", "cue-L6", num_envs=num_envs, distractor=distractor)
    check_env_specs(env)
    assert env.batch_size == (num_envs,)
    info = describe_env(env)
    assert info.pixels_shape == (4, 32, 32)
    assert info.num_actions == 2 and info.success_key == SUCCESS
    assert info.max_episode_steps == 7


def test_id_and_option_parsing():
    assert parse_memory_id("cue-L20") == {"length": 20}
    assert parse_memory_id("cue-L7-N3") == {"length": 7, "num_cues": 3}
    env = make_env("memory", "cue-L7-N3", frame_size=(16, 24), grayscale=False, frame_stack=2)
    assert env.observation_spec["pixels"].shape == (1, 6, 16, 24)
    assert env.action_spec.space.n == 3
    # keyword options override the id
    assert describe_env(make_env("memory", "cue-L7", num_cues=5)).num_actions == 5


@pytest.mark.parametrize(
    ("env_id", "kwargs", "match"),
    [
        ("memory-20", {}, "cue-L<length>"),
        ("cue-L0", {}, "length must be a positive integer"),
        ("cue-L5-N1", {}, "num_cues must be an integer >= 2"),
        ("cue-L5-N8", {"frame_size": (8, 4)}, "cannot show 8 cue stripes"),
        ("cue-L5", {"distractor": "fog"}, "distractor must be one of"),
        ("cue-L5", {"backend": "parallel"}, "backend 'parallel' is not available"),
        ("cue-L5", {"num_envs": 0}, "num_envs must be a positive integer"),
        ("cue-L5", {"frame_stack": 0}, "frame_stack must be a positive integer"),
    ],
)
def test_bad_input(env_id, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_env("memory", env_id, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown option"):
        make_env("memory", "cue-L5", lenght=3)


@pytest.mark.parametrize("answer_right", [True, False])
def test_cue_decides_the_reward(answer_right):
    length, n = 5, 4
    env = CueMemoryEnv(8, length=length, num_cues=n, wrong_reward=-1.0, seed=3)
    td = env.reset()
    cue = env.cue
    action = cue if answer_right else (cue + 1) % n
    for t in range(length + 1):
        # Before the query any action, even the right one, earns 0 and does not end the episode.
        td.set("action", action)
        td = env.step(td)
        nxt = td["next"]
        if t < length:
            assert (nxt["reward"] == 0).all() and not nxt["done"].any()
            td = nxt.clone()
    assert nxt["terminated"].all()
    expected = 1.0 if answer_right else -1.0
    assert (nxt["reward"] == expected).all()
    assert bool(nxt[SUCCESS].all()) is answer_right


def test_cue_frames_are_distinct_and_decodable():
    env = CueMemoryEnv(64, length=3, num_cues=4, frame_size=(12, 20), seed=0)
    td = env.reset()
    assert torch.equal(env.decode_cue(td["pixels"]), env.cue)
    frames = env._cue_frames.flatten(1).float()
    assert (torch.cdist(frames, frames) + torch.eye(4) * 1e9).min() > 0
    # distractor and query frames differ from every cue frame
    for _ in range(3):
        td = env.step(env.rand_action(td))["next"]
        same = (td["pixels"].unsqueeze(1) == env._cue_frames.unsqueeze(0)).flatten(2).all(-1)
        assert not same.any()


def test_oracle_that_remembers_the_cue_always_succeeds():
    num_envs, length = 16, 12
    env = make_env("memory", f"cue-L{length}", num_envs=num_envs, seed=1, distractor="noise")
    base = env.base_env
    remembered = torch.zeros(num_envs, dtype=torch.long)

    def oracle(td):
        newest = td["pixels"][:, -1:]  # the newest frame of the stack
        first = td["episode_length"].view(-1) == 0
        remembered[first] = base.decode_cue(newest[first])
        return remembered.clone()

    steps = _episodes(env, oracle, 4 * (length + 1))
    done = steps["next", "done"].squeeze(-1)
    assert int(done.sum()) == 4 * num_envs
    assert steps["next", SUCCESS].squeeze(-1)[done].all()
    assert (steps["next", "episode_score"].squeeze(-1)[done] == 1).all()
    assert (steps["next", "episode_length"].squeeze(-1)[done] == length + 1).all()


def _stack_only_policy(base):
    """Best effort from the frame stack alone: decode a cue if one is in the stack, else guess."""
    guesser = torch.Generator().manual_seed(123)

    def policy(td):
        pixels = td["pixels"]
        frames = pixels.unflatten(1, (-1, base.channels))  # [B, S, C, H, W]
        stripes = frames.float().mean(dim=(2, 3))  # [B, S, W]
        # a cue frame lights exactly one stripe: some columns are 255 and the others 0
        is_cue = (stripes.amax(-1) == 255) & (stripes.amin(-1) == 0)
        decoded = base.decode_cue(frames)  # [B, S]
        guess = torch.randint(0, base.num_cues, (pixels.shape[0],), generator=guesser)
        has_cue = is_cue.any(1)
        first_cue = decoded.gather(1, is_cue.float().argmax(1, keepdim=True)).squeeze(1)
        return torch.where(has_cue, first_cue, guess)

    return policy


def test_frame_stack_alone_is_at_chance_when_the_cue_is_out_of_the_stack():
    num_envs, length, stack = 64, 8, 4
    env = make_env("memory", f"cue-L{length}", num_envs=num_envs, frame_stack=stack, seed=2)
    steps = _episodes(env, _stack_only_policy(env.base_env), 6 * (length + 1))
    done = steps["next", "done"].squeeze(-1)
    rate = steps["next", SUCCESS].squeeze(-1)[done].float().mean().item()
    n = int(done.sum())
    assert n == 6 * num_envs
    # 384 Bernoulli(0.5) episodes: 4.9 standard deviations either side of chance.
    assert abs(rate - 0.5) < 0.125, rate
    # Deterministic version: at the query the stack is the same whatever the cue was.
    query = steps["pixels"][done]
    assert (query == query[0]).all()


def test_the_same_policy_solves_it_when_the_cue_is_inside_the_stack():
    # Control for the test above: the stack-reading policy is not broken, the stack is too short.
    env = make_env("memory", "cue-L3", num_envs=32, frame_stack=4, seed=2)
    steps = _episodes(env, _stack_only_policy(env.base_env), 3 * 4)
    done = steps["next", "done"].squeeze(-1)
    assert steps["next", SUCCESS].squeeze(-1)[done].all()


def test_partial_reset_restarts_only_the_selected_envs():
    env = make_env("memory", "cue-L10", num_envs=3, seed=0, distractor="noise")
    td = env.reset()
    for _ in range(4):
        _, td = env.step_and_maybe_reset(env.rand_action(td))
    before = td.clone()
    td.set("_reset", torch.tensor([[False], [True], [False]]))
    after = env.reset(td)
    assert after["episode_length"].view(-1).tolist() == [4, 0, 4]
    assert torch.equal(after["pixels"][0], before["pixels"][0])
    assert torch.equal(after["pixels"][2], before["pixels"][2])
    # the reset env shows its cue in every slot of the stack (padding="same")
    newest = after["pixels"][1, -1]
    assert all(torch.equal(after["pixels"][1, k], newest) for k in range(4))
    assert newest.max() == 255
    # the other episodes still end on schedule, the reset one 4 steps later
    ends = []
    for t in range(12):
        step, after = env.step_and_maybe_reset(env.rand_action(after))
        ends += [(t, i) for i in step["next", "done"].view(-1).nonzero().view(-1).tolist()]
    assert ends == [(6, 0), (6, 2), (10, 1)]


def test_seeded_runs_are_identical():
    def run(seed):
        env = make_env("memory", "cue-L5", num_envs=4, seed=seed, distractor="noise")
        torch.manual_seed(0)
        return env.rollout(13, break_when_any_done=False)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["next", "pixels"], b["next", "pixels"])
    assert not torch.equal(a["next", "pixels"], c["next", "pixels"])


def test_reward_clipping_keeps_the_raw_score():
    env = make_env("memory", "cue-L2", num_envs=16, wrong_reward=-5.0, seed=0)
    steps = env.rollout(3, break_when_any_done=False)
    done = steps["next", "done"].squeeze(-1)[:, -1]
    assert done.all()
    wrong = ~steps["next", SUCCESS][:, -1, 0]
    assert wrong.any()
    assert (steps["next", "reward"][:, -1, 0][wrong] == -1).all()
    assert (steps["next", "episode_score"][:, -1, 0][wrong] == -5).all()
    raw = make_env("memory", "cue-L2", num_envs=16, wrong_reward=-5.0, seed=0, clip_rewards=False)
    steps = raw.rollout(3, break_when_any_done=False)
    wrong = ~steps["next", SUCCESS][:, -1, 0]
    assert (steps["next", "reward"][:, -1, 0][wrong] == -5).all()
