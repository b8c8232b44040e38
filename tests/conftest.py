"""Test-wide setup: deterministic, CPU-only, quiet and small."""

from __future__ import annotations

import os
import random

# Before anything imports torch or a simulator.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("PYGLET_HEADLESS", "true")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _deterministic():
    """Seed every RNG and keep each test to one thread (xdist runs one worker per core)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for one test module (2 CPUs, no dashboard); skips without ray."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Skip ``slow`` tests unless asked for with ``-m slow`` (or ``-m "slow or not slow"``), and
    ``gpu`` tests where torch sees no CUDA device.

    By marker, not ``item.keywords``: the keywords hold every parent node's name too, so a
    checkout in a folder named ``gpu`` or ``slow`` would skip every test.
    """
    if not torch.cuda.is_available():
        reason = (
            "gpu: no CUDA device (torch.cuda.is_available() is False, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); `make gpu-check` runs these on a GPU "
            "machine (docs/gpu.md)"
        )
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
    markexpr = config.getoption("-m") or ""
    if "slow" in markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow`")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
