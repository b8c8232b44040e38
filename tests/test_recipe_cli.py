"""The recipes' command line: one-line config errors, YAML errors with file:line:col, dict overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tests.helpers import load_by_path
from torchrl_rise.training import load_config
from torchrl_rise.training.cli import DEBUG_ENV, YAMLSyntaxError, check_yaml_files
from torchrl_rise.training.config import free_form_keys

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "config"
BROKEN = "replay:\n  batch_size: [1, 2\nseed: 3\n"  # the list never closes; line 3 col 5


def _env() -> dict[str, str]:
    """The test's environment without the debug flag (conftest sets it), this checkout first."""
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return load_config(compose("memory", overrides=["preset=tiny", *overrides]))


# ---------------------------------------------------------------- free-form dict overrides
def test_documented_ray_overrides_compose() -> None:
    cfg = _compose(
        "collector.ray_remote={num_cpus: 2, memory: 4e9}", "collector.ray_init={num_cpus: 8}"
    )
    assert cfg.collector.ray_remote == {"num_cpus": 2, "memory": 4e9}
    assert cfg.collector.ray_init == {"num_cpus": 8}
    assert _compose("collector.ray_remote={num_cpus: 0.5}").collector.ray_remote == {
        "num_cpus": 0.5
    }
    assert _compose("collector.ray_remote.num_cpus=0.5").collector.ray_remote == {"num_cpus": 0.5}


def test_every_free_form_dict_takes_new_keys_and_merges() -> None:
    cfg = _compose(
        "network.kwargs={width_scale: 1, dueling: false}",
        "env.kwargs={frame_skip: 2}",
        "env.eval_kwargs={seed_offset: 7}",
        "encoder.kwargs={resize: 4}",
        "loss.kwargs={kappa: 2.0}",
        "replay.kwargs={tree: torch}",
    )
    # a dict override merges into the recipe's dict: memory.yaml's other network keys stay
    assert cfg.network.kwargs["width_scale"] == 1 and cfg.network.kwargs["dueling"] is False
    assert cfg.network.kwargs["lstm_hidden"] == 16
    assert cfg.env.kwargs == {"frame_skip": 2} and cfg.env.eval_kwargs == {"seed_offset": 7}
    assert cfg.encoder.kwargs == {"size": 8, "resize": 4}
    assert cfg.loss.kwargs == {"kappa": 2.0} and cfg.replay.kwargs == {"tree": "torch"}


def test_free_form_keys_are_the_dict_fields_and_typed_fields_keep_typo_protection() -> None:
    assert sorted(free_form_keys()) == [
        "collector.ray_init",
        "collector.ray_remote",
        "encoder.kwargs",
        "env.eval_kwargs",
        "env.kwargs",
        "loss.kwargs",
        "network.kwargs",
        "replay.kwargs",
    ]
    for typo in ("collector.ray_remte={num_cpus: 1}", "network.kwarg={a: 1}", "replay.batchsize=3"):
        with pytest.raises(ConfigCompositionException, match="Could not override"):
            _compose(typo)
    with pytest.raises(ConfigCompositionException):
        _compose("collector.backend={a: 1}")  # a typed field does not become a dict


# ---------------------------------------------------------------- YAML syntax errors
def test_check_yaml_files_names_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("a: {b: 1}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.yaml").write_text(BROKEN)
    with pytest.raises(YAMLSyntaxError) as info:
        check_yaml_files([tmp_path])
    where, rest = str(info.value).split(": ", 1)
    assert where == f"{tmp_path / 'sub' / 'bad.yaml'}:3:5"
    assert rest.startswith("YAML syntax error: expected ',' or ']'") and "line 2, column 15" in rest
    check_yaml_files([tmp_path / "ok.yaml", CONFIG_DIR])  # the shipped configs parse
    check_yaml_files([tmp_path / "missing", tmp_path / "nope.yaml"])  # hydra reports those


def _load_recipe(name: str):
    return load_by_path(f"_cli_{name}", ROOT / "recipes" / f"{name}.py")


def test_a_malformed_preset_stops_the_recipe_with_file_line_col(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "preset").mkdir()
    bad = tmp_path / "preset" / "broken.yaml"
    bad.write_text(BROKEN)
    memory = _load_recipe("memory")
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["memory.py", "preset=broken", "--config-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        memory.main()  # stops before hydra composes anything
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{bad}:3:5: YAML syntax error: ") and len(err) == 2
    assert DEBUG_ENV in err[1] and "Traceback" not in "\n".join(err)


def test_a_recipe_prints_a_config_error_as_two_lines_without_traceback(tmp_path: Path) -> None:
    args = [sys.executable, str(ROOT / "recipes" / "memory.py"), "preset=tiny"]
    args += [f"logging.root={tmp_path}", "replay.batch_size=-1"]
    done = subprocess.run(
        args, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert err[0] == "config error: replay.batch_size must be > 0, got -1.", done.stderr
    assert len(err) == 2 and f"{DEBUG_ENV}=1" in err[1]
    assert "Traceback" not in done.stderr + done.stdout
    assert "Error executing job" not in done.stderr


def test_the_debug_flag_keeps_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchrl_rise.training import ConfigError
    from torchrl_rise.training.cli import _guard

    def task(cfg: object) -> None:
        raise ConfigError(f"replay.batch_size must be > 0, got {cfg}.")

    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError, match="got -1"):
        _guard(task)(-1)
    monkeypatch.delenv(DEBUG_ENV)
    with pytest.raises(SystemExit) as info:
        _guard(task)(-1)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "config error: replay.batch_size must be > 0, got -1."
    )
