"""Structured training configuration with validation that explains what is wrong and how to fix it.

These dataclasses are the one home of every default: Beyond The Rainbow's Atari run
(``docs/recipes.md`` lists them). :func:`register_configs` stores :class:`TrainConfig` in hydra's
``ConfigStore`` as ``train_schema``, the first entry of every recipe's defaults list; the YAML
files in ``recipes/config/`` hold only what a suite changes (and the presets what a preset
changes), so ``train({...})`` from Python and ``python recipes/atari.py`` run the same experiment.
A misspelt key fails with the key's name, and :func:`validate_config` checks the values before
anything is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS",
    "METHODS",
    "SUITES",
    "CheckpointConfig",
    "CollectorConfig",
    "ConfigError",
    "EncoderConfig",
    "EnvConfig",
    "EvalConfig",
    "ExplorationConfig",
    "LoggingConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "RecurrentConfig",
    "ReplayConfig",
    "TrainConfig",
    "check_disk_space",
    "free_form_keys",
    "load_config",
    "register_configs",
    "schema_node",
    "suite_frame_skip",
    "validate_config",
]

METHODS = ("rise", "btr", "recurrent")
SUITES = ("atari", "vizdoom", "procgen", "miniworld", "memorygym", "memory")
BACKENDS = ("direct", "multi_sync", "ray")
LOGGER_BACKENDS = ("csv", "tensorboard", "wandb")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and the fix."""


def _positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")


def _probability(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must lie in [0, 1], got {value!r}.")


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}.")


def _check_dtype(value: str, name: str) -> None:
    if value not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"{name} must be float16, bfloat16 or float32, got {value!r}.")


@dataclass
class EnvConfig:
    """Which environment to train on and how its observations are prepared.

    Attributes:
        suite: one of ``atari``, ``vizdoom``, ``procgen``, ``miniworld``, ``memorygym``,
            ``memory``.
        env_id: the suite's id (e.g. ``"Pong"`` / ``"ALE/Pong-v5"`` for Atari).
        num_envs: environments stepped together (one vector step = ``num_envs`` frames).
        frame_stack: frames stacked into the policy observation (4, BTR's and every suite's;
            ``None``: the suite's default).
        frame_size: side of each (resized) frame, or ``[H, W]`` (84, BTR's Atari size; ``None``:
            the suite's default, which Procgen needs: it renders 64x64 only). A run records the
            value, and a resume compares it (``training/resume.py``, fixed keys).
        clip_rewards: clip rewards to [-1, 1] for learning (raw scores are still reported).
        reward_scale: multiply rewards by this for learning instead (needs ``clip_rewards``
            false; raw scores are still reported). The ViZDoom CPU preset uses 0.01.
        max_episode_frames: episode cap in simulator frames (``None``: the suite's; Atari 108K).
        kwargs: extra keyword arguments for the suite's ``make_env`` (e.g. ``num_levels``).
        eval_kwargs: keyword arguments that only the evaluation envs get (e.g. unseen levels).
    """

    suite: str = "atari"
    env_id: str = "Pong"
    num_envs: int = 64
    frame_stack: int | None = 4
    frame_size: Any = 84
    clip_rewards: bool = True
    reward_scale: float = 1.0
    max_episode_frames: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    eval_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the section's values (:class:`ConfigError` names the key and the fix)."""
        if self.suite not in SUITES:
            raise ConfigError(
                f"env.suite must be one of {SUITES}, got {self.suite!r}. Pick the recipe for the "
                "suite (recipes/atari.py, recipes/vizdoom.py, ...)."
            )
        if not self.env_id:
            raise ConfigError("env.env_id is empty: name the game/scenario, e.g. env.env_id=Pong.")
        _positive(self.num_envs, "env.num_envs")
        if self.frame_stack is not None:
            _positive(self.frame_stack, "env.frame_stack")
        size = self.frame_size
        if size is not None:
            sizes = list(size) if isinstance(size, (list, tuple)) else [size]
            if len(sizes) not in (1, 2) or not all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in sizes
            ):
                raise ConfigError(
                    f"env.frame_size must be a positive int or [height, width], got {size!r}."
                )
        if self.max_episode_frames is not None:
            _positive(self.max_episode_frames, "env.max_episode_frames")
        from torchrl_rise.envs import check_reward_scale

        try:
            check_reward_scale(self.reward_scale, clip_rewards=self.clip_rewards)
        except ValueError as err:
            raise ConfigError(f"env.{err}") from err


@dataclass
class EncoderConfig:
    """The frozen encoder whose embeddings form the RISE context window.

    Attributes:
        name: encoder name for ``torchrl_rise.encoders.make_encoder`` (``resnet18``, ``online``...).
        weights: ``"auto"`` (ImageNet when cached or downloadable, else seeded random frozen
            weights with a loud warning), ``"imagenet"`` (fails if unobtainable), ``"random"``, or
            the path of a state-dict file. Weight-free encoders (``downsample``,
            ``random_projection``) also accept ``None``; the torchvision encoders refuse it.
        context_length: ``K``, the number of past embeddings (current one included) the LSTM reads.
        dtype: storage dtype of the embeddings (``float16`` or ``float32``).
        kwargs: extra keyword arguments for ``make_encoder``.
    """

    name: str = "resnet18"
    weights: str | None = "auto"
    context_length: int = 80
    dtype: str = "float16"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, *, uses_context: bool, method: str) -> None:
        """Check the section's values; ``context_length`` only where the method reads a context."""
        if uses_context and self.context_length < 1:
            raise ConfigError(
                f"encoder.context_length (K) must be >= 1 for method={method!r}, got "
                f"{self.context_length}. The paper finds K=20 already helps; 80-160 is better."
            )
        _check_dtype(self.dtype, "encoder.dtype")


@dataclass
class NetworkConfig:
    """Q-network options passed to ``torchrl_rise.modules.make_q_network`` as keyword arguments."""

    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """IQN + Munchausen loss (BTR). ``kwargs`` go to ``IQNLoss`` unchanged.

    Attributes:
        target_update_interval: the target network is copied (buffers included) after every
            this many updates (BTR: 500).
        priority_reduction: the PER priority from ``|TD|``: ``btr_sum_mean`` (BTR's code: sum over
            the online taus, mean over the target taus) or ``mean`` (mean over both).
    """

    gamma: float = 0.997
    n_step: int = 3
    munchausen: bool = True
    target_update_interval: int = 500
    priority_reduction: str = "btr_sum_mean"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the section's values."""
        _positive(self.n_step, "loss.n_step")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"loss.gamma must lie in (0, 1], got {self.gamma}.")
        _positive(self.target_update_interval, "loss.target_update_interval")
        from torchrl_rise.objectives.iqn import PRIORITY_REDUCTIONS

        _check_choice(self.priority_reduction, PRIORITY_REDUCTIONS, "loss.priority_reduction")


@dataclass
class OptimConfig:
    """Adam with BTR's settings; ``bf16`` runs the learner's forward under bfloat16 autocast."""

    lr: float = 1e-4
    eps: float = 1.95e-5
    grad_clip: float = 10.0
    updates_per_vector_step: float = 1.0
    bf16: bool = False

    def validate(self) -> None:
        """Check the section's values."""
        for name in ("lr", "eps", "grad_clip", "updates_per_vector_step"):
            _positive(getattr(self, name), f"optim.{name}")


@dataclass
class ReplayConfig:
    """Context-window replay buffer (``torchrl_rise.replay.RiseReplayBuffer``).

    Attributes:
        alpha: PER priority exponent (BTR: 0.2); BTR's importance weights use it too.
        beta: importance-sampling exponent, used by ``importance_weights=torchrl`` only.
        importance_weights: ``btr`` (BTR's code: ``(capacity * P(i)) ** -alpha`` over the batch
            maximum) or ``torchrl`` (``(P(i) / min P) ** -beta`` over the whole buffer).
        stratified: one draw per segment of the total priority mass (BTR) or independent draws.
        max_priority_floor: new transitions enter at ``max(floor, largest priority set)`` (BTR: 1;
            0 gives TorchRL's rule).
        prefetch: gather each update's batch on a worker thread during the previous update
            (:class:`~torchrl_rise.replay.Prefetcher`). A prefetched batch is drawn before the
            previous update wrote its priorities and before the newest vector step was stored
            (both first affect the batch after it), and a resumed run does not redraw the batch
            that was in flight at the checkpoint. ``false``: each batch is drawn in its update.
    """

    capacity: int = 2**20
    batch_size: int = 256
    learning_starts: int = 200_000
    prioritized: bool = True
    alpha: float = 0.2
    beta: float = 0.4
    importance_weights: str = "btr"
    stratified: bool = True
    max_priority_floor: float = 1.0
    prefetch: bool = False
    scratch_dir: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the section's values (whether a batch can be served is checked with the rest)."""
        _positive(self.capacity, "replay.capacity")
        _positive(self.batch_size, "replay.batch_size")
        _positive(self.learning_starts, "replay.learning_starts", allow_zero=True)
        _probability(self.alpha, "replay.alpha")
        _probability(self.beta, "replay.beta")
        from torchrl_rise.replay.sampler import IMPORTANCE_WEIGHTS

        _check_choice(self.importance_weights, IMPORTANCE_WEIGHTS, "replay.importance_weights")
        _positive(self.max_priority_floor, "replay.max_priority_floor", allow_zero=True)


@dataclass
class RecurrentConfig:
    """``method=recurrent``: the R2D2-style baseline's sequence replay (``docs/recurrent.md``).

    Used by ``method=recurrent`` only (the ``recurrent_baseline`` network,
    :class:`~torchrl_rise.replay.SequenceReplayBuffer`, ``make_recurrent_actor``,
    :class:`~torchrl_rise.objectives.SequenceIQNLoss`); everything else (IQN, Munchausen,
    dueling, noisy nets, n-step, PER, target copies, eps schedule, one update per vector step) is
    the same BTR agent. The ``replay`` section still sets the buffer's capacity, PER options and
    ``learning_starts``; ``replay.batch_size`` (transitions) is not used: a batch is
    ``batch_size`` *sequences*.

    Attributes:
        burn_in: positions before the trained ones, run without gradient (R2D2: 40); the network
            gets the same value.
        learning_length: trained positions per sequence (R2D2: 80).
        period: episode steps between sequence starts (R2D2: 40).
        batch_size: sequences per update (R2D2: 64; each trains up to ``learning_length`` steps:
            5,120 positions against BTR's 256 transitions).
        recurrent_state: ``stored`` (the actor's state at the sequence start, R2D2) or ``zero``.
        state_dtype: dtype of the stored ``(h, c)``: ``float16``, ``bfloat16`` or ``float32``.
        sequence_priority_eta: a sequence's priority is ``eta * max + (1 - eta) * mean`` of its
            per-step priorities (R2D2: 0.9).
    """

    burn_in: int = 40
    learning_length: int = 80
    period: int = 40
    batch_size: int = 64
    recurrent_state: str = "stored"
    state_dtype: str = "float16"
    sequence_priority_eta: float = 0.9

    def validate(self) -> None:
        """Check the section's values (``method=recurrent`` only)."""
        for name, low in (("burn_in", 0), ("learning_length", 1), ("period", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"recurrent.{name} must be an integer >= {low}, got {value!r}.")
        from torchrl_rise.replay.sequence import RECURRENT_STATE_MODES

        _check_choice(self.recurrent_state, RECURRENT_STATE_MODES, "recurrent.recurrent_state")
        _check_dtype(self.state_dtype, "recurrent.state_dtype")
        _probability(self.sequence_priority_eta, "recurrent.sequence_priority_eta")


@dataclass
class ExplorationConfig:
    """Epsilon-greedy on top of noisy nets, then off (BTR).

    Attributes:
        schedule: ``btr_exponential`` (BTR's code: ``eps -= (eps - eps_end) / N`` at every stored
            transition, ``N = eps_decay_frames / frame skip``) or ``linear`` (``eps_start`` to
            ``eps_end`` over ``eps_decay_frames``).
        eps_off_after_frames: eps is 0 from then on (0: never).
    """

    schedule: str = "btr_exponential"
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay_frames: int = 8_000_000
    eps_off_after_frames: int = 100_000_000

    def validate(self) -> None:
        """Check the section's values."""
        from torchrl_rise.modules.actor import EPS_SCHEDULES

        _check_choice(self.schedule, EPS_SCHEDULES, "exploration.schedule")
        _probability(self.eps_start, "exploration.eps_start")
        _probability(self.eps_end, "exploration.eps_end")
        _positive(self.eps_decay_frames, "exploration.eps_decay_frames")
        _positive(self.eps_off_after_frames, "exploration.eps_off_after_frames", allow_zero=True)


@dataclass
class CollectorConfig:
    """TorchRL collector backend.

    Attributes:
        backend: ``direct`` (``torchrl.collectors.Collector``, one process), ``multi_sync``
            (``MultiSyncCollector``: ``num_workers`` processes on this machine, each stepping
            ``env.num_envs / num_workers`` envs) or ``ray``
            (``torchrl.collectors.distributed.RayCollector``, across machines). Each batch
            holds every env's steps at once (the replay keeps one lane per env). Worker
            processes are spawned (TorchRL's default start method), which every suite supports
            (MiniWorld's OpenGL hangs in forked workers).
        num_workers: worker processes (or Ray actors); must divide ``env.num_envs``.
        steps_per_batch: vector steps per collector batch (one update per vector step is kept).
        weight_sync_interval: ``multi_sync`` and ``ray``: push the learner's weights (network,
            noise, eps) to the workers after every N-th collector batch that ran gradient
            updates (1: after every one, so workers act with the weights of the last batch;
            with BTR's one update per vector step and ``steps_per_batch=1`` that is every N
            updates). Larger values send fewer bytes over the network, and the workers act with
            weights up to N update batches old. ``direct`` acts with the learner's own module,
            so it must stay 1 there.
        overlap: ``direct`` only: collect in a background thread while the main thread stores
            the previous batch and runs its updates
            (:class:`~torchrl_rise.training.overlap.OverlappedCollector`). The thread acts with
            a copy of the policy that is at most one batch staler than the sync loop's; the
            replay ratio, counters, checkpoints and resume are exactly the sync loop's for the
            batches stored, and runs are not bit-reproducible. ``false``: collect, then learn,
            strictly alternating (reproducible on CPU).
        ray_init: ``ray.init`` keyword arguments (e.g. ``{"address": "auto"}``; empty: the
            cluster named by ``RAY_ADDRESS``, else a new local one).
        ray_remote: per-actor resources (``num_cpus``, ``num_gpus``, ``memory``; empty: one CPU,
            no GPU). The remote collectors' policy runs on ``device`` when ``num_gpus`` is set,
            on the CPU otherwise.
        timeout_s: ``multi_sync`` and ``ray``: the longest the loop waits for a batch or a
            weight push before it treats the workers as lost (``null``: no bound). A dead
            worker is noticed within a fraction of a second whatever this is
            (:mod:`torchrl_rise.training.supervision`).
        max_restarts: ``multi_sync`` and ``ray``: how many times a run (per start) rebuilds
            the collector after a worker died or hung; one more loss fails the run with a crash
            checkpoint. ``0``: the first loss fails the run.
    """

    backend: str = "direct"
    num_workers: int = 1
    steps_per_batch: int = 1
    weight_sync_interval: int = 1
    overlap: bool = False
    ray_init: dict[str, Any] = field(default_factory=dict)
    ray_remote: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = 300.0
    max_restarts: int = 3

    def validate(self) -> None:
        """Check the section's values and the options its backend supports."""
        _check_choice(self.backend, BACKENDS, "collector.backend")
        _positive(self.num_workers, "collector.num_workers")
        _positive(self.steps_per_batch, "collector.steps_per_batch")
        _positive(self.weight_sync_interval, "collector.weight_sync_interval")
        if self.timeout_s is not None:
            _positive(self.timeout_s, "collector.timeout_s (null: no bound)")
        _positive(self.max_restarts, "collector.max_restarts", allow_zero=True)
        if self.backend == "direct" and self.weight_sync_interval != 1:
            raise ConfigError(
                f"collector.weight_sync_interval={self.weight_sync_interval} has no effect with "
                "collector.backend=direct, which acts with the learner's own network: leave it at "
                "1, or use collector.backend=multi_sync / ray."
            )
        if self.backend == "direct" and self.num_workers != 1:
            raise ConfigError(
                f"collector.backend=direct runs in one process but collector.num_workers="
                f"{self.num_workers}. Use collector.backend=multi_sync for workers."
            )
        if self.overlap and self.backend != "direct":
            raise ConfigError(
                f"collector.overlap=true runs the single-process collector in a thread; "
                f"collector.backend={self.backend!r} is not supported with it yet. Use "
                "collector.backend=direct (ALE's vector env steps in C++ threads), or "
                "collector.overlap=false."
            )


@dataclass
class EvalConfig:
    """Periodic evaluation on separate envs: noise off, eps-greedy with ``eps`` (BTR: 0.01)."""

    interval_frames: int = 1_000_000
    episodes: int = 100
    num_envs: int = 8
    eps: float = 0.01
    max_steps: int = 27_000
    video: bool = False
    video_fps: int = 30
    final: bool = True

    def validate(self) -> None:
        """Check the section's values."""
        for name in ("interval_frames", "episodes", "num_envs", "max_steps"):
            _positive(getattr(self, name), f"eval.{name}")
        _probability(self.eps, "eval.eps")


@dataclass
class LoggingConfig:
    """Where and how the run is logged.

    Attributes:
        root: parent of the run directory ``<root>/<suite>/<env>/<method>/seed<seed>/<time>``.
        run_dir: use this directory instead (e.g. hydra's output dir).
        backends: any of ``csv`` (always written: ``train.csv``/``eval.csv``), ``tensorboard``,
            ``wandb``.
        interval_frames: a ``train.csv`` row every this many frames.
        progress: show a tqdm progress bar.
        wandb_project: W&B project when ``wandb`` is among the backends.
    """

    root: str = "runs"
    run_dir: str | None = None
    backends: list[str] = field(default_factory=lambda: ["csv"])
    interval_frames: int = 10_000
    progress: bool = True
    wandb_project: str = "torchrl_rise"

    def validate(self) -> None:
        """Check the section's values."""
        unknown = [b for b in self.backends if b not in LOGGER_BACKENDS]
        if unknown:
            raise ConfigError(
                f"logging.backends has unknown entries {unknown}; choose from {LOGGER_BACKENDS}."
            )
        _positive(self.interval_frames, "logging.interval_frames")


@dataclass
class CheckpointConfig:
    """Periodic and on-signal checkpoints (model, target, optimizer, replay, counters, RNG)."""

    interval_frames: int = 1_000_000
    keep: int = 2
    save_replay: bool = True

    def validate(self) -> None:
        """Check the section's values."""
        _positive(self.interval_frames, "checkpoint.interval_frames")
        _positive(self.keep, "checkpoint.keep")


@dataclass
class TrainConfig:
    """Everything a training run needs; see ``docs/training.md``.

    ``resume`` is ``false`` (a new run), ``true`` (continue the run of ``logging.run_dir``, or the
    newest of this suite/env/method/seed; a run without a checkpoint starts again from frame 0)
    or a run directory / checkpoint path. ``resume_allow_changes`` lists the config keys a resume
    may change although they change the learning problem (:mod:`torchrl_rise.training.resume`).

    Example:
        >>> cfg = TrainConfig(method="btr", total_frames=50_000_000)
        >>> validate_config(cfg) is cfg
        True
        >>> cfg.replay.batch_size, cfg.encoder.context_length
        (256, 80)
    """

    method: str = "rise"
    seed: int = 0
    total_frames: int = 200_000_000
    device: str = "cpu"
    num_threads: int | None = None
    resume: Any = False
    resume_allow_changes: list[str] = field(default_factory=list)
    env: EnvConfig = field(default_factory=EnvConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def uses_context(self) -> bool:
        """Whether the method reads the frozen-embedding context window."""
        return self.method == "rise"

    @property
    def uses_sequences(self) -> bool:
        """Whether the method learns from stored sequences (``method=recurrent``)."""
        return self.method == "recurrent"


SCHEMA_NAME = "train_schema"


def register_configs() -> None:
    """Store :class:`TrainConfig` in hydra's ``ConfigStore`` as ``train_schema`` (idempotent).

    The recipes' YAML files start their defaults list with ``train_schema``, so the dataclass
    defaults are the recipe defaults and a misspelt key fails at composition.

    Example:
        >>> from hydra.core.config_store import ConfigStore
        >>> register_configs()
        >>> "train_schema.yaml" in ConfigStore.instance().list("")
        True
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema_node())


def free_form_keys(schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """Dotted keys of the config's free-form ``dict[str, Any]`` options (``network.kwargs``...).

    Example:
        >>> "collector.ray_remote" in free_form_keys() and "network.kwargs" in free_form_keys()
        True
    """
    hints = typing.get_type_hints(schema)
    found = []
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found += free_form_keys(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is dict:
            found.append(f"{prefix}{f.name}")
    return found


def schema_node() -> Any:
    """:class:`TrainConfig` as an OmegaConf node whose free-form dicts accept new keys.

    Hydra puts the composed config in struct mode, so ``collector.ray_remote={num_cpus: 2}`` on
    the command line would fail with "Key 'num_cpus' is not in struct" for a dict that is empty
    in the schema; the dicts of :func:`free_form_keys` are opened here, once, for every recipe and
    ``compose()`` call. The typed fields (and the dataclass sections) keep rejecting unknown keys.
    """
    from omegaconf import OmegaConf

    node = OmegaConf.structured(TrainConfig)
    for key in free_form_keys():
        OmegaConf.set_struct(OmegaConf.select(node, key), False)
    return node


def load_config(cfg: Any = None, **overrides: Any) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a hydra ``DictConfig``, a dict or a TrainConfig.

    Unknown keys and wrong types are rejected with the offending key's name.

    Args:
        cfg: the configuration (``None`` for the defaults).
        **overrides: dotted-free top-level overrides applied last (e.g. ``seed=3``).

    Example:
        >>> cfg = load_config({"method": "btr", "env": {"num_envs": 8}})
        >>> (cfg.method, cfg.env.num_envs, cfg.env.frame_size)
        ('btr', 8, 84)
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, TrainConfig):
        cfg = OmegaConf.structured(cfg)
    schema = OmegaConf.structured(TrainConfig)
    try:
        merged = OmegaConf.merge(schema, cfg or {}, overrides)
        # Hydra may leave its own node in the config when composed with return_hydra_config.
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"invalid training configuration: {err}\nKeys and types must match TrainConfig "
            "(torchrl_rise/training/config.py; documented in docs/training.md)."
        ) from err
    assert isinstance(obj, TrainConfig)
    return validate_config(obj)


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every value that can be checked without building anything; return ``cfg``.

    Each section checks its own values (``EnvConfig.validate``, ``ReplayConfig.validate``...);
    what involves several sections is checked here, after them.

    Raises:
        ConfigError: naming the key, the bad value and how to fix it.
    """
    cfg.env.validate()
    _validate_run(cfg)
    cfg.encoder.validate(uses_context=cfg.uses_context, method=cfg.method)
    cfg.loss.validate()
    cfg.optim.validate()
    cfg.replay.validate()
    if cfg.uses_sequences:
        cfg.recurrent.validate()
        _validate_sequence_replay(cfg)
    else:
        _validate_transition_batch(cfg)
    _validate_learning_starts(cfg)
    if cfg.replay.scratch_dir:
        _check_writable_dir(Path(cfg.replay.scratch_dir), "replay.scratch_dir")
    cfg.exploration.validate()
    cfg.collector.validate()
    _validate_collector_layout(cfg)
    cfg.eval.validate()
    cfg.logging.validate()
    cfg.checkpoint.validate()
    if not isinstance(cfg.resume, (bool, str)) or cfg.resume == "":
        raise ConfigError(
            "resume must be false, true (the latest run with the same suite/env/method/seed) or "
            f"the path of a run directory or checkpoint; got {cfg.resume!r}."
        )
    from torchrl_rise.training.resume import check_allow_list

    check_allow_list(cfg)
    return cfg


def _validate_run(cfg: TrainConfig) -> None:
    """The top-level keys: ``method``, ``total_frames``, ``device``, ``num_threads``."""
    if cfg.method == "recurrent_baseline":
        raise ConfigError(
            "method=recurrent_baseline is the network's name; the method is method=recurrent "
            "(the R2D2-style baseline: recurrent_baseline network, sequence replay, "
            "SequenceIQNLoss)."
        )
    _check_choice(cfg.method, METHODS, "method")
    _positive(cfg.total_frames, "total_frames")
    if not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {cfg.device!r}.")
    if cfg.num_threads is not None:
        _positive(cfg.num_threads, "num_threads")


def _validate_learning_starts(cfg: TrainConfig) -> None:
    """Learning must start before the run ends."""
    rp = cfg.replay
    frame_skip = suite_frame_skip(cfg)
    if rp.learning_starts * frame_skip > cfg.total_frames:
        raise ConfigError(
            f"replay.learning_starts={rp.learning_starts} transitions are "
            f"{rp.learning_starts * frame_skip} frames (frame skip {frame_skip} on "
            f"{cfg.env.suite}), more than total_frames={cfg.total_frames}: the run would never "
            "learn. Lower replay.learning_starts or raise total_frames."
        )


def _validate_collector_layout(cfg: TrainConfig) -> None:
    """What the collector backend needs of the envs and the encoder."""
    co = cfg.collector
    if co.overlap and cfg.encoder.name == "online":
        raise ConfigError(
            "encoder.name=online embeds with the agent's learning CNN inside the env, which "
            "collector.overlap=true would run while the optimizer changes it: use a frozen "
            "encoder, or collector.overlap=false."
        )
    if cfg.env.num_envs % co.num_workers:
        raise ConfigError(
            f"env.num_envs={cfg.env.num_envs} is not divisible by collector.num_workers="
            f"{co.num_workers}: every worker steps the same number of envs."
        )
    if cfg.encoder.name == "online" and co.backend != "direct":
        raise ConfigError(
            "encoder.name=online embeds with the agent's own (learning) CNN, which runs inside the "
            "env transform; worker processes would keep stale copies of it. Use "
            "collector.backend=direct with the online encoder."
        )


def _validate_transition_batch(cfg: TrainConfig) -> None:
    """``replay.batch_size`` transitions must be servable when learning starts (rise, btr)."""
    rp = cfg.replay
    if rp.batch_size > rp.capacity:
        raise ConfigError(
            f"replay.batch_size={rp.batch_size} is larger than replay.capacity={rp.capacity}: "
            "the buffer can never serve such a batch. Lower the batch or raise the capacity."
        )
    # Learning starts after the first collector batch that brings env_steps to learning_starts:
    # every env lane then holds S steps, of which the last n_step have no complete n-step
    # future yet (a step s is sampleable once step s + n_step is written).
    E, T, n = cfg.env.num_envs, cfg.collector.steps_per_batch, cfg.loss.n_step
    batches = max(1, math.ceil(rp.learning_starts / (E * T)))
    steps = batches * T
    lane = rp.capacity // E
    stack = cfg.env.frame_stack or 4
    # a wrapped lane lost its oldest frame histories
    stored = steps if lane >= steps else lane - (stack - 1)
    servable = E * max(0, stored - n)
    if rp.batch_size > servable:
        enough = E * T * math.ceil((math.ceil(rp.batch_size / E) + n) / T)
        raise ConfigError(
            f"replay.batch_size={rp.batch_size} is more than the buffer can serve when learning "
            f"starts: {servable} transitions ({E} envs x ({stored} steps each after "
            f"{batches} batches of {T} vector steps - loss.n_step={n} steps without a complete "
            f"n-step future), with replay.learning_starts={rp.learning_starts}). Raise "
            f"replay.learning_starts to at least {enough} or lower replay.batch_size."
        )


def _validate_sequence_replay(cfg: TrainConfig) -> None:
    """``method=recurrent``: whether the replay can serve a sequence when learning starts."""
    rc, rp = cfg.recurrent, cfg.replay
    burn = cfg.network.kwargs.get("burn_in")
    if burn is not None and burn != rc.burn_in:
        raise ConfigError(
            f"network.kwargs.burn_in={burn} differs from recurrent.burn_in={rc.burn_in}: the "
            "network must burn in what the replay does. Set recurrent.burn_in only."
        )
    E, n = cfg.env.num_envs, cfg.loss.n_step
    stack = cfg.env.frame_stack or 4
    T = rc.burn_in + rc.learning_length + n
    lane = rp.capacity // E
    if lane < T + stack:
        raise ConfigError(
            f"replay.capacity={rp.capacity} over env.num_envs={E} leaves {lane} records per env; "
            f"a sequence needs recurrent.burn_in + recurrent.learning_length + loss.n_step + "
            f"frame stack = {T + stack}. Raise replay.capacity to at least {(T + stack) * E}."
        )
    # A lane's first sequence (start at step 0) is sampleable once learning_length + n_step
    # steps are written (or its episode ended before, which cannot be known here).
    steps_per_batch = cfg.collector.steps_per_batch
    steps = max(1, math.ceil(rp.learning_starts / (E * steps_per_batch))) * steps_per_batch
    need = rc.learning_length + n
    if steps < need:
        enough = E * steps_per_batch * math.ceil(need / steps_per_batch)
        raise ConfigError(
            f"replay.learning_starts={rp.learning_starts} gives each of the {E} envs {steps} "
            f"steps when learning starts, fewer than recurrent.learning_length + loss.n_step = "
            f"{need}, the steps a sequence needs before it can be sampled (unless its episode "
            f"ends sooner). Raise replay.learning_starts to at least {enough} or lower "
            "recurrent.learning_length."
        )


def suite_frame_skip(cfg: TrainConfig) -> int:
    """Simulator frames per agent step of ``cfg``'s suite (``env.kwargs.frame_skip`` if set).

    The default is the suite module's ``FRAME_SKIP`` (4 for Atari and ViZDoom), else 1.

    Example:
        >>> suite_frame_skip(TrainConfig())
        4
    """
    if "frame_skip" in cfg.env.kwargs:
        return int(cfg.env.kwargs["frame_skip"])
    import importlib

    from torchrl_rise.envs import SUITES as SUITE_MODULES

    try:
        module = importlib.import_module(SUITE_MODULES[cfg.env.suite])
    except ImportError:  # the suite's simulator is missing: make_env will say so
        return 1
    return int(getattr(module, "FRAME_SKIP", 1))


def _check_writable_dir(path: Path, name: str) -> None:
    """Fail now, not at the first write, if ``path`` cannot be created or written to."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"{name}={str(path)!r} cannot be created: {str(probe)!r} is not a directory. "
            "Point it to a directory on a local disk."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{name}={str(path)!r} is not writable: no write permission in {str(probe)!r}. "
            "Point it to a directory you can write to."
        )


def check_disk_space(
    path: str | Path, needed_bytes: int, *, what: str = "the replay buffer", hint: str = ""
) -> None:
    """Raise :class:`ConfigError` if the file system holding ``path`` has less than ``needed_bytes``.

    Example:
        >>> check_disk_space(".", 1)
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes > free:
        raise ConfigError(
            f"{what} needs about {needed_bytes / 2**30:.2f} GiB at {path}, but only "
            f"{free / 2**30:.2f} GiB is free there. {hint}".strip()
        )


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain (JSON-serialisable) nested dicts."""
    return dataclasses.asdict(cfg)
