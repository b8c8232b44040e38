"""Train RISE (or BTR) on ViZDoom (gymnasium scenarios, headless).

    python recipes/vizdoom.py                         # RISE with the suite's defaults
    python recipes/vizdoom.py method=btr env.env_id=VizdoomDefendCenter-v1
    python recipes/vizdoom.py preset=tiny             # a few thousand frames (what the tests run)
    python recipes/vizdoom.py resume=true             # continue the latest run

Needs the `vizdoom` extra (`scripts/install.sh vizdoom`).
Configuration: recipes/config/vizdoom.yaml (on top of base.yaml); docs/recipes.md lists the
knobs.
"""

from __future__ import annotations

import os
import sys

# Three recipes are named like simulator packages (procgen, vizdoom, miniworld), which TorchRL and
# the env factories import: drop this folder from the import path so they find the packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training import train  # noqa: E402
from torchrl_rise.training.presets import register_presets  # noqa: E402

register_presets()  # lists preset=quickstart|debug|tiny in --help


@hydra.main(config_path="config", config_name="vizdoom", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
