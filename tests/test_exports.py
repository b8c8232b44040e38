"""Top-level exports: lazy (PEP 562), complete, and pointing at the objects of their subpackages."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchrl_rise

REPO = Path(__file__).resolve().parents[1]

# Heavy imports `import torchrl_rise` must not pull in.
HEAVY = [
    "torch",
    "torchrl",
    "torchrl.collectors",
    "tensordict",
    "torchvision",
    "hydra",
    "omegaconf",
    "matplotlib",
    "pandas",
    "rliable",
    "gymnasium",
    "ale_py",
]

ISSUE_NAMES = [
    "RiseContextTransform",
    "RiseReplayBuffer",
    "IQNLoss",
    "make_q_network",
    "make_encoder",
    "make_env",
    "Trainer",
    "train",
]


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    return out.stdout


def test_import_is_cheap():
    code = (
        "import json, sys\n"
        "import torchrl_rise\n"
        "print(json.dumps({'file': torchrl_rise.__file__, "
        f"'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = json.loads(_python(code))
    assert Path(result["file"]).resolve().parent == REPO / "torchrl_rise"
    assert result["loaded"] == [], f"import torchrl_rise imported {result['loaded']}"


def test_first_access_imports_only_what_it_needs():
    code = (
        "import json, sys\n"
        "from torchrl_rise import make_encoder\n"
        "print(json.dumps([m for m in ('hydra', 'torchrl.collectors', 'rliable') "
        "if m in sys.modules]))\n"
    )
    assert json.loads(_python(code)) == []


def test_issue_names_import_from_the_top_level():
    code = f"from torchrl_rise import {', '.join(ISSUE_NAMES)}\nprint('ok')\n"
    assert _python(code).strip() == "ok"


@pytest.mark.parametrize("name", sorted(torchrl_rise._EXPORTS))
def test_every_export_is_its_subpackages_object(name):
    home = importlib.import_module(torchrl_rise._EXPORTS[name])
    assert getattr(torchrl_rise, name) is getattr(home, name)
    assert name in home.__all__, f"{name} is not in {home.__name__}.__all__"


def test_all_and_dir_list_the_exports():
    assert set(ISSUE_NAMES) <= set(torchrl_rise._EXPORTS)
    assert sorted(torchrl_rise.__all__) == sorted(["__version__", "keys", *torchrl_rise._EXPORTS])
    assert set(torchrl_rise._EXPORTS) <= set(dir(torchrl_rise))
    assert {"modules", "training", "keys", "__version__"} <= set(dir(torchrl_rise))


def test_subpackages_are_reachable_as_attributes():
    assert torchrl_rise.modules is importlib.import_module("torchrl_rise.modules")


def test_unknown_name_says_what_exists():
    with pytest.raises(AttributeError, match="top-level names"):
        torchrl_rise.NoSuchThing
    with pytest.raises(ImportError):
        exec("from torchrl_rise import NoSuchThing", {})


def test_index_lists_the_exports():
    index = (REPO / "docs" / "index.md").read_text()
    missing = [name for name in torchrl_rise._EXPORTS if f"`{name}`" not in index]
    assert missing == [], f"docs/index.md does not list {missing}"
