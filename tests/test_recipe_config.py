"""One source of defaults: the TrainConfig dataclasses; each suite YAML holds only what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from torchrl_rise.training import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"
RECIPES = ("atari", "vizdoom", "procgen", "miniworld", "memorygym", "memory")
PRESETS = ROOT / "torchrl_rise" / "training" / "presets" / "preset"


def _flatten(node, prefix: str = "") -> dict[str, object]:
    """Leaves as dotted keys; an empty dict or a list is one leaf."""
    if isinstance(node, dict) and node:
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _yaml_leaves(path: Path) -> dict[str, object]:
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    raw.pop("hydra", None)
    return _flatten(raw) if raw else {}


def _defaults() -> dict[str, object]:
    return _flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig)))


def _covered(key: str, overridden: dict[str, object]) -> bool:
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in overridden)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_config_is_the_python_defaults_plus_its_own_yaml(recipe):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = compose(config_name=recipe)
    resolved = _flatten(OmegaConf.to_container(composed, resolve=True))
    defaults = _defaults()
    own = _yaml_leaves(CONFIG_DIR / f"{recipe}.yaml")
    for key, value in defaults.items():
        if not _covered(key, own):
            assert resolved[key] == value, f"{recipe}: {key}={resolved[key]!r}, default {value!r}"
    for key, value in own.items():
        assert resolved[key] == value, f"{recipe}.yaml sets {key}={value!r}, got {resolved[key]!r}"
        # the YAML holds only what the suite changes
        assert key not in defaults or defaults[key] != value, (
            f"recipes/config/{recipe}.yaml sets {key}={value!r}, the TrainConfig default: drop it"
        )
    assert set(resolved) - set(defaults) <= set(own), "keys that are not in TrainConfig"


def test_python_defaults_are_the_atari_recipe():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        recipe = load_config(compose(config_name="atari"))
    assert recipe == load_config() == load_config({})
    assert (recipe.total_frames, recipe.encoder.context_length, recipe.encoder.weights) == (
        200_000_000,
        80,
        "auto",
    )


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.yaml")))
def test_presets_only_hold_changes(preset):
    defaults = _defaults()
    for key, value in _yaml_leaves(PRESETS / f"{preset}.yaml").items():
        assert key in defaults or any(key.startswith(k + ".") for k in defaults), key
        assert defaults.get(key, object()) != value, f"preset {preset} sets the default {key}"


def test_a_misspelt_recipe_key_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with (
        initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"),
        pytest.raises(ConfigCompositionException),
    ):
        compose(config_name="atari", overrides=["replay.capacty=10"])
