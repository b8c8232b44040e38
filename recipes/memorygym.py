"""Train RISE (or BTR, or the recurrent baseline) on Memory Gym's grid tasks (third-party, pixels).

    python recipes/memorygym.py                         # RISE, Mortar Mayhem Grid (10 commands)
    python recipes/memorygym.py method=btr env.env_id=MysteryPath-Grid-v0
    python recipes/memorygym.py method=recurrent        # R2D2-style baseline (docs/recurrent.md)
    python recipes/memorygym.py preset=cpu_memorygym    # one command, CPU-sized (docs/results.md)
    python recipes/memorygym.py resume=true             # continue the latest run

Needs the `memorygym` extra (`scripts/install.sh memorygym`).
Configuration: the TrainConfig defaults + recipes/config/memorygym.yaml (what this suite changes);
docs/recipes.md lists the knobs. The assembly is recipes/atari.py's (build_assembly).
"""

from __future__ import annotations

from torchrl_rise.recipe_path import drop_script_folder

# recipes/memorygym.py must not shadow a package (torchrl_rise.recipe_path)
drop_script_folder(__file__)

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training.builders import build_assembly as assemble  # noqa: E402
from torchrl_rise.training.cli import recipe_main, run_recipe  # noqa: E402


@recipe_main(config_name="memorygym")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    run_recipe(dict_cfg, assemble=assemble)  # as recipes/atari.py: load, assemble, train


if __name__ == "__main__":
    main()
