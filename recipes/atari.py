"""Train RISE (or BTR, or the recurrent baseline) on Atari with Beyond The Rainbow's settings.

    python recipes/atari.py                                  # RISE on Pong, BTR defaults
    python recipes/atari.py method=btr env.env_id=Breakout   # the BTR baseline
    python recipes/atari.py method=recurrent                 # R2D2-style baseline (docs/recurrent.md)
    python recipes/atari.py preset=quickstart                # a short run (`make quickstart`)
    python recipes/atari.py resume=true                      # continue the latest run

Configuration: the TrainConfig defaults + recipes/config/atari.yaml (what this suite changes);
docs/recipes.md lists the knobs. Every recipe runs this script's assembly, which is also what
`train(cfg)` runs: `torchrl_rise.training.builders.build_assembly`. The other recipes hold only
their suite's lines.
"""

from __future__ import annotations

from torchrl_rise.recipe_path import drop_script_folder

# before anything imports the simulators (see torchrl_rise.recipe_path)
drop_script_folder(__file__)

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training import Trainer, load_config  # noqa: E402
from torchrl_rise.training.builders import build_assembly as assemble  # noqa: E402
from torchrl_rise.training.cli import recipe_main  # noqa: E402

# What `assemble(cfg)` builds, in order (torchrl_rise/training/builders.py, build_assembly):
#   env           make_env_factory(cfg), probe_env(...)    the suite's TorchRL env, picklable
#   transform     build_encoder(cfg, ...)                  RISE's frozen encoder, run in the env
#   network       build_network(cfg, ...)                  BTR's IMPALA CNN + IQN head (+ context LSTM)
#   actor         build_actor(cfg, net, ...)               noisy nets + BTR's epsilon-greedy schedule
#   loss          build_loss(cfg, net)                     IQN + Munchausen, hard target copies
#   optimizer     build_optimizer(cfg, loss)               Adam (BTR's lr and eps)
#   buffer        build_replay(cfg, ...)                   context-window (or sequence) replay
#   collector     build_collector(cfg, ...)                TorchRL Collector / MultiSync / Ray
#   logger        build_logger(cfg, ...)                   csv (+ tensorboard, wandb)
# The buffer, collector and logger are built by the trainer under the run directory's lock.


@recipe_main(config_name="atari")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    cfg = load_config(dict_cfg)  # the validated TrainConfig
    trainer = Trainer.from_components(cfg, assemble(cfg))
    trainer.run()  # collect -> replay -> learn -> evaluate -> log -> checkpoint; summary.json


if __name__ == "__main__":
    main()
