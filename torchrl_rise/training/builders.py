"""Build every piece of a run from a :class:`~torchrl_rise.training.config.TrainConfig`, in one place.

Each builder reads its section of the config and passes every setting by name to the class it
builds, so a setting can be followed from the config to where it acts. The free-form ``kwargs``
dicts of the config (``network.kwargs``, ``loss.kwargs``, ``replay.kwargs``, ...) are passed last,
unchanged: a key that a builder already sets from a typed field fails as a duplicate argument.

- :mod:`torchrl_rise.training.env_factory`: the envs, the frozen encoder, the env probe;
- this module: network, actor, loss, optimizer, replay, logger, and :func:`build_assembly`, the
  whole assembly that ``train(cfg)`` and every recipe run (``recipes/atari.py`` shows it);
- :mod:`torchrl_rise.training.collector_factory`: the TorchRL collector.

The names of the other two modules are importable from here too.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrl_rise.training.collector_factory import RAY_REMOTE_DEFAULT, build_collector
from torchrl_rise.training.config import ConfigError, TrainConfig
from torchrl_rise.training.env_factory import (
    EnvFactory,
    build_encoder,
    embedding_dtype,
    encoder_info,
    make_env_factory,
    probe_env,
    recurrent_state_dim,
)

__all__ = [
    "RAY_REMOTE_DEFAULT",
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


def build_network(cfg: TrainConfig, *, env_info, embedding_dim: int | None) -> nn.Module:
    """The Q-network of ``cfg.method`` for the env described by ``env_info``.

    ``rise`` gets ``encoder.context_length`` and the encoder's ``embedding_dim``; ``recurrent``
    trains the ``recurrent_baseline`` network with ``recurrent.burn_in``; every other option is
    ``network.kwargs`` (``make_q_network``'s keyword arguments). Its initial weights follow
    ``cfg.seed`` alone (drawn from a forked RNG: the caller's global RNG state is left as it
    was), so two runs with one seed start from the same network.
    """
    from torchrl_rise.modules import make_q_network

    method_options: dict[str, Any] = {}
    if cfg.uses_context:
        method_options = {
            "context_length": cfg.encoder.context_length,
            "embedding_dim": embedding_dim,
        }
    elif cfg.uses_sequences:
        method_options = {"burn_in": cfg.recurrent.burn_in}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return make_q_network(
                # method=recurrent trains the recurrent_baseline network
                "recurrent_baseline" if cfg.uses_sequences else cfg.method,
                num_actions=env_info.num_actions,
                in_channels=env_info.frame_stack * env_info.frame_channels,
                frame_size=env_info.frame_size,
                **method_options,
                **cfg.network.kwargs,
            )
    except TypeError as err:
        raise ConfigError(
            f"invalid network option in network.kwargs={cfg.network.kwargs}: {err}"
        ) from err


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


def build_loss(cfg: TrainConfig, net: nn.Module):
    """``IQNLoss`` (BTR's IQN + Munchausen) and its hard target updater.

    The target is copied after every ``loss.target_update_interval``-th update, buffers included
    (:class:`~torchrl_rise.objectives.HardTargetUpdate`, as BTR's code). ``method=recurrent``
    gets :class:`~torchrl_rise.objectives.SequenceIQNLoss` (the same loss over sequences, with
    ``recurrent.sequence_priority_eta``). ``optim.bf16`` runs the networks under bfloat16
    autocast.
    """
    from torchrl_rise.objectives import HardTargetUpdate, IQNLoss, SequenceIQNLoss

    try:
        loss = (SequenceIQNLoss if cfg.uses_sequences else IQNLoss)(
            net,
            munchausen=cfg.loss.munchausen,
            gamma=cfg.loss.gamma,
            priority_reduction=cfg.loss.priority_reduction,
            autocast_dtype=torch.bfloat16 if cfg.optim.bf16 else None,
            sequence_priority_eta=cfg.recurrent.sequence_priority_eta,
            **cfg.loss.kwargs,
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

    ``rise`` stores the encoder's embeddings (``encoder.context_length``, ``encoder.dtype``),
    ``btr`` none. ``method=recurrent``: :class:`~torchrl_rise.replay.SequenceReplayBuffer` with
    the ``recurrent`` section's sequence settings; a batch is ``recurrent.batch_size`` sequences.
    """
    from torchrl_rise.replay import (
        InsufficientDiskSpaceError,
        RiseReplayBuffer,
        SequenceReplayBuffer,
    )

    rp, rc = cfg.replay, cfg.recurrent
    free_options = dict(rp.kwargs)
    # The learner consumes each batch before the next sample: two reused output buffers (no 56 MB
    # allocation per update), pinned when a GPU learner copies them asynchronously.
    reuse_output = free_options.pop("reuse_output", True)
    pin_memory = free_options.pop("pin_memory", torch.device(cfg.device).type == "cuda")
    storage = dict(
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
        scratch_dir=Path(rp.scratch_dir) if rp.scratch_dir else scratch_dir,
        seed=cfg.seed,
        reuse_output=reuse_output,
        pin_memory=pin_memory,
        **free_options,
    )
    try:
        if cfg.uses_sequences:
            return SequenceReplayBuffer(
                rp.capacity,
                cfg.env.num_envs,
                batch_size=rc.batch_size,
                burn_in=rc.burn_in,
                learning_length=rc.learning_length,
                period=rc.period,
                recurrent_state=rc.recurrent_state,
                state_dim=recurrent_state_dim(cfg),
                state_dtype=embedding_dtype(rc.state_dtype),
                **storage,
            )
        if cfg.uses_context:
            return RiseReplayBuffer(
                rp.capacity,
                cfg.env.num_envs,
                batch_size=rp.batch_size,
                embedding_dim=int(embedding_dim),
                context_length=cfg.encoder.context_length,
                embedding_dtype=embedding_dtype(cfg.encoder.dtype),
                **storage,
            )
        return RiseReplayBuffer(
            rp.capacity, cfg.env.num_envs, batch_size=rp.batch_size, context_length=0, **storage
        )
    except InsufficientDiskSpaceError as err:
        raise ConfigError(f"{err} (replay.scratch_dir / replay.capacity)") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid replay configuration: {err}") from err


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
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "env"


@dataclass
class Assembly:
    """What a recipe builds and hands to :class:`~torchrl_rise.training.loop.Trainer`.

    The three factories are called by the trainer once it holds the run directory's lock:
    ``make_replay(scratch_dir=...)`` (the memmaps go under the run), ``make_collector(seed=...)``
    (a resumed run gets a fresh seed so it does not replay the episodes it saw) and
    ``make_logger(run_dir=..., config=..., drop_after_frames=...)``. ``replay`` is ``None`` until
    :meth:`components` built it (``Components`` is this class, its replay built).

    Example:
        >>> from torchrl_rise.training import load_config
        >>> cfg = load_config({"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4",
        ...     "num_envs": 4, "frame_size": 16}, "total_frames": 64,
        ...     "replay": {"capacity": 256, "batch_size": 8, "learning_starts": 32}})
        >>> parts = build_assembly(cfg)
        >>> type(parts.loss).__name__, parts.encoder is None, parts.replay is None
        ('IQNLoss', True, True)
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
    replay: Any = None

    def components(self, *, scratch_dir: Path) -> Assembly:
        """A copy of this assembly with its replay built under ``scratch_dir``."""
        return dataclasses.replace(self, replay=self.make_replay(scratch_dir=scratch_dir))


#: what :class:`~torchrl_rise.training.loop.Trainer` drives: an :class:`Assembly`, replay built
Components = Assembly


def build_assembly(cfg: TrainConfig) -> Assembly:
    """Every piece of a run of ``cfg``: what ``train(cfg)`` and every recipe run.

    The steps, as TorchRL's sota scripts spell them out: env -> transform (RISE's frozen encoder)
    -> network -> actor -> loss -> optimizer; the replay buffer, the collector and the loggers are
    handed over as factories, built by the trainer under the run directory's lock.
    """
    if cfg.uses_context and cfg.encoder.name == "online":
        raise ConfigError(
            "encoder.name=online is built from the network's CNN after the network exists; "
            "it is not supported by the recipes yet: pick a frozen encoder (resnet18, ...)."
        )
    # Environments: the training envs step in the collector, the evaluation envs apart.
    env_factory = make_env_factory(cfg)
    env_info, action_spec = probe_env(env_factory)  # frame size/channels, skip, actions

    # Transform: RISE's frozen encoder, run once per frame inside the env
    # (RiseContextTransform); its embeddings are stored once in the replay. BTR has none.
    encoder = None
    if cfg.uses_context:
        encoder = build_encoder(cfg, frame_channels=env_info.frame_channels)
    embedding_dim = int(encoder.embedding_dim) if encoder is not None else None

    # Dual-stream IQN network (BTR's IMPALA CNN + the context LSTM for RISE; method=recurrent: the
    # recurrent_baseline network), acting policy (noisy nets + BTR's epsilon-greedy schedule),
    # IQN + Munchausen loss with hard target updates, Adam.
    net = build_network(cfg, env_info=env_info, embedding_dim=embedding_dim).to(cfg.device)
    actor = build_actor(cfg, net, env_info=env_info, action_spec=action_spec)
    loss, target_updater = build_loss(cfg, net)
    optimizer = build_optimizer(cfg, loss)

    # Built by the trainer under the run directory's lock: the replay's memmaps go into the run,
    # a resumed run's collector gets a fresh seed, the loggers append to the resumed logs.
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


def build_components(cfg: TrainConfig, *, scratch_dir: Path) -> Assembly:
    """Build env info, encoder, network, actor, loss, optimizer and replay (not the collector)."""
    return build_assembly(cfg).components(scratch_dir=scratch_dir)
