"""Build every piece of a run from a :class:`~torchrl_rise.training.config.TrainConfig`, in one place.

Where the frozen encoder runs: :class:`EnvFactory` appends
:class:`~torchrl_rise.transforms.RiseContextTransform` to the env it builds, so the acting policy
sees ``rise_context`` at every step whatever collector runs it. With the single-process collector
the training and evaluation envs share one encoder instance; with multi-process (or Ray) collectors
each worker builds its own frozen copy from the config (the encoder never changes, so nothing has to
be synchronised; ``encoder.name=online`` is therefore restricted to the single-process collector).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrl_rise._optional import import_optional
from torchrl_rise.training.config import ConfigError, TrainConfig

__all__ = [
    "Assembly",
    "Components",
    "EnvFactory",
    "build_actor",
    "build_assembly",
    "build_collector",
    "build_components",
    "build_encoder",
    "build_logger",
    "build_loss",
    "build_network",
    "build_optimizer",
    "build_replay",
    "embedding_dtype",
    "encoder_info",
    "evaluation_policy",
    "make_env_factory",
    "probe_env",
    "recurrent_state_dim",
]

logger = logging.getLogger(__name__)


def embedding_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``float16``, ``bfloat16``, ``float32``)."""
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def build_encoder(cfg: TrainConfig, *, frame_channels: int, module: nn.Module | None = None):
    """The frozen encoder of ``cfg.encoder`` (``module`` is the agent's CNN for ``online``).

    With the single-process collector on a GPU (``collector.backend=direct``,
    ``device=cuda...``) the encoder is moved there: the env transform sends the pixels to it and
    gets the embeddings back. Worker processes (other backends) keep theirs on the CPU.
    """
    from torchrl_rise.encoders import make_encoder

    kwargs: dict[str, Any] = dict(cfg.encoder.kwargs)
    if cfg.encoder.name == "online":
        if module is None:
            raise ConfigError("encoder.name=online needs the agent's CNN (module=...).")
        kwargs["module"] = module
    else:
        kwargs["weights"] = cfg.encoder.weights
    encoder = make_encoder(cfg.encoder.name, frame_channels=frame_channels, **kwargs)
    if torch.device(cfg.device).type != "cpu" and cfg.collector.backend == "direct":
        encoder = encoder.to(cfg.device)
    return encoder


def recurrent_state_dim(cfg: TrainConfig) -> int:
    """The LSTM hidden size of ``method=recurrent``'s network (``network.kwargs.lstm_hidden``,
    else the network's default): the size of the acting state the env's primer registers."""
    if "lstm_hidden" in cfg.network.kwargs:
        return int(cfg.network.kwargs["lstm_hidden"])
    import inspect

    from torchrl_rise.modules import RecurrentBaselineQNetwork

    return int(inspect.signature(RecurrentBaselineQNetwork).parameters["lstm_hidden"].default)


def build_actor(cfg: TrainConfig, net: nn.Module, *, env_info, action_spec) -> nn.Module:
    """The acting policy: ``net`` + BTR's epsilon-greedy schedule of ``cfg.exploration``.

    For ``method=recurrent`` it is :func:`~torchrl_rise.modules.make_recurrent_actor` (the same
    policy around a step of the LSTM that keeps each env's state; the env built by
    :class:`EnvFactory` carries the state's primer and TorchRL's ``InitTracker``).
    """
    from torchrl_rise.modules import make_actor, make_recurrent_actor

    ex = cfg.exploration
    try:
        return (make_recurrent_actor if cfg.uses_sequences else make_actor)(
            net,
            action_spec=action_spec,
            eps_schedule=ex.schedule,
            eps_init=ex.eps_start,
            eps_end=ex.eps_end,
            eps_decay_frames=ex.eps_decay_frames,
            eps_off_after_frames=ex.eps_off_after_frames or None,
            frame_skip=int(env_info.frame_skip),
        )
    except ValueError as err:
        raise ConfigError(f"invalid exploration configuration: {err}") from err


def evaluation_policy(cfg: TrainConfig, net: nn.Module) -> nn.Module:
    """What :func:`~torchrl_rise.training.evaluation.evaluate` runs: ``net`` (rise, btr), or for
    ``method=recurrent`` a :class:`~torchrl_rise.modules.RecurrentQStep` over ``net`` (one LSTM
    step per env, its state carried by the evaluation env's primer and reset by its
    ``InitTracker``)."""
    if not cfg.uses_sequences:
        return net
    from torchrl_rise.modules import RecurrentQStep

    return RecurrentQStep(net)


class EnvFactory:
    """Picklable env constructor: ``make_env`` + (for RISE) the context transform, or (for
    ``method=recurrent``) TorchRL's ``InitTracker`` and the primer of the actor's LSTM state.

    Collectors call it in worker processes, so it holds only the config values it needs (and,
    in-process, an optional prebuilt encoder to share).

    Args:
        cfg: the training config.
        num_envs: batch size of the env.
        seed: base seed.
        eval_mode: build evaluation envs (``env.eval_kwargs`` are added).
        encoder: a prebuilt encoder to reuse (single-process only); built from ``cfg`` if ``None``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        num_envs: int,
        seed: int,
        eval_mode: bool = False,
        encoder: nn.Module | None = None,
    ) -> None:
        self.cfg = cfg
        self.num_envs = num_envs
        self.seed = seed
        self.eval_mode = eval_mode
        self.encoder = encoder

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["encoder"] = None  # workers build their own frozen copy
        return state

    def make_base(self):
        """The suite env without the context transform."""
        from torchrl_rise.envs import make_env

        env_cfg = self.cfg.env
        kwargs = dict(env_cfg.kwargs)
        if self.eval_mode:
            kwargs.update(env_cfg.eval_kwargs)
        return make_env(
            env_cfg.suite,
            env_cfg.env_id,
            num_envs=self.num_envs,
            seed=self.seed,
            frame_stack=env_cfg.frame_stack,
            frame_size=(
                tuple(env_cfg.frame_size)
                if isinstance(env_cfg.frame_size, (list, tuple))
                else env_cfg.frame_size
            ),
            clip_rewards=env_cfg.clip_rewards and not self.eval_mode,
            reward_scale=1.0 if self.eval_mode else env_cfg.reward_scale,
            eval_mode=self.eval_mode,
            max_episode_frames=env_cfg.max_episode_frames,
            **kwargs,
        )

    def __call__(self):
        env = self.make_base()
        if self.cfg.uses_sequences:
            return env.append_transform(_recurrent_transforms(self.cfg))
        if self.cfg.method != "rise":
            return env
        from torchrl_rise.envs import describe_env
        from torchrl_rise.transforms import RiseContextTransform

        encoder = self.encoder
        if encoder is None:
            encoder = build_encoder(self.cfg, frame_channels=describe_env(env).frame_channels)
        env.append_transform(
            RiseContextTransform(
                encoder,
                context_length=self.cfg.encoder.context_length,
                embedding_dtype=embedding_dtype(self.cfg.encoder.dtype),
                encoder_device=encoder.device,  # the learner's GPU for direct runs (build_encoder)
            )
        )
        return env


def _recurrent_transforms(cfg: TrainConfig):
    """``InitTracker`` (``is_init``: the actor zeroes the state of envs that restarted) and the
    primer registering the ``(h, c)`` keys, as ``get_env_transforms_from_module(actor)`` gives."""
    from torchrl.data import Unbounded
    from torchrl.envs.transforms import Compose, InitTracker, TensorDictPrimer

    from torchrl_rise import keys

    hidden = recurrent_state_dim(cfg)
    primer = TensorDictPrimer(
        {
            key: Unbounded(shape=(hidden,))
            for key in (keys.RECURRENT_STATE_H, keys.RECURRENT_STATE_C)
        },
        expand_specs=True,
    )
    return Compose(InitTracker(), primer)


def make_env_factory(
    cfg: TrainConfig,
    *,
    eval_mode: bool = False,
    encoder: nn.Module | None = None,
    num_envs: int | None = None,
    seed: int | None = None,
) -> EnvFactory:
    """The :class:`EnvFactory` of the training envs (or, with ``eval_mode``, the evaluation envs).

    Defaults: ``env.num_envs`` envs seeded from ``seed`` for training; ``eval.num_envs`` envs
    seeded from ``seed + 1_000_003`` (never the training seeds) with ``env.eval_kwargs`` for
    evaluation.

    Example:
        >>> from torchrl_rise.training import load_config
        >>> cfg = load_config({"env": {"suite": "memory", "env_id": "cue-L4", "num_envs": 2}})
        >>> factory = make_env_factory(cfg, eval_mode=True)
        >>> factory.num_envs, factory.seed, factory.eval_mode
        (8, 1000003, True)
    """
    if num_envs is None:
        num_envs = cfg.eval.num_envs if eval_mode else cfg.env.num_envs
    if seed is None:
        seed = cfg.seed + 1_000_003 if eval_mode else cfg.seed
    return EnvFactory(cfg, num_envs=num_envs, seed=seed, eval_mode=eval_mode, encoder=encoder)


def probe_env(env_factory: EnvFactory) -> tuple[Any, Any]:
    """Build one env of ``env_factory`` (without the context transform) and describe it.

    Returns:
        ``(env_info, action_spec)``: :func:`torchrl_rise.envs.describe_env`'s description and
        the action spec of a single env.
    """
    from torchrl_rise.envs import describe_env

    probe = EnvFactory(env_factory.cfg, num_envs=1, seed=env_factory.seed).make_base()
    try:
        env_info = describe_env(probe)
        action_spec = probe.full_action_spec[probe.action_key]
        action_spec = action_spec[0] if action_spec.shape else action_spec  # per-env spec
    finally:
        probe.close()
    return env_info, action_spec


def encoder_info(cfg: TrainConfig, encoder: nn.Module | None) -> dict[str, Any] | None:
    """What ``summary.json`` records of the encoder (``None`` without one)."""
    if encoder is None:
        return None
    return {
        "name": cfg.encoder.name,
        "weights_source": getattr(encoder, "weights_source", None),
        "embedding_dim": int(encoder.embedding_dim),
    }


def build_network(cfg: TrainConfig, *, env_info, embedding_dim: int | None):
    """The Q-network of ``cfg.method`` for the env described by ``env_info``.

    Its initial weights follow ``cfg.seed`` alone (drawn from a forked RNG: the caller's global
    RNG state is left as it was), so two runs with one seed start from the same network.
    """
    from torchrl_rise.modules import make_q_network

    kwargs: dict[str, Any] = dict(cfg.network.kwargs)
    if cfg.method == "rise":
        kwargs.setdefault("context_length", cfg.encoder.context_length)
        kwargs["embedding_dim"] = embedding_dim
    if cfg.uses_sequences:
        kwargs["burn_in"] = cfg.recurrent.burn_in
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return make_q_network(
                # method=recurrent trains the recurrent_baseline network
                "recurrent_baseline" if cfg.uses_sequences else cfg.method,
                num_actions=env_info.num_actions,
                in_channels=env_info.frame_stack * env_info.frame_channels,
                frame_size=env_info.frame_size,
                **kwargs,
            )
    except TypeError as err:
        raise ConfigError(f"invalid network option in network.kwargs={kwargs}: {err}") from err


def build_loss(cfg: TrainConfig, net: nn.Module):
    """``IQNLoss`` (BTR's IQN + Munchausen) and its hard target updater.

    The target is copied after every ``loss.target_update_interval``-th update, buffers included
    (:class:`~torchrl_rise.objectives.HardTargetUpdate`, as BTR's code). ``method=recurrent``
    gets :class:`~torchrl_rise.objectives.SequenceIQNLoss` (the same loss over sequences, with
    ``recurrent.sequence_priority_eta``).
    """
    from torchrl_rise.objectives import HardTargetUpdate, IQNLoss, SequenceIQNLoss

    kwargs: dict[str, Any] = dict(cfg.loss.kwargs)
    if cfg.optim.bf16:
        kwargs["autocast_dtype"] = torch.bfloat16
    if cfg.uses_sequences:
        kwargs.setdefault("sequence_priority_eta", cfg.recurrent.sequence_priority_eta)
    try:
        loss = (SequenceIQNLoss if cfg.uses_sequences else IQNLoss)(
            net,
            munchausen=cfg.loss.munchausen,
            gamma=cfg.loss.gamma,
            priority_reduction=cfg.loss.priority_reduction,
            **kwargs,
        )
        updater = HardTargetUpdate(loss, interval=cfg.loss.target_update_interval)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid loss option in loss.kwargs={cfg.loss.kwargs}: {err}") from err
    return loss, updater


def build_optimizer(cfg: TrainConfig, loss: nn.Module) -> torch.optim.Optimizer:
    """Adam over the loss's trainable parameters (the target network is excluded), fused on CUDA."""
    from torchrl_rise.training.learner import build_learner_optimizer

    return build_learner_optimizer(loss, lr=cfg.optim.lr, eps=cfg.optim.eps, device=cfg.device)


def build_replay(cfg: TrainConfig, *, env_info, embedding_dim: int | None, scratch_dir: Path):
    """The context-window replay buffer (it refuses to start if its memmaps cannot fit on disk).

    ``method=recurrent``: :class:`~torchrl_rise.replay.SequenceReplayBuffer` with the
    ``recurrent`` section's sequence settings; a batch is ``recurrent.batch_size`` sequences.
    """
    from torchrl_rise.replay import (
        InsufficientDiskSpaceError,
        RiseReplayBuffer,
        SequenceReplayBuffer,
    )

    rp = cfg.replay
    kwargs: dict[str, Any] = dict(rp.kwargs)
    # The learner consumes each batch before the next sample: two reused output buffers (no 56 MB
    # allocation per update), pinned when a GPU learner copies them asynchronously.
    kwargs.setdefault("reuse_output", True)
    kwargs.setdefault("pin_memory", torch.device(cfg.device).type == "cuda")
    cls = RiseReplayBuffer
    batch_size = rp.batch_size
    if cfg.uses_sequences:
        rc = cfg.recurrent
        cls = SequenceReplayBuffer
        batch_size = rc.batch_size
        kwargs.update(
            burn_in=rc.burn_in,
            learning_length=rc.learning_length,
            period=rc.period,
            recurrent_state=rc.recurrent_state,
            state_dim=recurrent_state_dim(cfg),
            state_dtype=embedding_dtype(rc.state_dtype),
        )
    elif cfg.method == "rise":
        kwargs.update(
            embedding_dim=int(embedding_dim),
            context_length=cfg.encoder.context_length,
            embedding_dtype=embedding_dtype(cfg.encoder.dtype),
        )
    else:
        kwargs.update(context_length=0)
    try:
        return cls(
            rp.capacity,
            cfg.env.num_envs,
            frame_shape=(env_info.frame_channels, *env_info.frame_size),
            frame_stack=env_info.frame_stack,
            n_step=cfg.loss.n_step,
            gamma=cfg.loss.gamma,
            prioritized=rp.prioritized,
            alpha=rp.alpha,
            beta=rp.beta,
            importance_weights=rp.importance_weights,
            stratified=rp.stratified,
            max_priority_floor=rp.max_priority_floor,
            batch_size=batch_size,
            scratch_dir=Path(rp.scratch_dir) if rp.scratch_dir else scratch_dir,
            seed=cfg.seed,
            **kwargs,
        )
    except InsufficientDiskSpaceError as err:
        raise ConfigError(f"{err} (replay.scratch_dir / replay.capacity)") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid replay configuration: {err}") from err


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


def build_logger(
    cfg: TrainConfig, *, run_dir: Path, config: dict[str, Any], drop_after_frames: int | None
):
    """The run's :class:`~torchrl_rise.training.loggers.RunLogger` (csv + ``logging.backends``)."""
    from torchrl_rise.training.loggers import RunLogger

    return RunLogger(
        run_dir,
        backends=cfg.logging.backends,
        experiment_name=f"{cfg.env.suite}-{_safe_name(cfg.env.env_id)}-{cfg.method}-s{cfg.seed}",
        wandb_project=cfg.logging.wandb_project,
        config=config,
        drop_after_frames=drop_after_frames,
    )


def _safe_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "env"


@dataclass
class Components:
    """Everything :class:`~torchrl_rise.training.loop.Trainer` drives, the replay built."""

    env_info: Any
    encoder: nn.Module | None
    encoder_info: dict[str, Any] | None
    net: nn.Module
    actor: nn.Module
    loss: nn.Module
    target_updater: Any
    optimizer: torch.optim.Optimizer
    replay: Any
    eval_env_factory: EnvFactory


@dataclass
class Assembly:
    """What a recipe builds and hands to :class:`~torchrl_rise.training.loop.Trainer`.

    The three factories are called by the trainer once it holds the run directory's lock:
    ``make_replay(scratch_dir=...)`` (the memmaps go under the run), ``make_collector(seed=...)``
    (a resumed run gets a fresh seed so it does not replay the episodes it saw) and
    ``make_logger(run_dir=..., config=..., drop_after_frames=...)``.

    Example:
        >>> from torchrl_rise.training import load_config
        >>> cfg = load_config({"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4",
        ...     "num_envs": 4, "frame_size": 16}, "total_frames": 64,
        ...     "replay": {"capacity": 256, "batch_size": 8, "learning_starts": 32}})
        >>> parts = build_assembly(cfg)
        >>> type(parts.loss).__name__, parts.encoder is None
        ('IQNLoss', True)
    """

    env_info: Any
    encoder: nn.Module | None
    net: nn.Module
    actor: nn.Module
    loss: nn.Module
    target_updater: Any
    optimizer: torch.optim.Optimizer
    make_replay: Callable[..., Any]
    make_collector: Callable[..., Any]
    eval_env_factory: EnvFactory
    make_logger: Callable[..., Any]
    encoder_info: dict[str, Any] | None = None

    def components(self, *, scratch_dir: Path) -> Components:
        """Build the replay under ``scratch_dir``; return the :class:`Components`."""
        return Components(
            env_info=self.env_info,
            encoder=self.encoder,
            encoder_info=self.encoder_info,
            net=self.net,
            actor=self.actor,
            loss=self.loss,
            target_updater=self.target_updater,
            optimizer=self.optimizer,
            replay=self.make_replay(scratch_dir=scratch_dir),
            eval_env_factory=self.eval_env_factory,
        )


def build_assembly(cfg: TrainConfig) -> Assembly:
    """Every piece of a run of ``cfg``, as the recipes build them (``train(cfg)`` uses this).

    ``recipes/atari.py`` spells the same steps out; a recipe that changes a piece (an env, the
    network) builds it its own way and hands the :class:`Assembly` to the trainer.
    """
    if cfg.method == "rise" and cfg.encoder.name == "online":
        raise ConfigError(
            "encoder.name=online is built from the network's CNN after the network exists; "
            "it is not supported by the recipes yet: pick a frozen encoder (resnet18, ...)."
        )
    env_factory = make_env_factory(cfg)
    env_info, action_spec = probe_env(env_factory)
    encoder = (
        build_encoder(cfg, frame_channels=env_info.frame_channels) if cfg.uses_context else None
    )
    embedding_dim = int(encoder.embedding_dim) if encoder is not None else None
    net = build_network(cfg, env_info=env_info, embedding_dim=embedding_dim).to(cfg.device)
    actor = build_actor(cfg, net, env_info=env_info, action_spec=action_spec)
    loss, target_updater = build_loss(cfg, net)
    optimizer = build_optimizer(cfg, loss)
    return Assembly(
        env_info=env_info,
        encoder=encoder,
        encoder_info=encoder_info(cfg, encoder),
        net=net,
        actor=actor,
        loss=loss,
        target_updater=target_updater,
        optimizer=optimizer,
        make_replay=functools.partial(
            build_replay, cfg, env_info=env_info, embedding_dim=embedding_dim
        ),
        make_collector=functools.partial(build_collector, cfg, encoder=encoder, policy=actor),
        eval_env_factory=make_env_factory(cfg, eval_mode=True, encoder=encoder),
        make_logger=functools.partial(build_logger, cfg),
    )


def build_components(cfg: TrainConfig, *, scratch_dir: Path) -> Components:
    """Build env info, encoder, network, actor, loss, optimizer and replay (not the collector)."""
    return build_assembly(cfg).components(scratch_dir=scratch_dir)
