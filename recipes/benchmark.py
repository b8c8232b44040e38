"""Run a benchmark grid (suites x envs x seeds x methods) and aggregate it into a report.

Each grid cell is one independent recipe invocation (``python recipes/<suite>.py method=... seed=...
env.env_id=... logging.run_dir=...``) writing ``summary.json``/``eval.csv`` into its own run
directory ``<output_dir>/runs/<suite>/<env>/<method>/seed<seed>``. The cells are run by an existing
engine, chosen with ``launcher.name``:

- ``local``: this machine, ``launcher.workers`` subprocesses at a time;
- ``hydra``: a hydra multirun with one job per pending cell, on any hydra launcher plugin
  (``submitit_slurm`` for SLURM clusters, ``submitit_local`` to try it on one machine);
- ``ray``: one Ray task per pending cell (``ray`` extra; needs a filesystem shared with the workers);
- ``report``: run nothing, only rebuild the report.

Cells whose run directory already holds a finished ``summary.json`` are skipped, so an interrupted
grid resumes where it stopped (an interrupted run with a checkpoint continues from it). Finally
:func:`torchrl_rise.evaluation.build_report` writes ``<output_dir>/report/report.md`` and its plots.

Examples::

    python recipes/benchmark.py grid=memory seeds=[0,1] 'overrides=["total_frames=200000"]'
    python recipes/benchmark.py grid=atari5 launcher.name=hydra \
        launcher.hydra_launcher=submitit_slurm \
        'launcher.hydra_overrides=["hydra.launcher.partition=gpu","hydra.launcher.timeout_min=1440"]'
    python recipes/benchmark.py grid=atari5 launcher.name=report
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torchrl_rise.recipe_path import drop_script_folder

# The recipes beside this script are named like simulator packages (procgen, vizdoom, miniworld)
# that TorchRL probes for at import: drop this folder from the import path so it finds the packages.
drop_script_folder(__file__)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import InterpolationKeyError  # noqa: E402

from torchrl_rise._optional import import_optional  # noqa: E402
from torchrl_rise.evaluation.report import (  # noqa: E402
    CELL_FILE,
    build_report,
    is_run_complete,
    load_run,
)
from torchrl_rise.evaluation.runs import export_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = ("local", "hydra", "ray", "report")
LOG_FILE = "benchmark.log"

logger = logging.getLogger("benchmark")


class GridConfigError(ValueError):
    """The benchmark config is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    suite: str
    env_id: str
    method: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.env_id}/{self.method}/seed{self.seed}"

    def run_dir(self, output_dir: Path) -> Path:
        env_slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.env_id).strip("_") or "env"
        return output_dir / "runs" / self.suite / env_slug / self.method / f"seed{self.seed}"


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_grid(cfg: DictConfig) -> list[Cell]:
    """The grid's cells in a fixed order (suite, env, method, seed), after validating the config."""
    try:
        suites = _plain(cfg.suites)
    except InterpolationKeyError as err:
        grids = sorted(_plain(cfg.get("grids", {})) or {})
        raise GridConfigError(
            f"grid={cfg.get('grid')!r} is not defined; choose one of {grids} or set "
            "`suites` directly, e.g. 'suites={atari: [Pong, Breakout]}'."
        ) from err
    methods, seeds = _plain(cfg.methods), _plain(cfg.seeds)
    if not isinstance(suites, Mapping) or not suites:
        raise GridConfigError(
            f"`suites` must map each suite to a list of env ids, got {suites!r}; e.g. "
            "'suites={memory: [cue-L20]}'."
        )
    for suite, envs in suites.items():
        if not isinstance(envs, list) or not envs or not all(isinstance(e, str) for e in envs):
            raise GridConfigError(
                f"suites.{suite} must be a non-empty list of env ids, got {envs!r}."
            )
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise GridConfigError(f"`methods` must be a non-empty list of names, got {methods!r}.")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise GridConfigError(f"`seeds` must be a non-empty list of integers, got {seeds!r}.")
    from torchrl_rise.training.config import METHODS

    variants = grid_variants(cfg)
    unknown = [m for m in methods if m not in METHODS and m not in variants]
    if unknown:
        raise GridConfigError(
            f"`methods` has unknown entries {unknown}; choose from {list(METHODS)} "
            f"(the recurrent baseline is `recurrent`) or the `variants` {sorted(variants)}."
        )
    for key, values in (("methods", methods), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise GridConfigError(f"`{key}` has duplicates: {values!r}.")
    grid = [
        Cell(str(suite), env, method, int(seed))
        for suite, envs in suites.items()
        for env in dict.fromkeys(envs)
        for method in methods
        for seed in seeds
    ]
    dirs: dict[Path, Cell] = {}
    for cell in grid:
        other = dirs.setdefault(cell.run_dir(Path()), cell)
        if other != cell:
            raise GridConfigError(
                f"env ids {other.env_id!r} and {cell.env_id!r} of suite {cell.suite!r} map to the "
                "same run directory; keep only one of them."
            )
    return grid


def grid_variants(cfg: DictConfig) -> dict[str, tuple[str, list[str]]]:
    """``variants``: name -> (the method it runs, its extra overrides), validated.

    A variant is a row of an ablation: a method plus overrides (``rise`` with the context stream
    muted, say), named in ``methods`` like a method, with its own run directories and its own
    row in the report.
    """
    from torchrl_rise.training.config import METHODS

    raw = _plain(cfg.get("variants")) or {}
    if not isinstance(raw, Mapping):
        raise GridConfigError(
            f"`variants` must map names to {{method, overrides}}, got {raw!r}; e.g. "
            "'variants={rise_muted: {method: rise, overrides: [+network.kwargs.mute_context=true]}}'."
        )
    variants = {}
    for name, spec in raw.items():
        if name in METHODS:
            raise GridConfigError(
                f"variants.{name} shadows the method {name!r}; give the variant its own name."
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise GridConfigError(
                f"variants.{name}: a variant name is a run directory name; use letters, digits, "
                "'_', '.' and '-' only."
            )
        spec = spec if isinstance(spec, Mapping) else {}
        method, overrides = spec.get("method"), spec.get("overrides", [])
        if method not in METHODS:
            raise GridConfigError(
                f"variants.{name}.method must be one of {list(METHODS)}, got {method!r}."
            )
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise GridConfigError(
                f"variants.{name}.overrides must be a list of hydra overrides, got {overrides!r}."
            )
        variants[str(name)] = (str(method), list(overrides))
    return variants


def _hydra_value(value: Any) -> str:
    """``value`` as a hydra override value, quoted when it holds characters hydra would parse."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cell_command(cfg: DictConfig, cell: Cell, run_dir: Path) -> list[str]:
    """The argument list that runs ``cell``: ``command`` followed by the formatted overrides."""
    method, variant_overrides = grid_variants(cfg).get(cell.method, (cell.method, []))
    raw = {
        "python": sys.executable,
        "repo": str(REPO),
        "suite": cell.suite,
        "env": cell.env_id,
        "method": method,
        "seed": cell.seed,
        "run_dir": str(run_dir),
    }
    quoted = {k: _hydra_value(v) for k, v in raw.items()}
    command = _plain(cfg.command)
    if isinstance(command, str):
        command = command.split()
    if not command:
        raise GridConfigError(
            "`command` is empty; default: ['{python}', '{repo}/recipes/{suite}.py']."
        )

    def fmt(templates: Any, values: Mapping[str, Any], key: str) -> list[str]:
        templates = _plain(templates) or []
        if not isinstance(templates, list):
            raise GridConfigError(f"`{key}` must be a list of strings, got {templates!r}.")
        try:
            return [str(t).format(**values) for t in templates]
        except (KeyError, IndexError) as err:
            raise GridConfigError(
                f"`{key}` uses an unknown placeholder {err}; available: {sorted(values)}."
            ) from err

    args = fmt(command, raw, "command")
    args += fmt(cfg.run_overrides, quoted, "run_overrides")
    marker = cfg.get("resume_marker")
    if marker and (run_dir / marker).exists():
        args += fmt(cfg.resume_overrides, quoted, "resume_overrides")
    args += fmt(cfg.overrides, quoted, "overrides")
    args += fmt(
        (cfg.suite_overrides or {}).get(cell.suite), quoted, f"suite_overrides.{cell.suite}"
    )
    args += fmt((cfg.method_overrides or {}).get(method), quoted, f"method_overrides.{method}")
    args += fmt(variant_overrides, quoted, f"variants.{cell.method}.overrides")
    return args


def _execute(
    args: Sequence[str], run_dir: str, env_vars: Mapping[str, str], timeout_s: float | None
) -> int:
    """Run one command with its output appended to ``<run_dir>/benchmark.log``; its exit code."""
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in env_vars.items()}}
    with open(run_path / LOG_FILE, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(args)}\n")
        log.flush()
        try:
            return subprocess.run(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
                env=env,
                timeout=timeout_s,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n# stopped after {timeout_s} s (run_timeout_s)\n")
            return 124
        except OSError as err:
            log.write(f"\n# could not start: {err}\n")
            return 127


def _set_aside_failed_run(cfg: DictConfig, run_dir: Path) -> None:
    """Move a run that failed before its first checkpoint out of the way of the rerun.

    The trainer refuses to start a new run in a directory that holds one (it would mix both runs'
    logs), and such a run cannot be resumed; it is kept, renamed ``<seed dir>.failed-<n>``, for
    a post-mortem (collect_runs never reports it: it is not finished).
    """
    from torchrl_rise.training.checkpoint import RunInUseError, RunLock
    from torchrl_rise.training.loop import _RUN_MARKERS

    marker = cfg.get("resume_marker")
    if not run_dir.is_dir() or (marker and (run_dir / marker).exists()):
        return
    found = [name for name in _RUN_MARKERS if (run_dir / name).exists()]
    if not found:
        return
    try:
        with RunLock(run_dir):
            pass
    except RunInUseError:
        return  # a run is live there (another launcher): the trainer refuses it, naming the pid
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.failed-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    logger.warning(
        "%s holds a run that ended without a checkpoint to resume (%s): moved to %s, rerunning",
        run_dir,
        ", ".join(found),
        aside,
    )


def _prepare(cfg: DictConfig, cell: Cell, output_dir: Path) -> tuple[list[str], Path]:
    run_dir = cell.run_dir(output_dir)
    _set_aside_failed_run(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CELL_FILE).write_text(json.dumps(asdict(cell), indent=2) + "\n")
    return cell_command(cfg, cell, run_dir), run_dir


def publish_dir(cfg: DictConfig) -> Path | None:
    """``cfg.publish_dir`` resolved, or ``None`` when results stay in the output directory."""
    return None if cfg.get("publish_dir") is None else Path(cfg.publish_dir).expanduser().resolve()


def publish(cfg: DictConfig, cell: Cell, output_dir: Path) -> None:
    """Copy a finished cell's results to ``publish_dir`` (if set and not there yet)."""
    target = publish_dir(cfg)
    if target is None or is_run_complete(cell.run_dir(target)):
        return
    export_run(cell.run_dir(output_dir), cell.run_dir(target), root=output_dir)
    logger.info("published %s to %s", cell.label, cell.run_dir(target))


def is_finished(cfg: DictConfig, cell: Cell, output_dir: Path) -> bool:
    """A finished run in the output directory, or its published copy (a fresh clone's grid)."""
    target = publish_dir(cfg)
    return is_run_complete(cell.run_dir(output_dir)) or (
        target is not None and is_run_complete(cell.run_dir(target))
    )


def run_cell(cfg: DictConfig, cell: Cell, output_dir: Path) -> bool:
    """Run one cell unless it is already finished; whether it is finished afterwards."""
    run_dir = cell.run_dir(output_dir)
    if is_finished(cfg, cell, output_dir):
        logger.info("skip %s: finished run in %s", cell.label, run_dir)
        if is_run_complete(run_dir):
            publish(cfg, cell, output_dir)
        return True
    args, run_dir = _prepare(cfg, cell, output_dir)
    logger.info("run %s", cell.label)
    start = time.perf_counter()
    code = _execute(args, str(run_dir), _plain(cfg.env_vars) or {}, cfg.run_timeout_s)
    done = is_run_complete(run_dir)
    if done:
        logger.info("done %s in %.1f s", cell.label, time.perf_counter() - start)
        publish(cfg, cell, output_dir)
    else:
        logger.error(
            "%s failed (exit code %d, no finished summary.json); see %s",
            cell.label,
            code,
            run_dir / LOG_FILE,
        )
    return done


def run_local(cfg: DictConfig, cells: Sequence[Cell], output_dir: Path) -> None:
    workers = int(cfg.launcher.workers)
    if workers < 1:
        raise GridConfigError(f"launcher.workers must be >= 1, got {workers}.")
    if workers == 1:
        for cell in cells:
            run_cell(cfg, cell, output_dir)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda c: run_cell(cfg, c, output_dir), cells))


def run_hydra(
    cfg: DictConfig, grid: Sequence[Cell], cells: Sequence[Cell], output_dir: Path
) -> None:
    """One hydra multirun over the pending cells' indices, on ``launcher.hydra_launcher``."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise GridConfigError(
            "launcher.name=hydra replays this command's overrides in each job, so it must be run "
            "as `python recipes/benchmark.py ...` (not through compose())."
        )
    indices = ",".join(str(grid.index(c)) for c in cells)
    # The jobs rebuild the same grid from the same overrides and each runs the cell it is given.
    user = [
        o
        for o in HydraConfig.get().overrides.task
        if o.split("=", 1)[0].lstrip("+~") not in ("cell", "output_dir")
    ]
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--multirun",
        f"hydra/launcher={cfg.launcher.hydra_launcher}",
        *user,
        f"output_dir={_hydra_value(output_dir)}",
        f"cell={indices}",
        *[str(o) for o in _plain(cfg.launcher.hydra_overrides) or []],
    ]
    logger.info("hydra multirun of %d runs on %s", len(cells), cfg.launcher.hydra_launcher)
    code = subprocess.run(args, cwd=str(REPO), check=False).returncode
    if code != 0:
        logger.error("the hydra multirun exited with code %d", code)


def run_ray(cfg: DictConfig, cells: Sequence[Cell], output_dir: Path) -> None:
    """One Ray task per pending cell; the workers must see ``output_dir`` and the checkout."""
    ray = import_optional("ray", extra="ray", purpose="the benchmark grid's Ray launcher")
    ray.init(address=cfg.launcher.ray_address, ignore_reinit_error=True)
    remote = ray.remote(
        num_cpus=float(cfg.launcher.ray_num_cpus), num_gpus=float(cfg.launcher.ray_num_gpus)
    )(_execute)
    env_vars = _plain(cfg.env_vars) or {}
    refs = []
    for cell in cells:
        if is_finished(cfg, cell, output_dir):
            continue
        args, run_dir = _prepare(cfg, cell, output_dir)
        refs.append(remote.remote(args, str(run_dir), env_vars, cfg.run_timeout_s))
    logger.info("submitted %d runs to Ray", len(refs))
    ray.get(refs)
    for cell in cells:
        if is_run_complete(cell.run_dir(output_dir)):
            publish(cfg, cell, output_dir)


def make_report(cfg: DictConfig, grid: Sequence[Cell], output_dir: Path) -> Path | None:
    """The report of the finished runs: from the published copies when ``publish_dir`` is set."""
    output_dir = publish_dir(cfg) or output_dir
    finished = [c for c in grid if is_run_complete(c.run_dir(output_dir))]
    missing = [c.label for c in grid if c not in finished]
    if not finished:
        logger.error("no finished runs yet: no report")
        return None
    # a variant's summary names the method it ran; the report's row is the variant
    runs = [
        replace(load_run(c.run_dir(output_dir), defaults=asdict(c)), method=c.method)
        for c in finished
    ]
    rc = cfg.report
    report = build_report(
        runs,
        output_dir / "report",
        title=rc.title,
        score=rc.score,
        suite_scores=_plain(rc.suite_scores),
        ranges=_plain(rc.ranges),
        procgen_mode=rc.procgen_mode,
        fallback=rc.fallback,
        baseline=rc.baseline,
        metrics=_plain(rc.metrics),
        reps=int(rc.reps),
        confidence=float(rc.confidence),
        seed=int(rc.seed),
        missing=missing,
        root=output_dir,
    )
    logger.info("report: %s", report.markdown)
    return report.markdown


def check_commands(cfg: DictConfig, grid: Sequence[Cell], output_dir: Path) -> None:
    """Fail before running anything if a suite's recipe script does not exist."""
    for suite in dict.fromkeys(c.suite for c in grid):
        cell = next(c for c in grid if c.suite == suite)
        args = cell_command(cfg, cell, cell.run_dir(output_dir))
        scripts = [a for a in args[:2] if a.endswith(".py")]
        missing = [a for a in scripts if not Path(a).is_file()]
        if missing:
            recipes = sorted(
                p.stem for p in (REPO / "recipes").glob("*.py") if p.stem != "benchmark"
            )
            raise GridConfigError(
                f"suite {suite!r} runs {missing[0]}, which does not exist; recipes here: "
                f"{recipes}. Fix `suites` or point `command` at the recipe to run."
            )


def run_grid(cfg: DictConfig) -> int:
    """Run (or resume) the grid and write the report; the number of runs not finished."""
    grid = build_grid(cfg)
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    if cfg.cell is not None:  # one job of the hydra multirun
        index = int(cfg.cell)
        if not 0 <= index < len(grid):
            raise GridConfigError(f"cell={index} is outside the grid of {len(grid)} runs.")
        return 0 if run_cell(cfg, grid[index], output_dir) else 1
    name = cfg.launcher.name
    if name not in LAUNCHERS:
        raise GridConfigError(f"launcher.name must be one of {LAUNCHERS}, got {name!r}.")
    pending = [c for c in grid if not is_finished(cfg, c, output_dir)]
    if pending and name != "report":
        check_commands(cfg, pending, output_dir)
    logger.info(
        "grid of %d runs in %s: %d finished, %d to run (launcher %s)",
        len(grid),
        output_dir,
        len(grid) - len(pending),
        len(pending),
        name,
    )
    if pending and name == "local":
        run_local(cfg, pending, output_dir)
    elif pending and name == "hydra":
        run_hydra(cfg, grid, pending, output_dir)
    elif pending and name == "ray":
        run_ray(cfg, pending, output_dir)
    if cfg.report.enabled:
        make_report(cfg, grid, output_dir)
    unfinished = [c for c in grid if not is_finished(cfg, c, output_dir)]
    if unfinished and name != "report":
        logger.error(
            "%d of %d runs did not finish: %s",
            len(unfinished),
            len(grid),
            ", ".join(c.label for c in unfinished),
        )
    return len(unfinished)


@hydra.main(version_base="1.3", config_path="config", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    unfinished = run_grid(cfg)
    # A multirun job (cell set) reports through its run dir; the driver counts what is unfinished.
    if unfinished and cfg.cell is None and cfg.launcher.name != "report":
        sys.exit(1)


if __name__ == "__main__":
    main()
