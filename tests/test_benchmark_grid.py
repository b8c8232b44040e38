"""The benchmark grid runner (recipes/benchmark.py): local runs, resume, failures, hydra launcher."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip(
    "rliable", reason="the grid's report needs rliable (absent from a GPU-only install)"
)
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers import load_by_path, recipe_cmd
from torchrl_rise.evaluation import build_report, is_run_complete
from torchrl_rise.evaluation.runs import EXPORTED_FILES, export_run

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark_module():
    return load_by_path(
        "benchmark_recipe", REPO / "recipes" / "benchmark.py", sys.modules.__setitem__
    )


benchmark = _load_benchmark_module()

# A stand-in for recipes/<suite>.py: parses hydra-style key=value overrides, logs its invocation,
# and writes a plausible summary.json + eval.csv whose score depends on method and seed. A run whose
# env id is "crash" writes a failed run (train.csv, summary.json) and exits with an error.
FAKE_RECIPE = textwrap.dedent(
    """
    import csv, json, os, sys
    from pathlib import Path
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    with open(os.environ["FAKE_RECIPE_CALLS"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    if args["env.env_id"] == "crash":  # as the trainer does when it fails before a checkpoint
        run_dir = Path(args["logging.run_dir"])
        (run_dir / "train.csv").write_text("frames\\n")
        (run_dir / "summary.json").write_text(json.dumps({"status": "failed"}))
        sys.exit("simulated crash")
    run_dir = Path(args["logging.run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(args["seed"])
    top = {"rise": 0.9, "btr": 0.5}[args["method"]] + 0.01 * seed
    evals = [{"frames": f, "mean": top * f / 3000, "std": 0.1, "n": 10,
              "success_rate": top * f / 3000} for f in (1000, 2000, 3000)]
    with open(run_dir / "eval.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["frames", "mean", "std", "n", "success_rate"])
        w.writeheader()
        w.writerows(evals)
    summary = {"status": "finished", "method": args["method"], "suite": "memory",
               "run_dir": str(run_dir), "config": {"logging": {"run_dir": str(run_dir)}},
               "env_id": args["env.env_id"], "seed": seed, "frames": 3000, "updates": 30,
               "walltime_s": 2.0 if args["method"] == "btr" else 3.0,
               "extra": args.get("extra"),
               "scores": {"final": {"mean": top, "std": 0.1, "episodes": [top]},
                          "best": {"frames": 3000, "mean": top, "std": 0.1, "n": 10},
                          "evaluations": evals},
               "success": {"final": top, "best": top}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    """
)

RUN_OVERRIDES = (
    "run_overrides=['method={method}','seed={seed}','env.env_id={env}','logging.run_dir={run_dir}']"
)


@pytest.fixture
def fake_recipe(tmp_path, monkeypatch):
    script = tmp_path / "fake_recipe.py"
    script.write_text(FAKE_RECIPE)
    calls = tmp_path / "calls.jsonl"
    calls.touch()
    monkeypatch.setenv("FAKE_RECIPE_CALLS", str(calls))
    return script, calls


def _cfg(tmp_path, script, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "config"), version_base="1.3"):
        return compose(
            "benchmark",
            overrides=[
                f"output_dir={tmp_path / 'grid'}",
                f"command=['{{python}}','{script}']",
                RUN_OVERRIDES,
                "report.reps=200",
                *overrides,
            ],
        )


def _calls(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_grid_order_and_validation(tmp_path, fake_recipe):
    script, _ = fake_recipe
    cfg = _cfg(tmp_path, script, "suites={memory: [cue-L4, cue-L8], atari: [Pong]}", "seeds=[0,1]")
    grid = benchmark.build_grid(cfg)
    assert len(grid) == 3 * 2 * 2
    assert grid[0] == benchmark.Cell("memory", "cue-L4", "rise", 0)
    assert grid[-1] == benchmark.Cell("atari", "Pong", "btr", 1)
    assert len(set(grid)) == len(grid)
    with pytest.raises(benchmark.GridConfigError, match="grid='nope' is not defined"):
        benchmark.build_grid(_cfg(tmp_path, script, "grid=nope"))
    with pytest.raises(benchmark.GridConfigError, match="seeds"):
        benchmark.build_grid(_cfg(tmp_path, script, "seeds=[]"))
    with pytest.raises(benchmark.GridConfigError, match="duplicates"):
        benchmark.build_grid(_cfg(tmp_path, script, "methods=[rise,rise]"))
    with pytest.raises(benchmark.GridConfigError, match="same run directory"):
        benchmark.build_grid(_cfg(tmp_path, script, "suites={atari: ['ALE/Pong', ALE_Pong]}"))
    with pytest.raises(benchmark.GridConfigError, match=r"suites\.memory"):
        benchmark.build_grid(_cfg(tmp_path, script, "suites={memory: []}"))


def test_cell_command_formats_and_quotes(tmp_path, fake_recipe):
    script, _ = fake_recipe
    cfg = _cfg(
        tmp_path,
        script,
        "overrides=['total_frames=3000']",
        "suite_overrides.atari=['env.num_envs=2']",
        "method_overrides.btr=['loss.munchausen=false']",
    )
    cell = benchmark.Cell("atari", "ALE/Pong v5", "btr", 3)
    run_dir = cell.run_dir(tmp_path)
    assert run_dir == tmp_path / "runs" / "atari" / "ALE_Pong_v5" / "btr" / "seed3"
    args = benchmark.cell_command(cfg, cell, run_dir)
    assert args[:2] == [sys.executable, str(script)]
    assert args[2:] == [
        "method=btr",
        "seed=3",
        "env.env_id='ALE/Pong v5'",  # quoted: hydra would split on the space otherwise
        f"logging.run_dir={run_dir}",
        "total_frames=3000",
        "env.num_envs=2",
        "loss.munchausen=false",
    ]
    # an interrupted run (checkpoint marker present) continues from its checkpoint
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("frames_1000\n")
    assert f"resume={run_dir}" in benchmark.cell_command(cfg, cell, run_dir)
    bad = _cfg(tmp_path, script, "overrides=['x={nope}']")
    with pytest.raises(benchmark.GridConfigError, match="unknown placeholder"):
        benchmark.cell_command(bad, cell, run_dir)


def test_local_grid_runs_reports_and_resumes(tmp_path, fake_recipe):
    script, calls = fake_recipe
    cfg = _cfg(
        tmp_path, script, "suites={memory: [cue-L4, cue-L8]}", "seeds=[0,1]", "launcher.workers=2"
    )
    assert benchmark.run_grid(cfg) == 0
    grid = benchmark.build_grid(cfg)
    out = tmp_path / "grid"
    assert all(is_run_complete(c.run_dir(out)) for c in grid)
    assert len(_calls(calls)) == len(grid) == 8
    report = (out / "report" / "report.md").read_text()
    assert "## memory" in report and "final_success" in report
    assert "rise > btr" in report
    agg = json.loads((out / "report" / "aggregates.json").read_text())
    # success rates 0.90/0.91 (rise) and 0.50/0.51 (btr) on both tasks: IQM = mean of the middle half
    assert agg["aggregates"]["memory"]["rise"]["iqm"]["point"] == pytest.approx(0.905)
    assert agg["aggregates"]["memory"]["btr"]["iqm"]["point"] == pytest.approx(0.505)
    assert agg["probability_of_improvement"]["memory"]["rise > btr"]["point"] == 1.0
    for png in ("memory_aggregate.png", "memory_learning_curves.png", "memory_per_game.png"):
        assert (out / "report" / png).stat().st_size > 2000

    # resume: delete one run's summary (as if it was interrupted) -> only that run is redone
    victim = grid[5].run_dir(out)
    (victim / "summary.json").unlink()
    assert benchmark.run_grid(cfg) == 0
    redone = _calls(calls)[len(grid) :]
    assert len(redone) == 1 and f"logging.run_dir={victim}" in redone[0]
    # everything finished: nothing is run again
    assert benchmark.run_grid(cfg) == 0
    assert len(_calls(calls)) == len(grid) + 1


def test_published_results_rebuild_the_report_without_the_runs(tmp_path, fake_recipe):
    """publish_dir: each finished run is copied as it lands (no machine paths in the copies), and
    the report rebuilds from the copies alone, with the same numbers."""
    script, _ = fake_recipe
    docs = tmp_path / "docs" / "grid"
    cfg = _cfg(tmp_path, script, "suites={memory: [cue-L4]}", "seeds=[0,1]", f"publish_dir={docs}")
    assert benchmark.run_grid(cfg) == 0
    out = tmp_path / "grid"
    for cell in benchmark.build_grid(cfg):
        copy = cell.run_dir(docs)
        assert sorted(p.name for p in copy.iterdir()) == sorted(EXPORTED_FILES)
        summary = (copy / "summary.json").read_text()
        assert str(tmp_path) not in summary
        assert json.loads(summary)["run_dir"] == str(cell.run_dir(out).relative_to(out))
    runs_csv = (docs / "report" / "runs.csv").read_text()
    assert str(tmp_path) not in runs_csv and "runs/memory/cue-L4/rise/seed0" in runs_csv
    before = json.loads((docs / "report" / "aggregates.json").read_text())
    shutil.rmtree(out)  # a fresh clone: only what was committed
    rebuilt = _cfg(
        tmp_path,
        script,
        "suites={memory: [cue-L4]}",
        "seeds=[0,1]",
        f"publish_dir={docs}",
        "launcher.name=report",
    )
    assert benchmark.run_grid(rebuilt) == 0
    assert json.loads((docs / "report" / "aggregates.json").read_text()) == before


def test_export_run_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"status": "interrupted"}')
    with pytest.raises(ValueError, match="not a finished run"):
        export_run(tmp_path / "run", tmp_path / "copy", root=tmp_path)


LOG = benchmark.LOG_FILE


def test_failed_runs_are_reported_and_retried(tmp_path, fake_recipe):
    script, calls = fake_recipe
    cfg = _cfg(tmp_path, script, "suites={memory: [cue-L4, crash]}", "seeds=[0]", "methods=[rise]")
    assert benchmark.run_grid(cfg) == 1
    out = tmp_path / "grid"
    crashed = benchmark.Cell("memory", "crash", "rise", 0).run_dir(out)
    assert "simulated crash" in (crashed / benchmark.LOG_FILE).read_text()
    report = (out / "report" / "report.md").read_text()
    assert "1 expected runs did not finish" in report and "memory/crash/rise/seed0" in report
    assert benchmark.run_grid(cfg) == 1  # the failed run is retried, the finished one is not
    envs = [dict(a.split("=", 1) for a in c)["env.env_id"] for c in _calls(calls)]
    assert envs == ["cue-L4", "crash", "crash"]
    # each retry starts in a clean directory; the failed run is kept beside it, never reported
    aside = crashed.with_name("seed0.failed-1")
    assert (aside / "train.csv").exists() and "simulated crash" in (aside / LOG).read_text()
    assert (crashed / "train.csv").exists() and (crashed / LOG).read_text().count("# ") == 1
    assert benchmark.run_grid(cfg) == 1
    assert crashed.with_name("seed0.failed-2").is_dir()
    # a run that is live there (its lock held) is never moved
    from torchrl_rise.training.checkpoint import RunLock

    with RunLock(crashed):
        benchmark._set_aside_failed_run(cfg, crashed)
    assert (crashed / "train.csv").exists() and not crashed.with_name("seed0.failed-3").exists()
    assert "memory/crash/rise/seed0" in (out / "report" / "report.md").read_text()


def test_report_only_and_ray_missing(tmp_path, fake_recipe):
    script, calls = fake_recipe
    cfg = _cfg(tmp_path, script, "suites={memory: [cue-L4]}", "seeds=[0]", "launcher.name=report")
    assert benchmark.run_grid(cfg) == 2  # nothing run, nothing to report
    assert _calls(calls) == []
    assert not (tmp_path / "grid" / "report").exists()
    try:
        import ray  # noqa: F401
    except ImportError:
        ray_cfg = _cfg(tmp_path, script, "suites={memory: [cue-L4]}", "launcher.name=ray")
        with pytest.raises(ImportError, match=r"torchrl_rise\[ray\]"):
            benchmark.run_grid(ray_cfg)
    with pytest.raises(benchmark.GridConfigError, match=r"launcher\.name"):
        benchmark.run_grid(_cfg(tmp_path, script, "launcher.name=slurm"))
    with pytest.raises(benchmark.GridConfigError, match="must be run as"):
        benchmark.run_grid(_cfg(tmp_path, script, "launcher.name=hydra"))
    # a suite without a recipe fails before anything runs
    no_recipe = _cfg(
        tmp_path, script, "command=['{python}','{repo}/recipes/{suite}.py']", "suites={nosuch: [x]}"
    )
    with pytest.raises(benchmark.GridConfigError, match=r"nosuch\.py, which does not exist"):
        benchmark.run_grid(no_recipe)
    assert _calls(calls) == []


@pytest.mark.slow
def test_hydra_submitit_local_launcher(tmp_path, fake_recipe):
    """The cluster path end to end: driver -> hydra multirun on submitit_local -> report."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    script, calls = fake_recipe
    out = tmp_path / "grid"
    cmd = recipe_cmd(
        "benchmark",
        f"output_dir={out}",
        f"command=['{{python}}','{script}']",
        RUN_OVERRIDES,
        "suites={memory: [cue-L4]}",
        "seeds=[0,1]",
        "report.reps=200",
        "launcher.name=hydra",
        "launcher.hydra_launcher=submitit_local",
        "launcher.hydra_overrides=['hydra.launcher.timeout_min=5']",
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_calls(calls)) == 4
    assert (out / "report" / "report.md").exists()
    assert list((out / ".hydra_jobs").rglob("*_submitted.pkl"))  # submitit really ran the jobs
    # resume through the same path: nothing left to do, no multirun started
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0 and len(_calls(calls)) == 4


@pytest.mark.slow
def test_real_memory_recipe_grid(tmp_path):
    """A 2-run grid (RISE, BTR) of the real memory recipe on its tiny preset, then the report."""
    out = tmp_path / "grid"
    cmd = recipe_cmd(
        "benchmark",
        f"output_dir={out}",
        "suites={memory: [cue-L4]}",
        "seeds=[0]",
        "overrides=['preset=tiny']",
        "report.reps=200",
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=580, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method in ("rise", "btr"):
        run = out / "runs" / "memory" / "cue-L4" / method / "seed0"
        assert is_run_complete(run)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["method"] == method and summary["env_id"] == "cue-L4"
        assert summary["frames"] >= 2048
    report = (out / "report" / "report.md").read_text()
    assert "## memory" in report and "rise > btr" in report
    rep = build_report(
        out / "runs", tmp_path / "again", reps=100, suite_scores={"memory": "final_success"}
    )
    assert set(rep.aggregates["memory"]) == {"rise", "btr"}


def test_the_cpu_results_grid_config(tmp_path):
    """benchmark_cpu.yaml (docs/results.md): 3 tasks x 3 methods x 2 seeds, each with its preset."""
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "config"), version_base="1.3"):
        cfg = compose("benchmark_cpu", overrides=[f"output_dir={tmp_path}"])
    grid = benchmark.build_grid(cfg)
    assert len(grid) == 18 and grid[0].suite == "memorygym"  # the memory task runs first
    assert {c.method for c in grid} == {"rise", "btr", "recurrent"}
    for cell in grid:
        args = benchmark.cell_command(cfg, cell, cell.run_dir(tmp_path))
        assert args[1].endswith(f"recipes/{cell.suite}.py")
        assert f"preset=cpu_{cell.suite}" in args and f"method={cell.method}" in args
    assert int(cfg.launcher.workers) == 2 and cfg.env_vars.OMP_NUM_THREADS == "1"


def test_variants_are_rows_of_their_own(tmp_path, fake_recipe):
    """A variant runs its method with its overrides, in its own run dirs, as its own report row."""
    script, calls = fake_recipe
    variants = "+variants.rise_x={method: rise, overrides: ['extra=x']}"
    cfg = _cfg(
        tmp_path,
        script,
        "suites={memory: [cue-L4]}",
        "seeds=[0]",
        variants,
        "methods=[rise,rise_x,btr]",
    )
    grid = benchmark.build_grid(cfg)
    assert [c.method for c in grid] == ["rise", "rise_x", "btr"]
    cell = grid[1]
    args = benchmark.cell_command(cfg, cell, cell.run_dir(tmp_path))
    assert "method=rise" in args and args[-1] == "extra=x"
    assert cell.run_dir(tmp_path).parent.name == "rise_x"
    assert benchmark.run_grid(cfg) == 0
    assert sum(1 for c in _calls(calls) if "extra=x" in c) == 1
    agg = json.loads((tmp_path / "grid" / "report" / "aggregates.json").read_text())
    assert set(agg["aggregates"]["memory"]) == {"rise", "rise_x", "btr"}
    for bad, match in (
        ("+variants.rise={method: rise}", "shadows the method"),
        ("+variants.v={method: nope}", r"variants\.v\.method"),
        ("+variants.v={method: rise, overrides: 3}", r"variants\.v\.overrides"),
    ):
        with pytest.raises(benchmark.GridConfigError, match=match):
            benchmark.build_grid(_cfg(tmp_path, script, bad))
    with pytest.raises(benchmark.GridConfigError, match="variants"):
        benchmark.build_grid(_cfg(tmp_path, script, "methods=[rise_y]"))
    with pytest.raises(benchmark.GridConfigError, match="run directory name"):
        benchmark.grid_variants(OmegaConf.create({"variants": {"a b": {"method": "rise"}}}))


def test_the_cpu_ablation_grid_config(tmp_path):
    """ablation_cpu.yaml: each row is the preset plus one change."""
    with initialize_config_dir(config_dir=str(REPO / "recipes" / "config"), version_base="1.3"):
        cfg = compose("ablation_cpu", overrides=[f"output_dir={tmp_path}"])
    grid = benchmark.build_grid(cfg)
    assert {c.suite for c in grid} == {"vizdoom", "miniworld"} and len(grid) == 2 * 8 * 3
    base = {}
    for cell in grid:
        args = benchmark.cell_command(cfg, cell, cell.run_dir(tmp_path))
        assert f"preset=cpu_{cell.suite}" in args
        base[cell.method] = [a for a in args if "run_dir" not in a and not a.startswith("seed")]
    assert base["rise_muted"] == base["rise"] + ["++network.kwargs.mute_context=true"]
    assert base["rise_gate3"] == base["rise"] + ["++network.kwargs.gate_bias_init=3.0"]
    assert base["rise_gate1"] == base["rise"] + ["++network.kwargs.gate_bias_init=1.0"]
    assert base["rise_zeroproj"] == base["rise"] + ["++network.kwargs.context_proj_zero_init=true"]
    assert base["rise_gate2x"] == base["rise"] + ["++network.kwargs.gate_scale=2.0"]
    # the one combined row: the gate scaled by 2 and started at exactly 1
    assert base["rise_gate2x_zero"] == base["rise"] + [
        "++network.kwargs.gate_scale=2.0",
        "++network.kwargs.gate_bias_init=0.0",
        "++network.kwargs.context_proj_zero_init=true",
    ]
    assert cfg.publish_dir.endswith("docs/results_ablation/ablation")
