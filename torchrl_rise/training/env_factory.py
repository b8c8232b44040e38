"""The envs of a run: the suite env, the frozen encoder run inside it, and what a probe tells.

Where the frozen encoder runs: :class:`EnvFactory` appends
:class:`~torchrl_rise.transforms.RiseContextTransform` to the env it builds, so the acting policy
sees ``rise_context`` at every step whatever collector runs it. With the single-process collector
the training and evaluation envs share one encoder instance; with multi-process (or Ray) collectors
each worker builds its own frozen copy from the config (the encoder never changes, so nothing has to
be synchronised; ``encoder.name=online`` is therefore restricted to the single-process collector).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from torchrl_rise.training.config import ConfigError, TrainConfig

__all__ = [
    "EVAL_SEED_OFFSET",
    "EnvFactory",
    "build_encoder",
    "embedding_dtype",
    "encoder_info",
    "make_env_factory",
    "probe_env",
    "recurrent_state_dim",
]

#: the evaluation envs are seeded from ``seed + EVAL_SEED_OFFSET`` (never a training seed)
EVAL_SEED_OFFSET = 1_000_003


def embedding_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``float16``, ``bfloat16``, ``float32``).

    Example:
        >>> embedding_dtype("bfloat16")
        torch.bfloat16
    """
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def build_encoder(
    cfg: TrainConfig, *, frame_channels: int, module: nn.Module | None = None
) -> nn.Module:
    """The frozen encoder of ``cfg.encoder`` (``module`` is the agent's CNN for ``online``).

    With the single-process collector on a GPU (``collector.backend=direct``,
    ``device=cuda...``) the encoder is moved there: the env transform sends the pixels to it and
    gets the embeddings back. Worker processes (other backends) keep theirs on the CPU.
    """
    from torchrl_rise.encoders import make_encoder

    name = cfg.encoder.name
    if name == "online" and module is None:
        raise ConfigError("encoder.name=online needs the agent's CNN (module=...).")
    # the online encoder is the agent's CNN; the frozen ones load encoder.weights
    source = {"module": module} if name == "online" else {"weights": cfg.encoder.weights}
    try:
        encoder = make_encoder(name, frame_channels=frame_channels, **source, **cfg.encoder.kwargs)
    except TypeError as err:
        raise ConfigError(
            f"invalid encoder option in encoder.kwargs={cfg.encoder.kwargs}: {err}"
        ) from err
    if torch.device(cfg.device).type != "cpu" and cfg.collector.backend == "direct":
        encoder = encoder.to(cfg.device)
    return encoder


def recurrent_state_dim(cfg: TrainConfig) -> int:
    """The LSTM hidden size of ``method=recurrent``'s network (``network.kwargs.lstm_hidden``,
    else the network's default): the size of the acting state the env's primer registers.

    Example:
        >>> recurrent_state_dim(TrainConfig(method="recurrent"))
        512
    """
    if "lstm_hidden" in cfg.network.kwargs:
        return int(cfg.network.kwargs["lstm_hidden"])
    from torchrl_rise.modules import RecurrentBaselineQNetwork

    return int(inspect.signature(RecurrentBaselineQNetwork).parameters["lstm_hidden"].default)


class EnvFactory:
    """Picklable env constructor: ``make_env`` + (for RISE) the context transform, or (for
    ``method=recurrent``) TorchRL's ``InitTracker`` and the primer of the actor's LSTM state.

    Collectors call it in worker processes, so it holds only the config values it needs (and,
    in-process, an optional prebuilt encoder to share).

    Args:
        cfg: the training config.

    Keyword Args:
        num_envs: batch size of the env.
        seed: base seed.
        eval_mode: build evaluation envs (``env.eval_kwargs`` are added).
        encoder: a prebuilt encoder to reuse (single-process only); built from ``cfg`` if ``None``.

    Example:
        >>> from torchrl_rise.training import load_config
        >>> cfg = load_config({"method": "btr", "env": {"suite": "memory", "env_id": "cue-L4"}})
        >>> env = EnvFactory(cfg, num_envs=2, seed=0)()
        >>> env.batch_size
        torch.Size([2])
        >>> env.close()
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
        frame_size = env_cfg.frame_size
        # the suite's own options; the evaluation envs add (and may replace) theirs
        suite_options = {**env_cfg.kwargs, **(env_cfg.eval_kwargs if self.eval_mode else {})}
        return make_env(
            env_cfg.suite,
            env_cfg.env_id,
            num_envs=self.num_envs,
            seed=self.seed,
            frame_stack=env_cfg.frame_stack,
            frame_size=tuple(frame_size) if isinstance(frame_size, (list, tuple)) else frame_size,
            clip_rewards=env_cfg.clip_rewards and not self.eval_mode,
            reward_scale=1.0 if self.eval_mode else env_cfg.reward_scale,
            eval_mode=self.eval_mode,
            max_episode_frames=env_cfg.max_episode_frames,
            **suite_options,
        )

    def __call__(self):
        env = self.make_base()
        if self.cfg.uses_sequences:
            return env.append_transform(_recurrent_transforms(self.cfg))
        if not self.cfg.uses_context:
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
        seed = cfg.seed + EVAL_SEED_OFFSET if eval_mode else cfg.seed
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
