"""A run directory is self-contained and redundant, and a checkpoint can be scored read-only.

One tiny memory-recipe run (768 frames, checkpoints at 512 and 768, keep=2) is trained once per
module and copied into each test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
from test_recipes import _short, needs_memory

from torchrl_rise import evaluate as evaluate_module
from torchrl_rise.replay import snapshot as snapshot_module
from torchrl_rise.training import Trainer, train
from torchrl_rise.training.checkpoint import RunLock, list_checkpoints

pytestmark = needs_memory


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    run = tmp / "run"
    train(_short(tmp, run, "total_frames=768"))
    assert [c.name for c in list_checkpoints(run)] == ["frames_000000000768", "frames_000000000512"]
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "original"
    shutil.copytree(trained, copy)
    return copy


def _chunks(ckpt: Path) -> list[str]:
    manifest = json.loads((ckpt / "replay" / snapshot_module.MANIFEST).read_text())
    return [c["file"] for c in manifest["chunks"]]


def _read_chunks(monkeypatch) -> list[Path]:
    """Record the path of every chunk file a load reads."""
    seen: list[Path] = []
    real = snapshot_module.read_chunk

    def read_chunk(path, *args, **kwargs):
        seen.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(snapshot_module, "read_chunk", read_chunk)
    return seen


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_copied_run_dir_reads_only_its_own_chunks(run, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    newest = copy / "checkpoints" / "frames_000000000768"
    # An incomplete copy: a chunk of the newest checkpoint did not make it (the original has it).
    gone = _chunks(newest)[0]
    (copy / "checkpoints" / "replay_chunks" / gone).unlink()
    seen = _read_chunks(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="torchrl_rise"):
        trainer = Trainer(_short(tmp_path, copy, "total_frames=768", "resume=true"))
        trainer.run()
    assert seen and all(copy in p.parents for p in seen), seen  # never the original's files
    assert trainer.resumed_from.name == "frames_000000000512"  # the newest lacks a chunk here
    assert any("CHECKPOINT DAMAGED" in w and gone in w for w in _warnings(caplog))

    # The original gone, the copy (now complete again) resumes and trains on.
    shutil.rmtree(run)
    seen.clear()
    trainer = Trainer(_short(tmp_path, copy, "total_frames=1024", "resume=true"))
    summary = trainer.run()
    assert summary["status"] == "finished" and summary["frames"] == 1024
    assert seen and all(copy in p.parents for p in seen)


def test_one_damaged_chunk_costs_at_most_the_newest_checkpoint(run, tmp_path, caplog):
    checkpoints = list_checkpoints(run)
    refs = {c: set(_chunks(c)) for c in checkpoints}
    newest = checkpoints[0]
    # the newest checkpoint's chunk that the most retained checkpoints refer to
    victim = max(_chunks(newest), key=lambda f: sum(f in r for r in refs.values()))
    path = run / "checkpoints" / "replay_chunks" / victim
    data = path.read_bytes()
    path.write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    with caplog.at_level(logging.WARNING, logger="torchrl_rise"):
        trainer = Trainer(_short(tmp_path, run, "total_frames=1024", "resume=true"))
        summary = trainer.run()
    assert trainer.resumed_from == checkpoints[1]  # only the newest was lost
    assert summary["status"] == "finished" and summary["frames"] == 1024
    warned = [w for w in _warnings(caplog) if "CHECKPOINT DAMAGED" in w]
    assert warned and newest.name in warned[0] and victim in warned[0]
    assert not set.intersection(*refs.values())  # no chunk file is shared by every checkpoint


def _tree(path: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(path)) + "/": ("dir", 0) for p in path.rglob("*") if p.is_dir()}


def test_evaluate_scores_a_checkpoint_and_leaves_the_run_untouched(
    run, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "out" / "eval.json"
    with RunLock(run):  # a live run holds its lock: scoring its checkpoints needs none
        before = _tree(run)
        result = evaluate_module.main([str(run), "episodes=3", "eps=0.05", f"output={output}"])
        assert _tree(run) == before  # byte-identical, not even an mtime changed
    before = _tree(run)
    saved = json.loads(output.read_text())
    assert saved == result
    assert saved["checkpoint"] == str(run / "checkpoints" / "frames_000000000768")
    assert saved["frames"] == 768 and saved["method"] == "btr" and saved["env_id"] == "cue-L6"
    assert saved["n"] == 3 and len(saved["scores"]) == 3 and saved["eps"] == 0.05
    assert 0.0 <= saved["success_rate"] <= 1.0  # the memory suite reports success
    assert saved["mean"] == pytest.approx(sum(saved["scores"]) / 3)
    printed = capsys.readouterr().out
    assert f"mean return {saved['mean']}" in printed and "success rate" in printed

    # A checkpoint folder directly, the JSON in the working directory by default.
    monkeypatch.chdir(tmp_path)
    older = run / "checkpoints" / "frames_000000000512"
    result = evaluate_module.main([str(older), "episodes=2"])
    assert result["frames"] == 512 and result["n"] == 2
    assert (tmp_path / "eval-original-frames_000000000512.json").is_file()
    assert _tree(run) == before


def test_evaluate_explains_bad_input(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate_module.main([str(run), "episode=3"])
    assert "episodes" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_module.main([str(tmp_path / "nowhere")])
    (run / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        evaluate_module.main([str(run)])
