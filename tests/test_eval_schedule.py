"""Unit tests of torchrl_rise.training.eval_schedule: when a run evaluates, what it records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from torchrl_rise.training import load_config
from torchrl_rise.training.counters import Counters, Schedule
from torchrl_rise.training.eval_schedule import EvalSchedule, Evaluator
from torchrl_rise.training.evaluation import EvalResult


def test_records_the_history_the_final_episodes_and_the_next_due_frame():
    evals = EvalSchedule(interval_frames=100, final=True)
    c, s = Counters(frames=150, updates=7), Schedule(next_eval=100)
    assert evals.due(c, s) and evals.final_due(c)
    row = evals.record(
        EvalResult(scores=[1.0, 2.0, 3.0], successes=[1.0, 0.0, 1.0]), c, s, walltime_s=4.0
    )
    assert (row["frames"], row["updates"], row["walltime_s"], row["median"]) == (150, 7, 4.0, 2.0)
    assert s.next_eval == 200 and not evals.due(c, s)
    assert evals.history == [
        {"frames": 150, "mean": 2.0, "std": row["std"], "n": 3, "success_rate": 2 / 3}
    ]
    assert evals.last["episodes"] == [1.0, 2.0, 3.0]
    assert not evals.final_due(c)  # these frames were just evaluated
    assert evals.final_due(Counters(frames=160))
    assert not EvalSchedule(interval_frames=100, final=False).final_due(c)


def test_state_round_trips_through_a_checkpoint():
    evals = EvalSchedule(interval_frames=10, final=True)
    assert evals.state_dict() == {"evaluations": [], "final_eval": {}}
    evals.record(EvalResult(scores=[5.0]), Counters(frames=10), Schedule(), walltime_s=1.0)
    copy = EvalSchedule(interval_frames=10, final=True)
    shared = copy.history  # the trainer's `evaluations` is this list
    copy.load_state_dict(evals.state_dict())
    assert shared is copy.history
    assert copy.history == evals.history and copy.last == evals.last
    copy.load_state_dict({"evaluations": [], "final_eval": {}})
    assert copy.history == [] and copy.last is None


class _Logs:
    def __init__(self):
        self.rows, self.videos = [], []

    def log_eval(self, row):
        self.rows.append(row)

    def log_video(self, frames, *, step, fps):
        self.videos.append((frames.shape, step, fps))
        return f"video_{step}.mp4"


class _Env:
    closed = 0

    def close(self):
        _Env.closed += 1


def _evaluator(results, made):
    cfg = load_config({"method": "btr", "eval": {"episodes": 3, "interval_frames": 50}})
    comps = SimpleNamespace(
        net="the net",
        eval_env_factory=lambda: made.append(_Env()) or made[-1],
        env_info=SimpleNamespace(score_key="score", success_key=None, frame_channels=3),
    )
    calls = []

    def run_episodes(policy, env, **kwargs):
        calls.append((policy, env, kwargs))
        return results.pop(0)

    logs = _Logs()
    evals = EvalSchedule(interval_frames=50, final=True)
    evaluator = Evaluator(
        cfg,
        comps,
        logs,
        schedule=evals,
        run_episodes=run_episodes,
        num_threads=1,
        should_stop=lambda: False,
    )
    return evaluator, evals, logs, calls


def test_the_evaluator_makes_its_envs_once_logs_rows_and_videos_and_closes_them():
    made = []
    video = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    results = [EvalResult(scores=[1.0], frames=video), EvalResult(scores=[2.0])]
    evaluator, evals, logs, calls = _evaluator(results, made)
    s = Schedule(next_eval=50)
    assert evaluator.evaluate(Counters(frames=50), s, walltime=lambda: 1.0).mean == 1.0
    evaluator.evaluate(Counters(frames=100), s, walltime=lambda: 2.0, final=True)
    assert len(made) == 1 and [c[1] for c in calls] == [made[0], made[0]]
    assert calls[0][0] == "the net" and calls[0][2]["episodes"] == 3
    assert [r["frames"] for r in logs.rows] == [50, 100] and logs.videos == [((2, 4, 4, 3), 50, 30)]
    assert s.next_eval == 150 and len(evals.history) == 2
    evaluator.close()
    evaluator.close()
    assert _Env.closed == 1


def test_an_abandoned_evaluation_records_nothing():
    made = []
    evaluator, evals, logs, _ = _evaluator([EvalResult(scores=[1.0], interrupted=True)], made)
    s = Schedule(next_eval=50)
    assert evaluator.evaluate(Counters(frames=50), s, walltime=lambda: 1.0) is None
    assert s.next_eval == 50 and evals.history == [] and logs.rows == []
