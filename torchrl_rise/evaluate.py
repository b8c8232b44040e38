"""Score a checkpoint without training it: ``python -m torchrl_rise.evaluate <run or checkpoint>``.

::

    python -m torchrl_rise.evaluate runs/memory/cue-L6/rise/seed0/20260101-120000-000000
    python -m torchrl_rise.evaluate <run>/checkpoints/frames_000000500000 episodes=100 eps=0.0
    python -m torchrl_rise.evaluate <run> output=scores.json device=cuda

The run's ``config.json`` rebuilds the evaluation envs and the network (with the package's
builders, as ``train(cfg)`` does); the checkpoint's actor weights are loaded (every file verified
against its manifest, ``torch.load(weights_only=True)``) and scored exactly as the trainer's
periodic evaluation does (noise off, eps-greedy, raw episode scores; docs/training.md). It prints
the mean and std return (and the success rate where the env reports one) and writes a JSON.

Read-only: nothing is written into the run directory (the JSON goes to ``output=``, by default
``./eval-<run>-<checkpoint>.json`` in the working directory), no replay buffer is built, the run's
lock is not taken (a live run's checkpoints can be scored while it trains; a checkpoint it prunes
meanwhile fails its verification: score it again).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchrl_rise._fileio import write_atomic

__all__ = ["EvalOptions", "evaluate_checkpoint", "main"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class EvalOptions:
    """What to change from the run's ``eval`` config (``None``: the run's value).

    Attributes:
        episodes: episodes to score (``eval.episodes``).
        eps: probability of a random action (``eval.eps``; BTR: 0.01).
        max_steps: per-episode step limit (``eval.max_steps``).
        num_envs: evaluation envs in parallel (``eval.num_envs``).
        seed: the run's seed (picks the evaluation envs' seeds and the eps draws).
        device: where the network runs (default ``cpu``).

    Example:
        >>> EvalOptions(episodes=10).episodes
        10
    """

    episodes: int | None = None
    eps: float | None = None
    max_steps: int | None = None
    num_envs: int | None = None
    seed: int | None = None
    device: str = "cpu"


def _run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _config(run: Path, options: EvalOptions) -> Any:
    from torchrl_rise.training.config import ConfigError, load_config

    file = run / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: evaluating a checkpoint rebuilds its envs and network from "
            "the run's config.json (written when the run started); pass a checkpoint of a run "
            "directory made by the trainer."
        )
    raw = json.loads(file.read_text())
    raw["resume"] = False
    raw["device"] = options.device
    if options.seed is not None:
        raw["seed"] = options.seed
    overrides = {
        "episodes": options.episodes,
        "eps": options.eps,
        "max_steps": options.max_steps,
        "num_envs": options.num_envs,
    }
    raw.setdefault("eval", {}).update({k: v for k, v in overrides.items() if v is not None})
    try:
        return load_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{file}: {err}") from err


def evaluate_checkpoint(
    path: str | Path,
    options: EvalOptions | None = None,
    *,
    build: Callable[[Any], tuple[Any, Any, Any, Callable[[], Any]]] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on its run's evaluation envs; return the result (JSON-safe).

    Args:
        path: a run directory (its ``latest`` checkpoint) or a checkpoint folder.
        options: what to change from the run's ``eval`` config.
        build: ``build(cfg) -> (env_info, actor, net, eval_env_factory)`` (the actor holds
            ``net``; the checkpoint's ``actor`` weights are loaded into it) for a run whose
            recipe assembles its pieces differently from the package's builders.

    Returns:
        ``checkpoint``, ``run_dir``, ``method``, ``suite``, ``env_id``, ``frames``, ``updates``,
        ``episodes``, ``eps``, the statistics of ``eval.csv`` (``mean``, ``std``, ``median``,
        ``min``, ``max``, ``n``, ``success_rate``) and the per-episode ``scores``/``lengths``.

    Raises:
        FileNotFoundError: no checkpoint at ``path``, or its run has no ``config.json``.
        CheckpointCorruptError: a checkpoint file is missing or damaged (the message names it).
    """
    from torchrl_rise.training.builders import evaluation_policy
    from torchrl_rise.training.checkpoint import find_latest_checkpoint, load_checkpoint
    from torchrl_rise.training.evaluation import evaluate

    options = options or EvalOptions()
    ckpt = find_latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint at {path}: pass a run directory holding checkpoints/ or a checkpoint "
            "folder (checkpoints/frames_<N>) holding state.pt."
        )
    run = _run_dir_of(ckpt)
    cfg = _config(run, options)
    state = load_checkpoint(ckpt, map_location=options.device)["state"]
    _check_same_run(state, cfg, ckpt=ckpt, run=run)
    env_info, actor, net, eval_env_factory = (build or _build)(cfg)
    actor.load_state_dict(state["actor"])  # the network's weights and the eps schedule's
    policy = evaluation_policy(cfg, net)
    torch.manual_seed(cfg.seed)
    env = eval_env_factory()
    try:
        result = evaluate(
            policy,
            env,
            episodes=cfg.eval.episodes,
            eps=cfg.eval.eps,
            max_steps=cfg.eval.max_steps,
            score_key=env_info.score_key,
            success_key=env_info.success_key or "success",
            frame_channels=env_info.frame_channels,
            device=None if cfg.device == "cpu" else cfg.device,
        )
    finally:
        env.close()
    return _result(result, cfg=cfg, state=state, ckpt=ckpt, run=run)


def _check_same_run(state: dict[str, Any], cfg: Any, *, ckpt: Path, run: Path) -> None:
    """Raise ``ConfigError`` unless the checkpoint was trained on the method and env of ``cfg``."""
    from torchrl_rise.training.config import ConfigError

    for key, mine in (("method", cfg.method), ("suite", cfg.env.suite), ("env_id", cfg.env.env_id)):
        if state.get(key) != mine:
            raise ConfigError(
                f"checkpoint {ckpt} was trained with {key}={state.get(key)!r}, but {run} "
                f"/{CONFIG_FILE} says {key}={mine!r}: is the checkpoint from another run?"
            )


def _result(
    result: Any, *, cfg: Any, state: dict[str, Any], ckpt: Path, run: Path
) -> dict[str, Any]:
    """The JSON-safe record of one evaluation (see :func:`evaluate_checkpoint`'s Returns)."""
    counters = state.get("counters", {})
    return {
        "checkpoint": str(ckpt),
        "run_dir": str(run),
        "method": cfg.method,
        "suite": cfg.env.suite,
        "env_id": cfg.env.env_id,
        "frames": int(counters.get("frames", 0)),
        "updates": int(counters.get("updates", 0)),
        "episodes": cfg.eval.episodes,
        "eps": cfg.eval.eps,
        "seed": cfg.seed,
        **{k: _finite(v) for k, v in result.row().items()},
        "scores": [float(s) for s in result.scores],
        "lengths": [int(n) for n in result.lengths],
        "evaluated_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _build(cfg: Any) -> tuple[Any, Any, Any, Callable[[], Any]]:
    """The evaluation side of :func:`~torchrl_rise.training.builders.build_assembly`."""
    from torchrl_rise.training.builders import (
        build_actor,
        build_encoder,
        build_network,
        make_env_factory,
        probe_env,
    )

    env_info, action_spec = probe_env(make_env_factory(cfg))
    encoder = (
        build_encoder(cfg, frame_channels=env_info.frame_channels) if cfg.uses_context else None
    )
    embedding_dim = int(encoder.embedding_dim) if encoder is not None else None
    net = build_network(cfg, env_info=env_info, embedding_dim=embedding_dim).to(cfg.device)
    actor = build_actor(cfg, net, env_info=env_info, action_spec=action_spec)
    return env_info, actor, net, make_env_factory(cfg, eval_mode=True, encoder=encoder)


_KEYS = {
    "episodes": int,
    "eps": float,
    "max_steps": int,
    "num_envs": int,
    "seed": int,
    "device": str,
    "output": str,
}


def _parse(argv: Sequence[str] | None) -> tuple[Path, EvalOptions, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_rise.evaluate",
        description="Score a checkpoint without training (nothing is written into the run).",
        epilog="overrides: " + ", ".join(f"{k}=<{t.__name__}>" for k, t in _KEYS.items()),
    )
    parser.add_argument("path", type=Path, help="a run directory or a checkpoint folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS:
            parser.error(
                f"{item!r} is not an override: use key=value with key one of {', '.join(_KEYS)} "
                "(e.g. episodes=100)."
            )
        try:
            values[key] = _KEYS[key](value)
        except ValueError:
            parser.error(f"{key}={value!r}: expected {_KEYS[key].__name__}.")
    output = values.pop("output", None)
    return args.path, EvalOptions(**values), Path(output) if output else None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: score, print the summary line, write the JSON; returns the result."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    path, options, output = _parse(argv)
    result = evaluate_checkpoint(path, options)
    ckpt = Path(result["checkpoint"])
    if output is None:
        output = Path.cwd() / f"eval-{_run_dir_of(ckpt).name}-{ckpt.name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, (json.dumps(result, indent=1) + "\n").encode())
    line = (
        f"{ckpt} ({result['frames']} frames): mean return {result['mean']} +- {result['std']} "
        f"over {result['n']} episodes"
    )
    if result["success_rate"] is not None:
        line += f", success rate {result['success_rate']:.3f}"
    sys.stdout.write(f"{line}\nwrote {output}\n")
    return result


if __name__ == "__main__":
    main()
