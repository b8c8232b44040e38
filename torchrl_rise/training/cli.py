"""The recipes' command line: ``@recipe_main(config_name=...)`` in place of ``@hydra.main``.

Two kinds of mistakes get one clear message on stderr and a non-zero exit code instead of a
traceback:

- a :class:`~torchrl_rise.training.ConfigError` raised while the run is checked, built or run
  (``replay.batch_size must be > 0, got -1.``): ``config error: <message>``, exit code 2;
- a YAML syntax error in a recipe config, a preset or a ``--config-dir`` file, found before hydra
  composes anything: ``<file>:<line>:<column>: YAML syntax error: <problem>``, exit code 2.

Everything else is hydra's own reporting. ``HYDRA_FULL_ERROR=1`` (:data:`DEBUG_ENV`) turns both
off and shows the full tracebacks. In a ``--multirun`` a job's ConfigError does not stop the
sweep: hydra reports it (one line) after the other jobs ran.

Example:
    In ``recipes/<suite>.py``::

        @recipe_main(config_name="memory")
        def main(dict_cfg: DictConfig) -> None:
            run_recipe(dict_cfg, assemble=build_assembly)
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

from torchrl_rise.training.config import ConfigError

__all__ = ["DEBUG_ENV", "YAMLSyntaxError", "check_yaml_files", "recipe_main", "run_recipe"]

#: set to 1 for the full tracebacks (hydra's own switch)
DEBUG_ENV = "HYDRA_FULL_ERROR"
#: exit code of a run stopped by a configuration mistake
CONFIG_ERROR_EXIT_CODE = 2


class YAMLSyntaxError(ConfigError):
    """A config file is not valid YAML; the message starts with ``file:line:column``."""


class _JobConfigError(CompactHydraException):
    """A multirun job's ConfigError: hydra prints its message only."""


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def check_yaml_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Parse every ``*.yaml`` file in ``paths`` (files or folders, recursively); nothing is built.

    Raises:
        YAMLSyntaxError: the first file that does not parse, as
            ``<file>:<line>:<column>: YAML syntax error: <problem> (<context>)``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "bad.yaml").write_text("replay:\\n  batch_size: [1, 2\\nseed: 3\\n")
        >>> try:
        ...     check_yaml_files([folder])
        ... except YAMLSyntaxError as err:
        ...     print(str(err).split(": ", 1)[0].endswith("bad.yaml:3:5"))
        True
    """
    import yaml

    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # missing or unreadable: hydra reports it when (if) it reads the file
            try:
                for _ in yaml.compose_all(text, Loader=yaml.SafeLoader):
                    pass
            except yaml.MarkedYAMLError as err:
                raise YAMLSyntaxError(_describe_yaml_error(file, err)) from err


def _describe_yaml_error(file: Path, err: Any) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
    problem = err.problem or "invalid YAML"
    context = ""
    if err.context and err.context_mark is not None:
        context = (
            f" ({err.context} at line {err.context_mark.line + 1}, column "
            f"{err.context_mark.column + 1})"
        )
    return f"{where}: YAML syntax error: {problem}{context}."


def _option_values(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """Values of ``--name value`` / ``--name=value`` options in ``argv``."""
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def _config_files(recipe_dir: Path, config_dir: Path, argv: Sequence[str]) -> list[Path]:
    """The YAML a recipe run can read: its config folder, the presets, ``--config-dir`` folders."""
    from torchrl_rise.training import presets

    # hydra reads --config-path relative to the recipe's file, --config-dir relative to the cwd
    dirs = [recipe_dir / p for p in _option_values(argv, ("--config-path", "-cp"))] or [config_dir]
    dirs.append(Path(presets.__file__).parent)
    dirs += [Path(p) for p in _option_values(argv, ("--config-dir", "-cd"))]
    return [d.expanduser() for d in dirs]


def _report(message: str) -> None:
    # the command line's own output: the recipes' logging goes to stdout (hydra_settings.yaml)
    sys.stderr.write(f"{message}\n(set {DEBUG_ENV}=1 for the full traceback)\n")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _guard(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``task`` with its ConfigErrors turned into one message and exit code 2."""

    @functools.wraps(task)
    def run(cfg: Any) -> Any:
        try:
            return task(cfg)
        except ConfigError as err:
            if _debug():
                raise
            if _in_multirun():  # hydra records the failed job and runs the others
                raise _JobConfigError(f"config error: {err}") from None
            _report(f"config error: {err}")
            raise SystemExit(CONFIG_ERROR_EXIT_CODE) from None

    return run


def recipe_main(
    *, config_name: str, config_path: str = "config", version_base: str = "1.3"
) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``hydra.main`` for the training recipes, with short config-error messages (see module).

    It also registers the ``train_schema`` structured config (the base of every recipe's YAML)
    and the presets (so ``--help`` lists them) before hydra reads anything.

    Args:
        config_name: the primary config (``recipes/config/<config_name>.yaml``).
        config_path: the config folder, relative to the recipe's file.
        version_base: hydra's version base.
    """
    from torchrl_rise.training.config import register_configs
    from torchrl_rise.training.presets import register_presets

    register_configs()  # the TrainConfig dataclasses as `train_schema`
    register_presets()  # the presets (quickstart, debug, tiny, cpu_*) in --help

    def decorator(task: Callable[[Any], Any]) -> Callable[[], Any]:
        recipe_dir = Path(inspect.getfile(task)).resolve().parent
        config_dir = (recipe_dir / config_path).resolve()
        hydra_main = hydra.main(
            config_path=str(config_dir), config_name=config_name, version_base=version_base
        )(_guard(task))

        @functools.wraps(task)
        def main() -> Any:
            if not _debug():
                try:
                    check_yaml_files(_config_files(recipe_dir, config_dir, sys.argv[1:]))
                except YAMLSyntaxError as err:
                    _report(str(err))
                    raise SystemExit(CONFIG_ERROR_EXIT_CODE) from None
            return hydra_main()

        return main

    return decorator


def run_recipe(dict_cfg: Any, *, assemble: Callable[[Any], Any]) -> dict[str, Any]:
    """Train the run ``dict_cfg`` describes with the pieces ``assemble(cfg)`` builds.

    ``cfg`` is the validated :class:`~torchrl_rise.training.TrainConfig`; ``assemble`` is
    :func:`~torchrl_rise.training.builders.build_assembly` for every recipe of this repository.
    The trainer collects, stores, learns, evaluates, logs and checkpoints, and writes
    ``summary.json``; its summary is returned.
    """
    from torchrl_rise.training import Trainer, load_config

    cfg = load_config(dict_cfg)
    return Trainer.from_components(cfg, assemble(cfg)).run()
