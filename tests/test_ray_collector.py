"""The Ray collector backend (issue 15) and the adapter that gives multi-worker collectors the loop's
contract: ``[num_envs, T]`` batches with row ``i`` always env ``i``, weights pushed every
``collector.weight_sync_interval`` update batches, counters as exact as the direct backend's.

The Ray tests run a local cluster (2 CPUs, no dashboard) and skip when ray is not installed.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from torch import nn

from tests.helpers import CONFIG_DIR
from torchrl_rise.training import ConfigError, Trainer, load_config
from torchrl_rise.training.builders import EnvFactory, build_collector, build_components
from torchrl_rise.training.collectors import LaneOrderedCollector, WeightMirror, acting_copy

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install ray)")

# The memory env with noise distractors: every lane's frames differ (its own generator) and do
# not depend on the actions, so a lane's stream identifies its env.
TINY = [
    "preset=tiny",
    "env.env_id=cue-L6",
    "env.frame_size=16",
    "+env.kwargs.distractor=noise",
    "replay.learning_starts=64",
    "eval.episodes=1",
    "eval.num_envs=1",
]


def make_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="memory", overrides=[*TINY, f"logging.root={tmp_path}", *overrides]
        )


def expected_updates(cfg, env_steps: int) -> int:
    """What the loop owes after ``env_steps``: ``updates_per_vector_step`` per vector step once
    ``learning_starts`` transitions are in (the credit is accumulated per collector batch)."""
    per_batch = cfg.env.num_envs * cfg.collector.steps_per_batch
    credit, updates = 0.0, 0
    for k in range(1, env_steps // per_batch + 1):
        if k * per_batch >= cfg.replay.learning_starts:
            credit += cfg.collector.steps_per_batch * cfg.optim.updates_per_vector_step
            updates += int(credit)
            credit -= int(credit)
    return updates


# ------------------------------------------------------------------------ the adapter, no Ray


class _FakeCollector:
    """Yields Ray-shaped batches [workers, envs per worker, T] whose "lane" entry is the env id."""

    def __init__(self, workers: int, per_worker: int, steps: int, *, batches: int = 2):
        self.shape = (workers, per_worker, steps)
        self.batches = batches
        self.pushes = 0
        self.closed = False

    def __iter__(self):
        w, e, t = self.shape
        for k in range(self.batches):
            lane = torch.arange(w * e).view(w, e, 1).expand(w, e, t)
            time = (torch.arange(t) + k * t).expand(w, e, t)
            yield TensorDict({"lane": lane, "time": time}, batch_size=[w, e, t])

    def update_policy_weights_(self):
        self.pushes += 1

    def shutdown(self):
        self.closed = True

    def state_dict(self):
        return {"fake": 1}


def test_adapter_flattens_worker_major_so_row_i_is_env_i():
    collector = LaneOrderedCollector(_FakeCollector(3, 2, 4), num_envs=6)
    batches = list(collector)
    assert len(batches) == 2
    for k, batch in enumerate(batches):
        assert batch.batch_size == torch.Size([6, 4])
        assert batch["lane"].tolist() == [[i] * 4 for i in range(6)]
        assert batch["time"][0].tolist() == list(range(4 * k, 4 * k + 4))
    assert collector.state_dict() == {"fake": 1}  # anything else goes to the wrapped collector
    collector.shutdown()
    assert collector.collector.closed


def test_adapter_rejects_a_batch_that_is_not_one_row_per_env():
    collector = LaneOrderedCollector(_FakeCollector(2, 2, 3), num_envs=8)
    with pytest.raises(RuntimeError, match=r"shape \(4, 3\).*num_envs=8"):
        next(iter(collector))


@pytest.mark.parametrize("interval", [1, 3])
def test_adapter_pushes_weights_every_interval_requests(interval):
    fake = _FakeCollector(2, 2, 1)
    collector = LaneOrderedCollector(fake, num_envs=4, weight_sync_interval=interval)
    pushed = [collector.update_policy_weights_() for _ in range(7)]
    assert pushed == [(k + 1) % interval == 0 for k in range(7)]
    assert fake.pushes == collector.weight_pushes == 7 // interval


def test_adapter_copies_the_learner_weights_into_the_remote_copy_before_pushing():
    learner = nn.Sequential(nn.Linear(3, 2))
    learner[0].register_buffer("eps", torch.ones(()))
    remote = nn.Sequential(nn.Linear(3, 2))
    remote[0].register_buffer("eps", torch.ones(()))
    seen = []

    class Recording(_FakeCollector):
        def update_policy_weights_(self):
            seen.append(TensorDict.from_module(remote).data.clone())

    collector = LaneOrderedCollector(
        Recording(1, 1, 1), num_envs=1, policy=learner, remote_policy=remote
    )
    with torch.no_grad():
        learner[0].weight.add_(1.0)
        learner[0].eps.fill_(0.25)
    assert collector.update_policy_weights_()
    expected = TensorDict.from_module(learner).data
    assert (seen[0] == expected).all()
    assert float(remote[0].eps) == 0.25


def test_acting_copy_bakes_spectral_norm_and_the_mirror_follows_the_learner():
    from torch.nn.utils.parametrizations import spectral_norm

    learner = nn.Sequential(spectral_norm(nn.Linear(5, 4)), nn.ReLU(), nn.Linear(4, 2))
    learner(torch.randn(3, 5))  # a training-mode forward: one power iteration
    with pytest.raises(RuntimeError, match="parametrized modules"):
        pickle.dumps(learner)
    worker = pickle.loads(pickle.dumps(acting_copy(learner)))
    assert "0.weight" in dict(worker.named_parameters())
    x = torch.randn(6, 5)

    def evaluated(module):
        module.eval()
        try:
            return module(x)
        finally:
            module.train()

    torch.testing.assert_close(worker(x), evaluated(learner))
    mirror = WeightMirror(learner, worker)
    with torch.no_grad():
        learner[0].parametrizations.weight.original.mul_(3.0)
        learner[2].bias.add_(1.0)
    u = learner[0].parametrizations.weight[0]._u.clone()
    mirror.copy_()
    torch.testing.assert_close(worker(x), evaluated(learner))
    assert torch.equal(learner[0].parametrizations.weight[0]._u, u)  # no power iteration
    assert learner[0].parametrizations.weight.training  # modes restored
    with pytest.raises(ValueError, match="no counterpart"):
        WeightMirror(nn.Linear(5, 4), nn.Sequential(nn.Linear(5, 4)))


def test_adapter_rejects_bad_options():
    with pytest.raises(ValueError, match="weight_sync_interval must be an integer >= 1"):
        LaneOrderedCollector(_FakeCollector(1, 1, 1), num_envs=1, weight_sync_interval=0)
    with pytest.raises(ValueError, match="remote_policy needs policy"):
        LaneOrderedCollector(_FakeCollector(1, 1, 1), num_envs=1, remote_policy=nn.Linear(1, 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["collector.weight_sync_interval=0"], "collector.weight_sync_interval must be > 0"),
        (["collector.weight_sync_interval=4"], "has no effect with collector.backend=direct"),
    ],
)
def test_weight_sync_interval_is_validated(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(make_cfg(tmp_path, *overrides))


def test_ray_backend_without_ray_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    cfg = load_config(make_cfg(tmp_path, "collector.backend=ray", "collector.num_workers=2"))
    with pytest.raises(ConfigError, match="pip install ray"):
        build_collector(cfg, seed=0, encoder=None, policy=nn.Linear(1, 1))


# ------------------------------------------------------------------------ a local Ray cluster


def _reference_lanes(cfg, *, seed: int, batches: int) -> torch.Tensor:
    """Each worker's envs stepped in this process (random actions): [batches, num_envs, ...]."""
    from torchrl.collectors import Collector
    from torchrl.envs.utils import RandomPolicy

    per_worker = cfg.env.num_envs // cfg.collector.num_workers
    lanes = []
    for w in range(cfg.collector.num_workers):
        factory = EnvFactory(cfg, num_envs=per_worker, seed=seed + w * per_worker)
        env = factory.make_base()
        policy = RandomPolicy(env.full_action_spec[env.action_key])
        env.close()
        collector = Collector(
            factory,
            policy,
            frames_per_batch=per_worker * cfg.collector.steps_per_batch,
            total_frames=per_worker * cfg.collector.steps_per_batch * batches,
            auto_register_policy_transforms=False,
        )
        lanes.append(torch.stack([b.get(("next", "pixels")).clone() for b in collector]))
        collector.shutdown()
    return torch.cat(lanes, dim=1)


@needs_ray
def test_ray_collector_keeps_env_lanes_and_pushes_weights_every_interval(tmp_path, ray_cluster):
    cfg = load_config(
        make_cfg(
            tmp_path,
            "method=rise",
            "collector.backend=ray",
            "collector.num_workers=2",
            "collector.steps_per_batch=2",
            "collector.weight_sync_interval=2",
            "network.kwargs.spectral_norm=true",  # BTR's default: not picklable as it is
        )
    )
    comps = build_components(cfg, scratch_dir=tmp_path / "scratch")
    collector = build_collector(cfg, seed=11, encoder=comps.encoder, policy=comps.actor)
    try:
        assert isinstance(collector, LaneOrderedCollector)
        got = []
        for batch in collector:
            # RiseContextTransform ran in the remote envs; its [K, D] windows, which the replay
            # does not read, stayed there.
            assert batch.batch_size == torch.Size([4, 2])
            emb = comps.encoder_info["embedding_dim"]
            assert batch.get("rise_embedding").shape == (4, 2, emb)
            assert "rise_context" not in batch.keys()  # noqa: SIM118 (TensorDict keys)
            assert "rise_context" not in batch["next"].keys()  # noqa: SIM118
            assert "rise_gate" not in batch.keys()  # noqa: SIM118 (acting diagnostics)
            got.append(batch.get(("next", "pixels")).clone())
            if len(got) == 6:
                break
        got = torch.stack(got)
        assert got.float().std() > 0  # noise frames: lanes are distinguishable
        expected = _reference_lanes(cfg, seed=11, batches=6)
        for lane in range(4):
            for other in range(4):
                same = torch.equal(got[:, lane], expected[:, other])
                assert same == (lane == other), (lane, other)

        def remote_weights(worker: int) -> TensorDict:
            return TensorDict.from_module(collector.get_distant_attr("policy")[worker]).data

        # The workers act with acting_copy(actor) (spectral norm baked), kept as the learner's.
        sent = TensorDict.from_module(collector.remote_policy).data
        assert (remote_weights(0) == sent).all()  # the workers start from the learner's weights
        with torch.no_grad():
            comps.actor.module[-1].eps.fill_(0.125)
            for param in comps.net.parameters():
                param.add_(0.5)
        assert not collector.update_policy_weights_()  # 1st request of 2: nothing sent
        assert float(remote_weights(1)["module", "2", "eps"]) != 0.125
        before = sent.clone()
        assert collector.update_policy_weights_()
        assert float(sent["module", "2", "eps"]) == 0.125
        changed = [k for k, v in sent.items(True, True) if not torch.equal(v, before.get(k))]
        assert len(changed) > 10  # every weight moved, baked spectral-norm ones included
        for worker in (0, 1):
            assert (remote_weights(worker) == sent).all(), worker
    finally:
        collector.shutdown()


def _counters(trainer: Trainer) -> dict[str, int]:
    c = trainer.counters
    return {
        "frames": c.frames,
        "env_steps": c.env_steps,
        "updates": c.updates,
        "episodes": c.episodes,
        "replay": len(trainer.components.replay),
    }


@needs_ray
def test_ray_training_counts_like_direct_and_resumes(tmp_path, ray_cluster):
    ray_opts = ["collector.backend=ray", "collector.num_workers=2"]
    direct = Trainer(make_cfg(tmp_path / "direct", "total_frames=256"))
    direct.run()
    first = Trainer(make_cfg(tmp_path / "ray", "total_frames=256", *ray_opts))
    summary = first.run()
    assert summary["status"] == "finished" and summary["frames"] == 256
    counts = _counters(first)
    cfg = first.cfg
    assert counts["frames"] == counts["env_steps"] == 256  # memory env: frame skip 1
    assert counts["updates"] == expected_updates(cfg, 256) > 0
    assert counts["episodes"] == cfg.env.num_envs * (256 // cfg.env.num_envs // 7)  # L=6: 7 steps
    assert counts == _counters(direct)  # same frames, updates, episodes and replay size

    # Stop (the run above ended at its budget), then go on with resume=true.
    more = Trainer(make_cfg(tmp_path / "ray", "total_frames=512", "resume=true", *ray_opts))
    summary = more.run()
    assert more.run_dir == first.run_dir and summary["status"] == "finished"
    counts = _counters(more)
    assert counts["frames"] == counts["env_steps"] == 512
    assert counts["updates"] == expected_updates(cfg, 512) == summary["updates"]
    assert counts["episodes"] > _counters(first)["episodes"]
    assert counts["replay"] > _counters(first)["replay"]
    train_rows = (more.run_dir / "train.csv").read_text().splitlines()[1:]
    frames = [int(row.split(",")[0]) for row in train_rows]
    assert frames == sorted(frames) and frames[-1] == 512 and 256 in frames


@needs_ray
@pytest.mark.slow
def test_ray_training_long_fractional_ratio_and_sparse_weight_sync(tmp_path, ray_cluster):
    opts = [
        "total_frames=4096",
        "collector.steps_per_batch=2",
        "optim.updates_per_vector_step=0.5",
        "replay.learning_starts=256",
    ]
    direct = Trainer(make_cfg(tmp_path / "direct", *opts))
    direct.run()
    ray_run = Trainer(
        make_cfg(
            tmp_path / "ray",
            *opts,
            "collector.backend=ray",
            "collector.num_workers=2",
            "collector.weight_sync_interval=5",
        )
    )
    summary = ray_run.run()
    assert summary["status"] == "finished"
    counts = _counters(ray_run)
    assert counts == _counters(direct)
    assert counts["frames"] == 4096
    assert counts["updates"] == expected_updates(ray_run.cfg, 4096) > 0


def test_multi_sync_workers_act_with_the_pushed_weights(tmp_path):
    # BTR's spectral norm made the spawned workers' policy unpicklable; they now get acting_copy,
    # and the pushes reach it.
    cfg = load_config(
        make_cfg(
            tmp_path,
            "method=btr",
            "collector.backend=multi_sync",
            "collector.num_workers=2",
            "collector.steps_per_batch=4",
            "collector.weight_sync_interval=2",
            "network.kwargs.spectral_norm=true",
        )
    )
    comps = build_components(cfg, scratch_dir=tmp_path / "scratch")
    collector = build_collector(cfg, seed=3, encoder=comps.encoder, policy=comps.actor)
    try:
        batches = iter(collector)

        def actions(n: int = 2) -> torch.Tensor:
            return torch.cat([next(batches).get("action").reshape(-1) for _ in range(n)])

        assert actions().unique().numel() == 2  # eps = 1: uniformly random actions
        # A learner whose Q-values are all equal (head and biases zero; the spectral-normalised
        # convs keep their weights, W / sigma of zeros is undefined) and eps 0: always action 0.
        with torch.no_grad():
            for name, param in comps.net.named_parameters():
                if "parametrizations" not in name:
                    param.zero_()
            comps.actor.module[-1].eps.zero_()
        assert not collector.update_policy_weights_()  # 1st request of 2: nothing sent
        assert actions().unique().numel() == 2
        assert collector.update_policy_weights_()
        actions(1)  # a batch the workers may have started before the push
        assert actions().unique().tolist() == [0]
    finally:
        collector.shutdown()
