"""The TorchRL collector of a run (``collector.backend``: ``direct``, ``multi_sync``, ``ray``).

:func:`build_collector` is what the trainer calls (through ``Assembly.make_collector``) once it
holds the run directory; the wrappers it uses live in :mod:`torchrl_rise.training.collectors`.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from torchrl_rise._optional import import_optional
from torchrl_rise.training.config import ConfigError, TrainConfig
from torchrl_rise.training.env_factory import EnvFactory

__all__ = ["RAY_REMOTE_DEFAULT", "build_collector"]

logger = logging.getLogger(__name__)

# RayCollector stops once it has returned ``total_frames`` frames and, unlike TorchRL's other
# collectors, does not read -1 as "no limit" (it then returns nothing at all); the loop stops at
# cfg.total_frames itself.
_RAY_UNBOUNDED_FRAMES = 2**62
# Per-actor resources when collector.ray_remote is empty: collectors are CPU actors (TorchRL's own
# default asks every actor for a fifth of a GPU, which pins them to the learner's GPU node).
RAY_REMOTE_DEFAULT: dict[str, Any] = {"num_cpus": 1}


def build_collector(cfg: TrainConfig, *, seed: int, encoder: nn.Module | None, policy: nn.Module):
    """The TorchRL collector of ``cfg.collector.backend``; each batch is ``[num_envs, T]``.

    - ``direct``: :class:`torchrl.collectors.Collector` stepping all ``num_envs`` envs in-process
      (the training env shares ``encoder`` with the evaluation env; the policy is the learner's
      own module, so there are no weights to push).
    - ``multi_sync``: :class:`torchrl.collectors.MultiSyncCollector`, ``num_workers`` processes
      of ``num_envs / num_workers`` envs each; their batches are concatenated env-wise
      (``cat_results=0``) so row ``i`` is always env ``i`` (the replay keeps one lane per env).
    - ``ray``: :class:`torchrl.collectors.distributed.RayCollector` (``pip install ray``) with one
      remote :class:`~torchrl.collectors.Collector` per worker, in sync mode for the same reason;
      worker ``w`` steps envs ``w * E .. (w + 1) * E - 1`` (``E = num_envs / num_workers``).

    The two multi-worker backends are wrapped in
    :class:`~torchrl_rise.training.collectors.LaneOrderedCollector`, which flattens Ray's
    ``[workers, E, T]`` batches worker-major and pushes the weights on every
    ``collector.weight_sync_interval``-th request of the loop.

    ``T`` is ``collector.steps_per_batch`` (1: one vector step per batch, one update after it).

    ``collector.overlap=true`` (``direct`` only) wraps the collector, built around an
    :func:`~torchrl_rise.training.collectors.acting_copy` of ``policy`` on ``cfg.device``, in an
    :class:`~torchrl_rise.training.overlap.OverlappedCollector` that collects in a thread.
    """
    from torchrl_rise.training.collectors import LaneOrderedCollector, acting_copy

    co = cfg.collector
    frames_per_batch = cfg.env.num_envs * co.steps_per_batch
    common = dict(
        frames_per_batch=frames_per_batch,
        total_frames=-1,
        env_device="cpu",
        policy_device=cfg.device,
        storing_device="cpu",
        # the context window lives in the env (RiseContextTransform): no InitTracker/primer
        auto_register_policy_transforms=False,
    )
    if co.backend == "direct":
        from torchrl.collectors import Collector

        env_fn = EnvFactory(cfg, num_envs=cfg.env.num_envs, seed=seed, encoder=encoder)
        if not co.overlap:
            return Collector(env_fn, policy, track_traj_ids=False, **common)
        from torchrl_rise.training.overlap import OverlappedCollector

        # The thread acts with its own copy: the learner's module changes under the optimizer.
        acting = acting_copy(policy, device=cfg.device)
        inner = Collector(env_fn, acting, track_traj_ids=False, **common)
        return OverlappedCollector(inner, policy=policy, acting_policy=acting)
    per_worker = cfg.env.num_envs // co.num_workers
    env_fns = [
        EnvFactory(cfg, num_envs=per_worker, seed=seed + i * per_worker)
        for i in range(co.num_workers)
    ]
    if co.backend == "multi_sync":
        from torchrl.collectors import MultiSyncCollector

        # The workers are spawned: they get a picklable copy (spectral norm baked in).
        remote_policy = acting_copy(policy)
        inner = MultiSyncCollector(env_fns, remote_policy, cat_results=0, **common)
        return LaneOrderedCollector(
            inner,
            num_envs=cfg.env.num_envs,
            weight_sync_interval=co.weight_sync_interval,
            policy=policy,
            remote_policy=remote_policy,
        )
    if co.backend == "ray":
        return _build_ray_collector(cfg, env_fns, policy, frames_per_batch=frames_per_batch)
    raise ConfigError(f"unknown collector.backend {co.backend!r}")


def _warn_if_cluster_too_small(num_workers: int, remote: dict[str, Any]) -> None:
    """Ray waits, silently and forever, for resources an actor asks for and no node has."""
    import ray

    available = ray.cluster_resources()
    for resource in ("num_cpus", "num_gpus"):
        need = float(remote.get(resource) or 0) * num_workers
        have = float(available.get("CPU" if resource == "num_cpus" else "GPU", 0))
        if need > have:
            logger.warning(
                "collector.num_workers=%d actors asking for %s=%s each need %g, the Ray cluster "
                "has %g: collection waits until nodes join. On one machine, lower "
                "collector.ray_remote.%s (e.g. 0.5) or start Ray with more logical CPUs "
                "(collector.ray_init.num_cpus).",
                num_workers,
                resource,
                remote.get(resource),
                need,
                have,
                resource,
            )


def _build_ray_collector(cfg: TrainConfig, env_fns, policy: nn.Module, *, frames_per_batch: int):
    try:
        import_optional("ray", extra="ray", purpose="collector.backend=ray")
    except ImportError as err:
        raise ConfigError(
            "collector.backend=ray needs Ray, which is not installed: `pip install ray` "
            "(or `pip install 'torchrl_rise[ray]'`), or use collector.backend=multi_sync on "
            "one machine."
        ) from err
    from torchrl.collectors.distributed import RayCollector

    from torchrl_rise.training.collectors import (
        LEARNER_UNUSED_KEYS,
        DropKeys,
        LaneOrderedCollector,
        RemoteCollector,
        acting_copy,
    )

    co = cfg.collector
    remote = dict(co.ray_remote) or dict(RAY_REMOTE_DEFAULT)
    # The remote collectors act on the CPU unless their actors were given GPUs.
    remote_device = cfg.device if remote.get("num_gpus") else "cpu"
    remote_policy = acting_copy(policy)
    inner = RayCollector(
        env_fns,
        remote_policy,
        collector_class=RemoteCollector,
        collector_kwargs={
            "auto_register_policy_transforms": False,
            "track_traj_ids": False,
            # run in the worker: what the learner does not read does not cross the network
            "postproc": DropKeys(LEARNER_UNUSED_KEYS),
        },
        frames_per_batch=frames_per_batch,
        total_frames=_RAY_UNBOUNDED_FRAMES,
        env_device="cpu",
        storing_device="cpu",
        policy_device=remote_device,
        sync=True,
        ray_init_config=dict(co.ray_init) or None,
        remote_configs=remote,
    )
    _warn_if_cluster_too_small(co.num_workers, remote)
    collector = LaneOrderedCollector(
        inner,
        num_envs=cfg.env.num_envs,
        weight_sync_interval=co.weight_sync_interval,
        policy=policy,
        remote_policy=remote_policy,
    )
    try:
        # Connect the weight-sync channel now (it is lazy otherwise, and TorchRL warns when
        # iteration starts before it): a cluster that cannot reach the learner fails here.
        collector.push_weights()
    except BaseException:
        inner.shutdown()
        raise
    logger.info(
        "Ray collector: %d remote collectors of %d envs (resources %s), weights pushed every %d "
        "update batch(es)",
        co.num_workers,
        cfg.env.num_envs // co.num_workers,
        remote,
        co.weight_sync_interval,
    )
    return collector
