"""The memory diagnostic in miniature: the context stream is what solves a memory task.

``cue-L8``: a cue at step 0, blank frames, then a query 8 steps later whose rewarded action is the
cue. At the query BTR's 4-frame stack shows only blanks and the query frame, so its greedy policy
answers the same for every cue (success ~ 1/2); RISE's window of the last ``K = 10`` frozen
embeddings still holds the cue. Both methods train on the memory recipe's own configuration
(recipes/config/memory.yaml) with the same overrides that make a run take seconds; docs/results.md
has the full-size version (``cue-L20``, minutes).

If the context stream is disconnected (its output multiplied by zero, so the gate is a constant
0.5) the RISE run scores chance like BTR and the first test fails: docs/results.md reports that run,
and the slow test at the end repeats it as a negative control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from torchrl_rise.modules.context import ContextLSTM
from torchrl_rise.training import load_config, train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "config"
SEED = 0
EVAL_EPISODES = 100

# A few thousand frames of the memory recipe: small frames, a tiny network, one evaluation at the
# end (100 episodes), no replay in the checkpoint. Everything but the method is shared.
OVERRIDES = [
    "preset=tiny",
    "env.env_id=cue-L8",
    "env.frame_size=16",
    "env.num_envs=4",
    "encoder.context_length=10",  # K >= L + 1: the cue is in the window at the query
    "network.kwargs.mlp_hidden=64",
    "network.kwargs.lstm_hidden=32",
    "total_frames=5120",
    "optim.lr=1e-3",
    "replay.capacity=8192",
    "replay.batch_size=32",
    "replay.learning_starts=256",
    "exploration.eps_decay_frames=3000",
    "eval.interval_frames=5120",
    f"eval.episodes={EVAL_EPISODES}",
    "eval.num_envs=20",
    "checkpoint.interval_frames=5120",
    "checkpoint.save_replay=false",
]


def run_memory_diagnostic(method: str, root: Path, *, seed: int = SEED) -> dict[str, Any]:
    """Train ``method`` on the short memory diagnostic and return its summary."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="memory",
            overrides=[*OVERRIDES, f"method={method}", f"seed={seed}", f"logging.root={root}"],
        )
    return train(load_config(cfg))


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One RISE run and one BTR run on the same configuration, shared by the tests."""
    root = tmp_path_factory.mktemp("memory_diagnostic")
    return {method: run_memory_diagnostic(method, root) for method in ("rise", "btr")}


def _final_success(summary: dict[str, Any]) -> float:
    assert summary["status"] == "finished"
    final = summary["scores"]["evaluations"][-1]
    assert final["n"] == EVAL_EPISODES, "every evaluation episode must end (L + 1 steps)"
    return summary["success"]["final"]


def test_rise_solves_the_memory_task(summaries):
    summary = summaries["rise"]
    assert summary["method"] == "rise" and summary["config"]["encoder"]["context_length"] == 10
    success = _final_success(summary)
    assert success >= 0.9, f"RISE should recall the cue through its context: success {success}"


def test_btr_stays_near_chance_on_the_same_config(summaries):
    rise, btr = summaries["rise"], summaries["btr"]
    assert btr["method"] == "btr" and btr["encoder"] is None
    # Same budget and learner: only the context stream differs.
    for key in ("total_frames", "optim", "replay", "loss", "eval"):
        assert btr["config"][key] == rise["config"][key], key
    assert btr["updates"] == rise["updates"] > 0
    success = _final_success(btr)
    assert success <= 0.7, f"BTR cannot see the cue at the query, chance is 0.5: success {success}"


@pytest.mark.slow
def test_rise_with_its_context_stream_disconnected_scores_chance(tmp_path, monkeypatch):
    """Negative control: the same RISE run with the context stream's output zeroed fails."""

    def disconnected(self: ContextLSTM, window, mask):
        return self.proj(self.recurrent_output(window, mask)) * 0.0

    monkeypatch.setattr(ContextLSTM, "forward", disconnected)
    success = _final_success(run_memory_diagnostic("rise", tmp_path))
    assert success <= 0.7, f"without its context RISE is BTR with a constant gate: {success}"
