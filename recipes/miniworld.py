"""Train RISE (or BTR, or the recurrent baseline) on MiniWorld (headless 3D navigation).

    python recipes/miniworld.py                         # RISE with the suite's defaults
    python recipes/miniworld.py method=btr env.env_id=MiniWorld-FourRooms-v0
    python recipes/miniworld.py method=recurrent               # R2D2-style baseline (docs/recurrent.md)
    python recipes/miniworld.py preset=tiny             # a few thousand frames (what the tests run)
    python recipes/miniworld.py resume=true             # continue the latest run

Needs the `miniworld` extra (`scripts/install.sh miniworld`).
Configuration: the TrainConfig defaults + recipes/config/miniworld.yaml (what this suite changes);
docs/recipes.md lists the knobs. The assembly is recipes/atari.py's (build_assembly).
"""

from __future__ import annotations

import os

from torchrl_rise.recipe_path import drop_script_folder

# recipes/miniworld.py must not shadow a package (torchrl_rise.recipe_path)
drop_script_folder(__file__)

# MiniWorld renders with OpenGL through pyglet: headless (EGL) unless a display is asked for.
# Set before anything imports pyglet; the env worker processes inherit it.
os.environ.setdefault("PYGLET_HEADLESS", "true")

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training.builders import build_assembly as assemble  # noqa: E402
from torchrl_rise.training.cli import recipe_main, run_recipe  # noqa: E402


@recipe_main(config_name="miniworld")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    run_recipe(dict_cfg, assemble=assemble)  # as recipes/atari.py: load, assemble, train


if __name__ == "__main__":
    main()
