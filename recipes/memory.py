"""Train RISE (or BTR, or the recurrent baseline) on the pixel memory diagnostic (cue shown L steps before the query).

    python recipes/memory.py                         # RISE with the suite's defaults
    python recipes/memory.py method=btr env.env_id=cue-L40-N4
    python recipes/memory.py method=recurrent        # the R2D2-style baseline (docs/recurrent.md)
    python recipes/memory.py preset=tiny             # a few thousand frames (what the tests run)
    python recipes/memory.py resume=true             # continue the latest run

No optional dependency.
Configuration: the TrainConfig defaults + recipes/config/memory.yaml (what this suite changes);
docs/recipes.md lists the knobs and shows how this script assembles a run.
"""

from __future__ import annotations

import functools
import os
import sys

# Three recipes are named like simulator packages (procgen, vizdoom, miniworld), which TorchRL and
# the env factories import: drop this folder from the import path so they find the packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from omegaconf import DictConfig  # noqa: E402

from torchrl_rise.training import (  # noqa: E402
    TrainConfig,
    Trainer,
    load_config,
    register_configs,
)
from torchrl_rise.training.builders import (  # noqa: E402
    Assembly,
    build_actor,
    build_collector,
    build_encoder,
    build_logger,
    build_loss,
    build_network,
    build_optimizer,
    build_replay,
    encoder_info,
    make_env_factory,
    probe_env,
)
from torchrl_rise.training.cli import recipe_main  # noqa: E402
from torchrl_rise.training.presets import register_presets  # noqa: E402

register_configs()  # the TrainConfig dataclasses as `train_schema`, the base of memory.yaml
register_presets()  # lists the presets (quickstart, debug, tiny, cpu_*) in --help


def assemble(cfg: TrainConfig) -> Assembly:
    """Every piece of a memory-diagnostic run, built from the package's builders."""
    # Environments: the training envs step in the collector, the evaluation envs apart.
    env_factory = make_env_factory(cfg)
    env_info, action_spec = probe_env(env_factory)  # frame size/channels, skip, actions

    # RISE's frozen encoder: run once per frame inside the env (RiseContextTransform), its
    # embeddings stored once in the replay. BTR has none.
    encoder = None
    if cfg.uses_context:
        encoder = build_encoder(cfg, frame_channels=env_info.frame_channels)
    embedding_dim = encoder.embedding_dim if encoder is not None else None

    # method=recurrent: the same builders give the recurrent_baseline network (LSTM after the CNN),
    # the recurrent actor, SequenceIQNLoss and SequenceReplayBuffer (docs/recurrent.md).
    # Dual-stream IQN network (BTR's IMPALA CNN + the context LSTM for RISE), acting policy
    # (noisy nets + BTR's epsilon-greedy schedule), IQN + Munchausen loss, hard target updates.
    net = build_network(cfg, env_info=env_info, embedding_dim=embedding_dim).to(cfg.device)
    actor = build_actor(cfg, net, env_info=env_info, action_spec=action_spec)
    loss, target_updater = build_loss(cfg, net)
    optimizer = build_optimizer(cfg, loss)

    # Built by the trainer under the run directory's lock: the replay's memmaps go into the run,
    # a resumed run's collector gets a fresh seed, the loggers append to the resumed logs.
    make_replay = functools.partial(
        build_replay, cfg, env_info=env_info, embedding_dim=embedding_dim
    )
    make_collector = functools.partial(build_collector, cfg, encoder=encoder, policy=actor)
    make_logger = functools.partial(build_logger, cfg)
    eval_env_factory = make_env_factory(cfg, eval_mode=True, encoder=encoder)

    return Assembly(
        env_info=env_info,
        encoder=encoder,
        encoder_info=encoder_info(cfg, encoder),
        net=net,
        actor=actor,
        loss=loss,
        target_updater=target_updater,
        optimizer=optimizer,
        make_replay=make_replay,
        make_collector=make_collector,
        eval_env_factory=eval_env_factory,
        make_logger=make_logger,
    )


@recipe_main(config_name="memory")  # hydra.main + one-line config errors (docs/training.md)
def main(dict_cfg: DictConfig) -> None:
    cfg = load_config(dict_cfg)  # the validated TrainConfig
    trainer = Trainer.from_components(cfg, assemble(cfg))
    trainer.run()  # collect -> replay -> learn -> evaluate -> log -> checkpoint; summary.json


if __name__ == "__main__":
    main()
