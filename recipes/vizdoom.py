"""Train RISE (or BTR, or the recurrent baseline) on ViZDoom (gymnasium scenarios, headless).

    python recipes/vizdoom.py                         # RISE with the suite's defaults
    python recipes/vizdoom.py method=btr env.env_id=VizdoomDefendCenter-v1
    python recipes/vizdoom.py method=recurrent               # R2D2-style baseline (docs/recurrent.md)
    python recipes/vizdoom.py preset=tiny             # a few thousand frames (what the tests run)
    python recipes/vizdoom.py resume=true             # continue the latest run

Needs the `vizdoom` extra (`scripts/install.sh vizdoom`).
Configuration: the TrainConfig defaults + recipes/config/vizdoom.yaml (what this suite changes);
docs/recipes.md lists the knobs. The assembly is recipes/atari.py's (build_assembly).
"""

from __future__ import annotations

from torchrl_rise.recipe_path import drop_script_folder

# recipes/vizdoom.py must not shadow a package (torchrl_rise.recipe_path)
drop_script_folder(__file__)

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training.builders import build_assembly as assemble  # noqa: E402
from torchrl_rise.training.cli import recipe_main, run_recipe  # noqa: E402


@recipe_main(config_name="vizdoom")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    run_recipe(dict_cfg, assemble=assemble)  # as recipes/atari.py: load, assemble, train


if __name__ == "__main__":
    main()
