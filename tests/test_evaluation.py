"""torchrl_rise.evaluation: reference tables, normalisation, rliable aggregates, plots, reports."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip(
    "rliable", reason="the aggregates need rliable (absent from a GPU-only install)"
)

from torchrl_rise.evaluation import (
    ATARI_5,
    ATARI_57,
    METRICS,
    PROCGEN_GAMES,
    Curve,
    IntervalEstimate,
    ReportResults,
    aggregate_curves,
    aggregate_scores,
    atari_game_name,
    build_report,
    collect_runs,
    compute_results,
    human_normalized_score,
    iqm,
    is_run_complete,
    load_run,
    min_max_normalized_score,
    normalize_score,
    optimality_gap,
    per_game_table,
    plot_interval_estimates,
    plot_learning_curves,
    plot_task_curves,
    probability_of_improvement,
    procgen_normalized_score,
    reference_range,
    render_markdown,
    score_matrices,
    write_figures,
)
from torchrl_rise.evaluation.atari_scores import ATARI_REFERENCE_SCORES

# ---------------------------------------------------------------------------- reference tables


@pytest.mark.parametrize(
    "game, random, human",
    [
        ("pong", -20.7, 14.6),
        ("breakout", 1.7, 30.5),
        ("montezuma_revenge", 0.0, 4753.3),
        ("space_invaders", 148.0, 1668.7),
        ("seaquest", 68.4, 42054.7),
        ("ms_pacman", 307.3, 6951.6),
        ("qbert", 163.9, 13455.0),
        ("skiing", -17098.1, -4336.9),
    ],
)
def test_atari_reference_scores_match_published_values(game, random, human):
    assert ATARI_REFERENCE_SCORES[game] == (random, human)


def test_atari_table_covers_the_57_games():
    assert len(ATARI_57) == 57 == len(set(ATARI_57))
    assert set(ATARI_5) <= set(ATARI_57)
    # every game has human > random except where the table itself says otherwise: none do
    assert all(ref.human > ref.random for ref in ATARI_REFERENCE_SCORES.values())


@pytest.mark.parametrize(
    "env_id, game",
    [
        ("ALE/Pong-v5", "pong"),
        ("PongNoFrameskip-v4", "pong"),
        ("BreakoutDeterministic-v4", "breakout"),
        ("KungFuMaster", "kung_fu_master"),
        ("ALE/UpNDown-v5", "up_n_down"),
        ("MsPacman", "ms_pacman"),
        ("battle_zone", "battle_zone"),
        ("qbert", "qbert"),
    ],
)
def test_atari_game_name_understands_common_ids(env_id, game):
    assert atari_game_name(env_id) == game


def test_atari_unknown_game_is_a_clear_error():
    with pytest.raises(KeyError, match="not one of the Atari-57 games"):
        atari_game_name("ALE/Tetris-v5")


# ---------------------------------------------------------------------------- normalisation


def test_human_normalized_score_hand_computed():
    # (score - random) / (human - random)
    assert human_normalized_score(14.6, "Pong") == pytest.approx(1.0)
    assert human_normalized_score(-20.7, "Pong") == pytest.approx(0.0)
    assert human_normalized_score(0.0, "Pong") == pytest.approx(20.7 / 35.3)
    assert human_normalized_score(400.0, "ALE/Breakout-v5") == pytest.approx((400 - 1.7) / 28.8)
    out = human_normalized_score(np.array([1.7, 30.5, 59.3]), "breakout")
    np.testing.assert_allclose(out, [0.0, 1.0, 2.0])


def test_procgen_normalized_score_hand_computed():
    assert procgen_normalized_score(10.0, "coinrun") == pytest.approx(1.0)
    assert procgen_normalized_score(7.5, "procgen:procgen-coinrun-v0") == pytest.approx(0.5)
    assert procgen_normalized_score(33.25, "starpilot") == pytest.approx((33.25 - 2.5) / 61.5)
    assert procgen_normalized_score(0.0, "fruitbot") == pytest.approx(1.5 / 33.9)
    assert procgen_normalized_score(3.0, "jumper") == pytest.approx(0.0)  # easy R_min is 3
    assert procgen_normalized_score(3.0, "jumper", mode="hard") == pytest.approx(2 / 9)
    assert len(PROCGEN_GAMES) == 16
    with pytest.raises(ValueError, match="'easy' or 'hard'"):
        procgen_normalized_score(1.0, "coinrun", mode="medium")
    with pytest.raises(KeyError, match="Procgen game"):
        procgen_normalized_score(1.0, "not-a-game")


def test_generic_min_max_and_dispatch():
    assert min_max_normalized_score(-400.0, low=-400, high=100) == 0.0
    assert min_max_normalized_score(50.0, low=-400, high=100) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="high > low"):
        min_max_normalized_score(1.0, low=1.0, high=1.0)
    assert normalize_score(30.5, suite="atari", env_id="Breakout") == pytest.approx(1.0)
    assert normalize_score(7.5, suite="procgen", env_id="coinrun") == pytest.approx(0.5)
    ranges = {"basic": [-400, 100], "Pong": (0.0, 21.0)}
    assert normalize_score(50.0, suite="vizdoom", env_id="basic", ranges=ranges) == 0.9
    # a user range wins over the built-in table
    assert normalize_score(21.0, suite="atari", env_id="Pong", ranges=ranges) == 1.0
    assert reference_range("miniworld", "MiniWorld-Hallway-v0")[:2] == (0.0, 1.0)
    assert reference_range("miniworld", "MiniWorld-Sign-v0")[:2] == (-1.0, 1.0)
    assert reference_range("miniworld", "MiniWorld-CollectHealth-v0") is None
    assert reference_range("memory", "cue-L20") is None
    with pytest.raises(KeyError, match="no reference range"):
        normalize_score(1.0, suite="vizdoom", env_id="basic")
    with pytest.raises(ValueError, match="high > low"):
        reference_range("vizdoom", "basic", ranges={"basic": [5, 1]})


# ---------------------------------------------------------------------------- aggregates


def test_iqm_matches_hand_computed_trimmed_mean():
    scores = np.array([[9.0, 1.0], [4.0, 100.0], [2.0, 3.0], [-50.0, 5.0]])
    # 8 values sorted: -50 1 2 3 | 4 5 9 100 -> drop 2 lowest and 2 highest -> mean(2, 3, 4, 5)
    assert iqm(scores) == pytest.approx(3.5)
    est = aggregate_scores({"m": scores}, reps=100)["m"]
    assert est["iqm"].point == pytest.approx(3.5)
    # median / mean of per-task means: task means are -8.75 and 27.25
    assert est["median"].point == pytest.approx(9.25)
    assert est["mean"].point == pytest.approx(9.25)
    assert optimality_gap(np.array([[0.5, 2.0], [0.0, 1.0]])) == pytest.approx(1 - 2.5 / 4)


def test_confidence_intervals_bracket_and_shrink_with_more_runs():
    rng = np.random.default_rng(0)
    widths = []
    for runs in (3, 30):
        scores = rng.normal(1.0, 0.5, size=(runs, 4))
        est = aggregate_scores({"m": scores}, reps=500, seed=1)["m"]
        for e in est.values():
            assert e.low <= e.point <= e.high
        widths.append(est["iqm"].high - est["iqm"].low)
    assert widths[1] < 0.6 * widths[0]


def test_bootstrap_is_reproducible_and_validated():
    scores = {"m": np.random.default_rng(0).uniform(size=(5, 3))}
    before = np.random.get_state()[1].copy()
    assert aggregate_scores(scores, reps=200, seed=3) == aggregate_scores(scores, reps=200, seed=3)
    assert aggregate_scores(scores, reps=200, seed=3) != aggregate_scores(scores, reps=200, seed=4)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG left alone
    with pytest.raises(ValueError, match="NaN"):
        aggregate_scores({"m": np.array([[1.0, np.nan]])})
    with pytest.raises(ValueError, match=r"\[runs, tasks\]"):
        aggregate_scores({"m": np.ones(3)})
    with pytest.raises(ValueError, match="unknown metrics"):
        aggregate_scores(scores, metrics=["max"])


def test_aggregate_curves_and_probability_of_improvement():
    t = np.linspace(0.0, 1.0, 5)
    curves = np.stack([np.stack([t * (1 + 0.1 * r), t * 2]) for r in range(4)])  # [4, 2, 5]
    point, low, high = aggregate_curves({"m": curves}, reps=200)["m"]
    assert point.shape == low.shape == high.shape == (5,)
    expected = [iqm(curves[..., j]) for j in range(5)]
    np.testing.assert_allclose(point, expected)
    assert np.all(low <= point + 1e-12) and np.all(point <= high + 1e-12)

    better, worse = np.full((4, 3), 2.0), np.ones((5, 3))
    assert probability_of_improvement(better, worse, reps=100).point == 1.0
    assert probability_of_improvement(worse, better, reps=100).point == 0.0
    assert probability_of_improvement(worse, worse, reps=100).point == 0.5
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(better, np.ones((4, 2)))


def _rliable_intervals(score_dict, func, *, reps, seed, confidence=0.95):
    """rliable called directly, with the global NumPy seed its bootstrap actually draws from."""
    import warnings

    from rliable import library

    np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return library.get_interval_estimates(
            score_dict, func, reps=reps, confidence_interval_size=confidence
        )


def test_aggregates_equal_rliables_on_a_toy_score_matrix():
    from rliable import metrics as rly

    toy = {
        "rise": np.array([[0.9, 1.4, 0.2], [1.1, 1.2, 0.4], [0.7, 2.0, 0.1], [1.3, 0.8, 0.3]]),
        "btr": np.array([[0.5, 1.0, 0.0], [0.6, 0.7, 0.2], [0.4, 1.5, 0.1], [0.9, 0.6, 0.0]]),
    }
    names = ["median", "iqm", "mean", "optimality_gap"]
    fns = [
        rly.aggregate_median,
        rly.aggregate_iqm,
        rly.aggregate_mean,
        rly.aggregate_optimality_gap,
    ]
    for name, fn in zip(names, fns):  # the metrics are rliable's own functions
        assert METRICS[name](toy["rise"]) == fn(toy["rise"]), name
    ours = aggregate_scores(toy, metrics=names, reps=300, seed=5)
    points, intervals = _rliable_intervals(
        toy, lambda x: np.array([f(x) for f in fns]), reps=300, seed=5
    )
    for method in toy:
        for i, name in enumerate(names):
            est = ours[method][name]
            assert est.point == pytest.approx(float(fns[i](toy[method])))
            assert est.point == pytest.approx(points[method][i])
            assert (est.low, est.high) == pytest.approx(tuple(intervals[method][:, i]))

    x, y = toy["rise"], toy["btr"]
    p = probability_of_improvement(x, y, reps=300, seed=5)
    assert p.point == pytest.approx(float(rly.probability_of_improvement(x, y)))
    points, intervals = _rliable_intervals(
        {"p": [x, y]}, rly.probability_of_improvement, reps=300, seed=5
    )
    assert p.point == pytest.approx(float(points["p"]))
    assert (p.low, p.high) == pytest.approx(tuple(np.ravel(intervals["p"])))


def test_rliable_ignores_its_random_state_so_the_seed_wrapper_is_needed():
    """Why aggregate.py seeds NumPy's global generator: rliable's StratifiedBootstrap draws from
    it and ignores ``random_state``. If this starts failing, rliable honours the seed and the
    wrapper (``_interval_estimates``) can pass ``random_state`` alone."""
    import warnings

    from rliable import library
    from rliable import metrics as rly

    scores = {"m": np.random.default_rng(0).uniform(size=(5, 4))}

    def ci(global_seed: int, state: int) -> np.ndarray:
        np.random.seed(global_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _, intervals = library.get_interval_estimates(
                scores,
                lambda x: np.array([rly.aggregate_iqm(x)]),
                reps=100,
                random_state=np.random.RandomState(state),
            )
        return intervals["m"]

    np.testing.assert_array_equal(ci(1, state=0), ci(1, state=123))  # random_state ignored
    assert not np.array_equal(ci(1, state=0), ci(2, state=0))  # the global state decides


def test_score_matrices_and_per_game_table():
    df = pd.DataFrame(
        {
            "method": ["a"] * 5 + ["b"] * 3,
            "task": ["t1", "t1", "t2", "t2", "t3", "t1", "t1", "t2"],
            "seed": [1, 0, 0, 1, 0, 0, 1, 0],
            "score": [2.0, 1.0, 3.0, 4.0, 9.0, 5.0, 6.0, 7.0],
        }
    )
    mats, tasks = score_matrices(df)
    # t3 has no runs of b; t2 has only one run of b -> one run per task for every method
    assert tasks == ["t1", "t2"]
    np.testing.assert_array_equal(mats["a"], [[1.0, 3.0]])
    np.testing.assert_array_equal(mats["b"], [[5.0, 7.0]])
    table = per_game_table(df, values=["score"])
    assert table.loc[("t1", "a"), "score_mean"] == 1.5
    assert table.loc[("t1", "a"), "score_std"] == pytest.approx(math.sqrt(0.5))
    assert table.loc[("t3", "a"), "runs"] == 1
    with pytest.raises(ValueError, match="lacks columns"):
        score_matrices(df.drop(columns="seed"))


# ---------------------------------------------------------------------------- plots


def _assert_png(path, min_bytes=3000):
    assert path.exists() and path.stat().st_size > min_bytes
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > 200 and img.height > 150
        colors = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # not a blank canvas


def test_plots_write_valid_pngs(tmp_path):
    x = np.array([0.0, 5e5, 1e6])
    curves = {
        "rise": Curve(x, np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.4, 0.8]), np.ones(3) * 1.1),
        "btr": Curve(x, np.array([0.0, 0.2, 0.3]), np.array([0.0, 0.1, 0.2]), np.ones(3) * 0.4),
    }
    _assert_png(plot_learning_curves(curves, tmp_path / "curves.png", title="t"))
    _assert_png(plot_task_curves({"pong": curves, "breakout": curves}, tmp_path / "tasks.png"))
    est = {
        "rise": {"iqm": IntervalEstimate(0.8, 0.7, 0.9), "mean": IntervalEstimate(1.0, 0.8, 1.1)},
        "btr": {"iqm": IntervalEstimate(0.5, 0.4, 0.6), "mean": IntervalEstimate(0.6, 0.5, 0.7)},
    }
    _assert_png(plot_interval_estimates(est, tmp_path / "sub" / "agg.png"))
    with pytest.raises(ValueError, match=r"\.png"):
        plot_learning_curves(curves, tmp_path / "curves.jpg")
    with pytest.raises(ValueError, match="one length"):
        plot_learning_curves({"m": Curve(x, x[:2], x, x)}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no estimate for metrics"):
        plot_interval_estimates(est, tmp_path / "a.png", metrics=["median"])


# ---------------------------------------------------------------------------- runs and reports


def _write_run(root, method, suite, env_id, seed, final, *, evals=None, status="finished", **extra):
    run = root / suite / env_id.replace("/", "_") / method / f"seed{seed}"
    run.mkdir(parents=True)
    evals = evals if evals is not None else [(1e5, final / 2), (2e5, final)]
    summary = {
        "status": status,
        "method": method,
        "suite": suite,
        "env_id": env_id,
        "seed": seed,
        "frames": evals[-1][0],
        "walltime_s": extra.pop("walltime_s", 100.0),
        "scores": {
            "final": {"mean": final, "std": 1.0, "episodes": [final]},
            "best": {"frames": 2e5, "mean": max(e[1] for e in evals), "std": 1.0, "n": 5},
            "evaluations": [{"frames": f, "mean": m, "std": 1.0, "n": 5} for f, m in evals],
        },
        **extra,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_load_run_tolerates_missing_optional_fields(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    with open(run / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frames", "mean_return", "std_return", "episodes"])
        w.writerows([[1000, 2.0, 0.5, 10], [2000, 5.0, 0.5, 10], [3000, 4.0, 0.5, 10]])
    (run / "summary.json").write_text(json.dumps({"status": "finished", "seed": 2}))
    (run / "benchmark_cell.json").write_text(
        json.dumps({"suite": "memory", "env_id": "cue-L8", "method": "rise", "seed": 2})
    )
    assert not is_run_complete(run)  # no final score in summary.json
    r = load_run(run)
    assert (r.method, r.suite, r.env_id, r.seed) == ("rise", "memory", "cue-L8", 2)
    assert r.final == 4.0 and r.best == 5.0 and r.frames == 3000
    assert r.walltime_s is None and r.final_success is None
    assert [e[:2] for e in r.evaluations] == [(1000, 2.0), (2000, 5.0), (3000, 4.0)]
    # a report from such bare runs still works (no walltime, observed-range normalisation)
    rep = build_report([r], tmp_path / "rep", reps=50)
    assert rep.aggregates["memory"]["rise"]["iqm"].point == pytest.approx(2 / 3)  # (4-2)/(5-2)
    assert "| rise | 1 | - | - | - |" in rep.markdown.read_text()
    (run / "benchmark_cell.json").unlink()
    with pytest.raises(ValueError, match="'method'"):
        load_run(run)
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nothing")


def test_is_run_complete_rejects_interrupted_and_broken(tmp_path):
    done = _write_run(tmp_path, "btr", "atari", "Pong", 0, 1.0)
    interrupted = _write_run(tmp_path, "btr", "atari", "Pong", 1, 1.0, status="interrupted")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    assert is_run_complete(done)
    assert not is_run_complete(interrupted) and not is_run_complete(broken)
    assert [r.seed for r in collect_runs(tmp_path)] == [0]


def test_report_aggregates_fake_runs(tmp_path):
    runs = tmp_path / "runs"
    # Atari: human-normalised. rise scores 14.6 (=1.0) on Pong and 30.5 (=1.0) on Breakout, btr
    # scores random (=0.0); seeds add a little so the CIs are not degenerate.
    for seed in range(3):
        _write_run(
            runs, "rise", "atari", "ALE/Pong-v5", seed, 14.6 + 0.353 * seed, walltime_s=120.0
        )
        _write_run(runs, "rise", "atari", "Breakout", seed, 30.5 + 0.288 * seed, walltime_s=120.0)
        _write_run(
            runs, "btr", "atari", "ALE/Pong-v5", seed, -20.7 + 0.353 * seed, walltime_s=100.0
        )
        _write_run(runs, "btr", "atari", "Breakout", seed, 1.7 + 0.288 * seed, walltime_s=100.0)
        # ViZDoom: no reference -> observed min-max over the report's runs (evaluations included)
        _write_run(runs, "rise", "vizdoom", "basic", seed, 80.0, evals=[(1e5, -300.0), (2e5, 80.0)])
        _write_run(runs, "btr", "vizdoom", "basic", seed, 0.0, evals=[(1e5, -300.0), (2e5, 0.0)])
        # memory: success rates (suite_scores)
        _write_run(
            runs, "rise", "memory", "cue-L8", seed, 1.0, success={"final": 0.97, "best": 0.99}
        )
        _write_run(runs, "btr", "memory", "cue-L8", seed, 0.5, success={"final": 0.5, "best": 0.6})
    rep = build_report(
        runs, tmp_path / "report", reps=300, suite_scores={"memory": "final_success"}
    )
    atari = rep.aggregates["atari"]
    assert atari["rise"]["iqm"].point == pytest.approx(1.01)  # seeds add 0.00, 0.01, 0.02
    assert atari["btr"]["iqm"].point == pytest.approx(0.01)
    assert atari["rise"]["optimality_gap"].point == pytest.approx(0.0)
    assert atari["btr"]["optimality_gap"].point == pytest.approx(0.99)
    assert rep.improvement["atari"]["rise > btr"].point == 1.0
    vizdoom = rep.aggregates["vizdoom"]
    assert vizdoom["rise"]["mean"].point == pytest.approx(1.0)
    assert vizdoom["btr"]["mean"].point == pytest.approx(300 / 380)
    memory = rep.aggregates["memory"]
    assert memory["rise"]["iqm"].point == pytest.approx(0.97)
    assert memory["btr"]["iqm"].point == pytest.approx(0.5)

    # every suite's tasks pooled: 4 tasks x 3 seeds per method
    overall = rep.aggregates["all suites"]
    assert overall["rise"]["mean"].point == pytest.approx((6.06 + 3.0 + 2.91) / 12)
    assert overall["btr"]["mean"].point == pytest.approx((0.06 + 900 / 380 + 1.5) / 12)
    assert rep.improvement["all suites"]["rise > btr"].point > 0.9
    assert len(rep.runs) == 24
    pong = rep.runs[(rep.runs.task == "ALE/Pong-v5") & (rep.runs.method == "btr")]
    np.testing.assert_allclose(pong.normalized, [0.0, 0.01, 0.02], atol=1e-9)

    text = rep.markdown.read_text()
    for needle in (
        "## all suites",
        "(4 tasks)",
        "| atari/Breakout | rise |",
        "## atari",
        "## memory",
        "## vizdoom",
        "human-normalised; DQN Zoo",
        "observed min-max",
        "rise > btr",
        "walltime / btr",
        "| 1.2 |",  # rise's walltime ratio 120 / 100
        "final_success",
    ):
        assert needle in text, needle
    assert {p.name for p in rep.figures} >= {
        "all_suites_aggregate.png",
        "atari_aggregate.png",
        "atari_learning_curves.png",
        "atari_per_game.png",
        "memory_aggregate.png",
    }
    for fig in rep.figures:
        _assert_png(fig, min_bytes=2000)
        assert f"({fig.name})" in text
    saved = json.loads((tmp_path / "report" / "aggregates.json").read_text())
    assert saved["aggregates"]["atari"]["rise"]["iqm"]["point"] == pytest.approx(1.01)
    assert "all suites" in saved["aggregates"]
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 24


def test_report_fallback_none_and_bad_options(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(2):
        _write_run(runs, "rise", "vizdoom", "basic", seed, 10.0 + seed)
    rep = build_report(runs, tmp_path / "rep", reps=50, fallback="none")
    assert "vizdoom" not in rep.aggregates and "all suites" not in rep.aggregates
    assert "No normalisation range for basic" in rep.markdown.read_text()
    with pytest.raises(ValueError, match="score must be one of"):
        build_report(runs, tmp_path / "rep", score="median")
    with pytest.raises(ValueError, match="no finished runs"):
        build_report([], tmp_path / "rep")


def test_report_numbers_are_computed_apart_from_the_rendering(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(3):
        _write_run(runs, "rise", "atari", "Pong", seed, 14.6 - seed, walltime_s=120.0)
        _write_run(runs, "btr", "atari", "Pong", seed, -20.7 + seed, walltime_s=100.0)
        _write_run(runs, "rise", "vizdoom", "basic", seed, 10.0 + seed)
    results = compute_results(runs, reps=100, seed=2)
    assert isinstance(results, ReportResults) and list(results.suites) == ["atari", "vizdoom"]
    assert list(tmp_path.iterdir()) == [runs]  # computing writes nothing
    atari = results.suites["atari"]
    assert atari.tasks == ["Pong"] and atari.matrices["rise"].shape == (3, 1)
    np.testing.assert_allclose(atari.matrices["btr"][:, 0], [0.0, 1 / 35.3, 2 / 35.3])
    assert atari.aggregates["rise"]["mean"].point == pytest.approx((14.6 - 1 + 20.7) / 35.3)
    assert atari.aggregates == aggregate_scores(atari.matrices, reps=100, seed=2)
    assert list(atari.improvement) == ["rise > btr"]
    assert set(atari.curves) == {"btr", "rise"} and set(atari.task_curves) == {"Pong"}
    assert atari.walltime.set_index("method")["ratio"].to_dict() == {"btr": 1.0, "rise": 1.2}
    assert len(results.runs) == 9 and not results.suites["vizdoom"].improvement  # no btr there

    # rendering without figures: the same text, minus the images
    text = render_markdown(results, title="T")
    assert text.startswith("# T\n") and "## vizdoom" in text and "![" not in text
    figures = write_figures(results, tmp_path / "figs")
    assert set(figures["atari"]) == {"aggregate", "learning_curves", "per_game"}
    with_images = render_markdown(results, figures=figures)
    assert "![atari aggregates](atari_aggregate.png)" in with_images

    # build_report = compute_results + the rendering, with the same numbers
    rep = build_report(runs, tmp_path / "rep", reps=100, seed=2)
    assert rep.aggregates == results.aggregates and rep.results is not None
    pd.testing.assert_frame_equal(rep.runs, results.runs)
    with pytest.raises(ValueError, match="fallback"):
        compute_results(runs, fallback="zero")


def test_random_policy_scores_script():
    """scripts/random_policy_scores.py plays the recipe's evaluation envs uniformly at random."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["memory", "preset=tiny", "env.env_id=cue-L4-N4", "--episodes", "400"]
    out = subprocess.run(
        [sys.executable, str(root / "scripts" / "random_policy_scores.py"), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env_id"] == "cue-L4-N4" and result["episodes"] == 400
    assert abs(result["success_rate"] - 0.25) < 0.08  # chance with 4 cues
    assert result["mean"] == pytest.approx(result["success_rate"])  # +1 per success
