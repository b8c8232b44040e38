"""The dependency facts the package relies on: fail loudly if a version bump breaks them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import torchrl_rise


def _torch_pin() -> SpecifierSet:
    """pyproject.toml's torch requirement (the torch torchrl's wheel is built for)."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pins = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    return next(r.specifier for r in pins if r.name == "torch")


@pytest.mark.skipif(
    not _torch_pin().contains(torch.__version__.split("+")[0]),
    reason=f"torch {torch.__version__} is not the pinned {_torch_pin()}: torchrl's native "
    "extension is built for another torch (the replay's PER uses tree='torch' there, docs/gpu.md)",
)
def test_torchrl_native_extension_loads_and_prioritized_replay_works():
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer

    importlib.import_module("torchrl._torchrl")  # the segment trees behind PER
    rb = TensorDictPrioritizedReplayBuffer(
        alpha=0.7, beta=0.5, storage=LazyTensorStorage(16), priority_key="td_error"
    )
    rb.extend(TensorDict({"x": torch.arange(16.0)}, batch_size=[16]))
    td = rb.sample(64)
    td["td_error"] = torch.where(td["x"] == 3, 1e3, 1e-6)
    rb.update_tensordict_priority(td)
    hits = (rb.sample(256)["x"] == 3).float().mean()
    assert hits > 0.5  # the up-weighted item now dominates: the sum tree is live


def test_torchvision_imports_and_builds_resnet18():
    torchvision = importlib.import_module("torchvision")
    model = torchvision.models.resnet18(weights=None)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512


def test_torchrl_sequence_exists():
    from torchrl.data import Sequence  # noqa: F401


def test_package_version():
    assert torchrl_rise.__version__


def test_optional_dependency_error_names_the_extra():
    from torchrl_rise._optional import MissingDependencyError, import_optional

    with pytest.raises(MissingDependencyError, match=r"torchrl_rise\[vizdoom\]"):
        import_optional("definitely_not_a_module_xyz", extra="vizdoom")
