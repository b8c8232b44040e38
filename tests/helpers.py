"""Helpers shared by the test modules: the repository's paths, the memory-suite skip, recipe
runs in a child process, and a hook on the run's learner updates."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"


# The module each optional suite's simulator imports as (Atari's ale-py is a core dependency).
SIMULATORS = {
    "vizdoom": "vizdoom",
    "procgen": "procgen",
    "miniworld": "miniworld",
    "memorygym": "memory_gym",
}


# A small network's options (with a kind's own: num_actions, frame_size, ...).
TINY_NET = dict(in_channels=4, width_scale=0.25, mlp_hidden=16)


def mortar_mayhem_with_cue(num_envs: int, frame_size: int, reset_params: dict):
    """Memory Gym's Mortar Mayhem (grid actions), grayscale, cropped to its arena, with the
    command to remember exposed as ``cue``."""
    from torchrl_rise.envs import make_env

    return make_env(
        "memorygym",
        "MortarMayhem-Grid-v0",
        num_envs=num_envs,
        frame_size=frame_size,
        grayscale=True,
        reset_params=reset_params,
        crop_to_arena=True,
        expose_cue=True,
    )


def load_by_path(name: str, path: Path, register: Callable | None = None) -> ModuleType:
    """The module at ``path``, loaded as ``name`` without putting its folder on sys.path (there
    recipes/procgen.py & co. would shadow the real packages for the rest of the session).

    ``register(name, module)`` runs before the module does: dataclasses look their module up
    in sys.modules, so a module defining some must be registered there.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register is not None:
        register(spec.name, module)
    spec.loader.exec_module(module)
    return module


def memory_suite_available() -> bool:
    try:
        from torchrl_rise.envs import make_env

        make_env("memory", "cue-L2", num_envs=1).close()
    except Exception:
        return False
    return True


needs_memory = pytest.mark.skipif(
    not memory_suite_available(), reason="the memory suite of torchrl_rise.envs is not available"
)


def recipe_cmd(recipe: str, *args: str) -> list[str]:
    """The command line running ``recipes/<recipe>.py`` with ``args`` in this Python."""
    return [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a recipe run in a child process: CPU only, this checkout importable."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def signal_once_logging(
    cmd: list[str], run_dir: Path, sig: int, *, cwd: Path, env: dict, wait_s: float, poll_s: float
) -> tuple[int, bytes]:
    """Start ``cmd``, send it ``sig`` once its train.csv holds two rows, and wait for its end.

    Returns the exit code and the output; fails the test when nothing was logged in ``wait_s``.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            train_csv = run_dir / "train.csv"
            if train_csv.exists() and len(train_csv.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(poll_s)
        else:
            pytest.fail(f"the run logged nothing within {wait_s:g} s")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def replay_update(loss, opt, rb):
    """One optimizer step of ``loss`` on a batch sampled from ``rb``, whose priorities are then
    written back; returns the batch and the loss output."""
    batch = rb.sample()
    out = loss(batch)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    rb.update_tensordict_priority(batch)
    return batch, out


def hook_updates(patch, after_update: Callable) -> None:
    """Call ``after_update(trainer, learner)`` after every batch of updates of the run's learner.

    ``patch``: pytest's ``monkeypatch`` or one of its ``context()``s.
    """
    from torchrl_rise.training import Trainer

    real = Trainer._learner

    def learner(self, comps):
        built = real(self, comps)
        update = built.update

        def hooked(n_updates=1):
            update(n_updates)
            after_update(self, built)

        built.update = hooked
        return built

    patch.setattr(Trainer, "_learner", learner)
