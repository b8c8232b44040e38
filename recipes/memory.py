"""Train RISE (or BTR, or the recurrent baseline) on the pixel memory diagnostic (cue shown L steps before the query).

    python recipes/memory.py                         # RISE with the suite's defaults
    python recipes/memory.py method=btr env.env_id=cue-L40-N4
    python recipes/memory.py method=recurrent        # the R2D2-style baseline (docs/recurrent.md)
    python recipes/memory.py preset=tiny             # a few thousand frames (what the tests run)
    python recipes/memory.py resume=true             # continue the latest run

No optional dependency.
Configuration: the TrainConfig defaults + recipes/config/memory.yaml (what this suite changes);
docs/recipes.md lists the knobs. The assembly is recipes/atari.py's (build_assembly).
"""

from __future__ import annotations

from torchrl_rise.recipe_path import drop_script_folder

# recipes/memory.py must not shadow a package (torchrl_rise.recipe_path)
drop_script_folder(__file__)

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training.builders import build_assembly as assemble  # noqa: E402
from torchrl_rise.training.cli import recipe_main, run_recipe  # noqa: E402


@recipe_main(config_name="memory")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    run_recipe(dict_cfg, assemble=assemble)  # as recipes/atari.py: load, assemble, train


if __name__ == "__main__":
    main()
