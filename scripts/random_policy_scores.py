"""Score of a uniformly random policy on a recipe's evaluation envs: the floor of a results table.

The envs are built exactly as the recipe's trainer builds its evaluation envs (the recipe's config,
the given overrides, ``make_env_factory(cfg, eval_mode=True)``), and played by
:func:`torchrl_rise.training.evaluate` with ``eps=1`` (every action uniformly random).

    python scripts/random_policy_scores.py vizdoom preset=cpu_vizdoom --episodes 200
    python scripts/random_policy_scores.py memorygym preset=cpu_memorygym --episodes 1000

Prints one JSON line: recipe, env id, episodes, mean, std, and success rate where the env has one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"


def random_policy_score(recipe: str, overrides: list[str], *, episodes: int, seed: int) -> dict:
    """Mean and std of the raw score of ``episodes`` uniformly random evaluation episodes."""
    import torch
    from hydra import compose, initialize_config_dir
    from tensordict.nn import TensorDictModule

    from torchrl_rise.training import evaluate, load_config, register_configs
    from torchrl_rise.training.builders import make_env_factory
    from torchrl_rise.training.presets import register_presets

    register_configs()
    register_presets()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = load_config(compose(config_name=recipe, overrides=overrides))
    env = make_env_factory(cfg, eval_mode=True, seed=seed)()
    try:
        num_actions = int(env.action_spec.space.n)
        constant = TensorDictModule(  # eps=1 below: its values are never used
            lambda pixels: torch.zeros(*pixels.shape[:-3], num_actions),
            in_keys=["pixels"],
            out_keys=["action_value"],
        )
        result = evaluate(
            constant,
            env,
            episodes=episodes,
            eps=1.0,
            max_steps=cfg.eval.max_steps,
            generator=torch.Generator().manual_seed(seed),
        )
    finally:
        env.close()
    out = {
        "recipe": recipe,
        "env_id": cfg.env.env_id,
        "overrides": overrides,
        "episodes": len(result.scores),
        "mean": result.mean,
        "std": result.std,
    }
    if result.success_rate is not None:
        out["success_rate"] = result.success_rate
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a recipe config name: atari, vizdoom, memorygym, ...")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. preset=cpu_vizdoom")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345, help="seed of the envs and the draws")
    args = parser.parse_args(argv)
    if not (CONFIG_DIR / f"{args.recipe}.yaml").exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        parser.error(f"no recipe config {args.recipe!r}; choose one of {known}")
    print(
        json.dumps(
            random_policy_score(args.recipe, args.overrides, episodes=args.episodes, seed=args.seed)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
