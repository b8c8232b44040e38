"""What a resume may change: the config a checkpoint was trained with against the one resuming it.

A checkpoint records the resolved config it was trained with (``state["config"]``; older
checkpoints fall back to the run's ``config.json``). Resuming compares it with the new config,
key by dotted key (``network.kwargs.width_scale``), and sorts every difference into one of:

- **ignored**: where the run is and how it was started (``resume``, ``resume_allow_changes``,
  ``logging.root``, ``logging.run_dir``) and sections the method does not use (``encoder.*``
  outside ``method=rise``, ``recurrent.*`` outside ``method=recurrent``, ``replay.batch_size``
  for ``method=recurrent``);
- **free**: how the run is operated, not what it learns (:data:`FREE`): accepted and recorded;
- **fixed**: what the checkpoint's weights and replay are shaped by, or what makes it this run
  (:data:`FIXED`): never accepted, a new run is needed;
- **guarded**: everything else (the learning problem: ``encoder.context_length``,
  ``replay.batch_size``, ``loss.gamma``, ``optim.lr``, ``seed``...): refused unless named in
  ``resume_allow_changes``.

Every difference goes into one :class:`~torchrl_rise.training.config.ConfigError` naming each key
with both values; ``total_frames`` below the frames already trained is refused too. Accepted
changes go to ``<run>/config_history.jsonl`` (:func:`record_config`); ``config.json`` stays the
record of the run's first start.

Example:
    >>> from torchrl_rise.training.config import TrainConfig, config_to_dict
    >>> trained = config_to_dict(TrainConfig(method="btr"))
    >>> now = TrainConfig(method="btr", total_frames=300_000_000)
    >>> [(c.key, c.kind) for c in check_resume(trained, now, frames=10, checkpoint="ckpt")]
    [('total_frames', 'free')]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchrl_rise._fileio import write_atomic
from torchrl_rise.training.config import ConfigError, TrainConfig, config_to_dict

__all__ = [
    "FIXED",
    "FREE",
    "HISTORY_FILE",
    "IGNORED",
    "Change",
    "check_allow_list",
    "check_resume",
    "diff_configs",
    "flatten",
    "plain_config",
    "record_config",
    "trained_config",
]

logger = logging.getLogger(__name__)

HISTORY_FILE = "config_history.jsonl"
CONFIG_FILE = "config.json"

# A rule names a key or a section (it covers ``rule`` and ``rule.*``).
IGNORED = ("resume", "resume_allow_changes", "logging.root", "logging.run_dir")
FREE = (
    "total_frames",  # upwards, or down to the frames already trained
    "num_threads",
    "device",
    "logging",
    "eval",
    "env.eval_kwargs",
    "checkpoint",
    "collector.backend",
    "collector.num_workers",
    "collector.overlap",
    "collector.weight_sync_interval",
    "collector.ray_init",
    "collector.ray_remote",
    "replay.prefetch",
    "replay.scratch_dir",
)
# What the run is, and what shapes its weights, embeddings and replay layout.
FIXED = (
    "method",
    "env.suite",
    "env.env_id",
    "env.num_envs",
    "env.frame_size",
    "env.frame_stack",
    "encoder.name",
    "encoder.weights",
    "encoder.dtype",
    "encoder.kwargs",
    "network",
    "loss.n_step",
    "replay.capacity",
    "replay.prioritized",
    "recurrent.burn_in",
    "recurrent.learning_length",
    "recurrent.period",
    "recurrent.recurrent_state",
    "recurrent.state_dtype",
)
# Sections a method does not read: never compared for it.
_UNUSED = {
    "btr": ("encoder", "recurrent"),
    "rise": ("recurrent",),
    "recurrent": ("encoder", "replay.batch_size"),
}
_UNSET = "<unset>"


@dataclass(frozen=True)
class Change:
    """One config key that differs: the trained value, the new one and its kind.

    ``kind`` is ``free``, ``guarded`` or ``fixed`` (see the module docstring); a value that one
    side lacks is ``"<unset>"``.
    """

    key: str
    trained: Any
    now: Any
    kind: str

    def line(self) -> str:
        return f"{self.key}: {_show(self.trained)} (trained) -> {_show(self.now)} (now)"


def _covers(rule: str, key: str) -> bool:
    return key == rule or key.startswith(rule + ".")


def _matches(rules: tuple[str, ...] | list[str], key: str) -> bool:
    return any(_covers(rule, key) for rule in rules)


def kind_of(key: str) -> str:
    """``ignored``, ``fixed``, ``free`` or ``guarded`` (see the module docstring)."""
    if _matches(IGNORED, key):
        return "ignored"
    if _matches(FIXED, key):
        return "fixed"
    if _matches(FREE, key):
        return "free"
    return "guarded"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; empty dicts vanish, lists are values.

    Example:
        >>> flatten({"network": {"kwargs": {"width_scale": 0.5}}, "seed": 0, "eval": {}})
        {'network.kwargs.width_scale': 0.5, 'seed': 0}
    """
    flat: dict[str, Any] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def plain_config(cfg: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as JSON values only (what ``config.json`` and a checkpoint's state hold)."""
    data = config_to_dict(cfg) if isinstance(cfg, TrainConfig) else dict(cfg)
    return json.loads(json.dumps(data, default=str))


def _schema_fields(cls: type = TrainConfig, prefix: str = "") -> set[str]:
    """Every dataclass field of the schema as a dotted path (dict fields such as kwargs too)."""
    paths = set()
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        paths.add(path)
        sub = f.default_factory
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            paths |= _schema_fields(sub, path + ".")
    return paths


def _in_schema(key: str, fields: set[str]) -> bool:
    """Whether ``key`` is a schema field or lies under one (``network.kwargs.anything``)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in fields for i in range(1, len(parts) + 1))


def diff_configs(
    trained: Mapping[str, Any], now: Mapping[str, Any], *, complete: bool = True
) -> list[Change]:
    """Every compared key whose value differs between ``trained`` and ``now``, sorted by key.

    Keys ``trained`` lacks are compared with the schema default (a field added since it was
    written); keys of fields the schema no longer has are skipped. With ``complete=False`` (an
    old checkpoint that recorded only a few keys) only the keys ``trained`` has are compared.
    """
    fields = _schema_fields()
    old, new = flatten(plain_config(trained)), flatten(plain_config(now))
    if complete:
        defaults = flatten(plain_config(TrainConfig()))
        old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
    method = new.get("method", old.get("method"))
    unused = _UNUSED.get(method, ())
    keys = sorted(old if not complete else set(old) | set(new))
    changes = []
    for key in keys:
        kind = kind_of(key)
        if kind == "ignored" or _matches(unused, key) or not _in_schema(key, fields):
            continue
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        if a != b:
            changes.append(Change(key, a, b, kind))
    return changes


def check_allow_list(cfg: TrainConfig) -> None:
    """``resume_allow_changes`` must name config keys (or sections) a resume may change.

    Raises:
        ConfigError: an entry that is not a config key, or one that can never change (fixed).
    """
    allow = cfg.resume_allow_changes
    if not isinstance(allow, (list, tuple)) or not all(isinstance(k, str) for k in allow):
        raise ConfigError(
            f"resume_allow_changes must be a list of config keys, e.g. "
            f"resume_allow_changes=[replay.batch_size,optim.lr]; got {allow!r}."
        )
    fields = _schema_fields()
    for key in allow:
        if not _in_schema(key, fields):
            raise ConfigError(
                f"resume_allow_changes names {key!r}, which is not a config key (dotted, e.g. "
                "replay.batch_size or encoder.context_length; see docs/training.md)."
            )
        if _matches(FIXED, key) or any(_covers(key, rule) for rule in FIXED):
            raise ConfigError(
                f"resume_allow_changes names {key!r}, which covers keys a resume can never "
                f"change ({', '.join(r for r in FIXED if _covers(key, r) or _covers(r, key))}: "
                "they shape the checkpoint's weights, embeddings or replay, or make it another "
                "run). Name only the keys you mean to change (e.g. encoder.context_length), or "
                "start a new run in another logging.run_dir."
            )


def check_resume(
    trained: Mapping[str, Any] | None,
    cfg: TrainConfig,
    *,
    frames: int,
    checkpoint: str | Path,
    complete: bool = True,
) -> list[Change]:
    """The accepted changes of resuming ``checkpoint`` (trained with ``trained``) under ``cfg``.

    Args:
        trained: the config the checkpoint was trained with (``None``: unknown, nothing compared
            but ``total_frames``).
        cfg: the config of this start.

    Keyword Args:
        frames: the frames the checkpoint has trained.
        checkpoint: its path (named in the error).
        complete: whether ``trained`` is a whole config (see :func:`diff_configs`).

    Raises:
        ConfigError: one message naming every refused key with both values, what works, and
            ``total_frames`` if it is below ``frames``.
    """
    changes = diff_configs(trained, config_to_dict(cfg), complete=complete) if trained else []
    allow = list(cfg.resume_allow_changes)
    fixed = [c for c in changes if c.kind == "fixed"]
    guarded = [c for c in changes if c.kind == "guarded" and not _matches(allow, c.key)]
    too_short = cfg.total_frames < frames
    if not (fixed or guarded or too_short):
        return changes
    lines = [
        f"  {c.line()}" + ("  [cannot change on a resume]" if c.kind == "fixed" else "")
        for c in fixed + guarded
    ]
    if too_short:
        lines.append(f"  total_frames: {cfg.total_frames} is below the {frames} frames trained")
    put_back = " ".join(_override(c) for c in fixed + guarded)
    if too_short:
        put_back = f"{put_back} total_frames={frames}".strip()
    if fixed:
        names = ", ".join(c.key for c in fixed)
        fix = (
            f"{names} cannot change on a resume (the checkpoint's weights, embeddings or replay "
            f"are shaped by it, or it makes another run). Resume with the trained values "
            f"({put_back}); for the new config, start a new run in another logging.run_dir."
        )
    else:
        keys = ",".join(c.key for c in guarded)
        fix = (
            f"Resume with the trained values ({put_back}), or accept "
            f"{'the change' if len(guarded) == 1 else 'the changes'} with "
            f"resume_allow_changes=[{keys}] (recorded in {HISTORY_FILE})"
            + (f" and total_frames={frames} or more." if too_short else ".")
        )
    if not (fixed or guarded):
        fix = f"Resume with total_frames={frames} or more (total_frames={frames} just finishes it)."
    raise ConfigError(
        f"cannot resume from {checkpoint} ({frames} frames trained): this config differs from "
        "the one it was trained with:\n" + "\n".join(lines) + "\n" + fix
    )


def _override(change: Change) -> str:
    """The command-line override that puts ``change``'s key back to its trained value."""
    if change.trained == _UNSET:
        return f"~{change.key}"
    prefix = "+" if change.now == _UNSET else ""
    return f"{prefix}{change.key}={_hydra_value(change.trained)}"


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def _show(value: Any) -> str:
    return value if value == _UNSET else json.dumps(value, default=str)


def trained_config(
    state: Mapping[str, Any], run_dir: str | Path
) -> tuple[dict[str, Any] | None, bool]:
    """The config a checkpoint's ``state`` was trained with, and whether it is complete.

    The checkpoint's own ``state["config"]`` (checkpoints since this module exist); else the
    run's ``config.json`` (which older versions rewrote at every accepted start); else only the
    method, suite and env id every checkpoint records (``complete`` is then ``False``).
    """
    if isinstance(state.get("config"), Mapping):
        return dict(state["config"]), True
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text()), True
    except (OSError, ValueError):
        pass
    if "method" not in state:
        return None, False
    env = {"suite": state.get("suite"), "env_id": state.get("env_id")}
    return {"method": state.get("method"), "env": env}, False


def record_config(
    run_dir: str | Path,
    config: Mapping[str, Any],
    changes: list[Change],
    *,
    frames: int,
    checkpoint: str | Path | None,
) -> Path | None:
    """Write the run's config record; return the history file if a line was added.

    A start from frame 0 writes ``config.json`` (the run's original config). A resume leaves it
    as it is (writing it only if it is missing) and, if it changed anything, appends one line to
    ``config_history.jsonl``: ``{"time", "frames", "checkpoint", "changes": {key: {"from",
    "to"}}}``. The current config is ``config.json`` with every line applied in order (and
    ``summary.json``'s ``config``, and each checkpoint's ``state["config"]``).
    """
    run_dir = Path(run_dir)
    if checkpoint is None or not (run_dir / CONFIG_FILE).exists():
        write_atomic(run_dir / CONFIG_FILE, json.dumps(config, indent=2, default=str).encode())
    if checkpoint is None or not changes:
        return None
    entry = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "frames": int(frames),
        "checkpoint": os.path.relpath(checkpoint, run_dir),
        "changes": {c.key: {"from": c.trained, "to": c.now} for c in changes},
    }
    path = run_dir / HISTORY_FILE
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    logger.warning(
        "resumed with a changed config (recorded in %s): %s",
        path,
        "; ".join(c.line() for c in changes),
    )
    return path
