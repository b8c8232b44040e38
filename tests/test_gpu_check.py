"""scripts/gpu_check.py (``make gpu-check``) and the ``gpu`` marker, without a GPU.

The check's own code runs here: its benchmarks with tiny sizes on the CPU (``--dry-run``), and its
output-writing behaviour with a fake pytest and fake stages (seconds). The GPU tests themselves
run in this suite as their CPU stand-ins (tests/test_gpu.py's ``device`` fixture).
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import load_by_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    def register(name, module):  # its dataclasses look it up in sys.modules
        monkeypatch.setitem(sys.modules, name, module)

    return load_by_path("gpu_check", ROOT / "scripts" / "gpu_check.py", register)


def test_gpu_check_dry_run(gpu_check, tmp_path):
    """The benchmarks' code path on the CPU with tiny sizes (the suite runs the tests' stand-ins
    itself); every figure lands in --out, and the section in --report."""
    report = tmp_path / "benchmarks.md"
    stages = "learner_btr,learner_rise,sample,training_rise_overlap"
    argv = ["--dry-run", "--stages", stages, "--out", str(tmp_path), "--report", str(report)]
    assert gpu_check.main(argv) == 0
    text = report.read_text()
    assert "<!-- BEGIN gpu -->" in text and "CPU** (dry run" in text
    for needle in ("btr", "rise K=4", "overlapped", "h / 200M frames", "11.5"):
        assert needle in text, needle
    assert (tmp_path / "benchmarks_gpu.md").read_text() in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and list(summary["stages"]) == stages.split(",")
    assert all(r["status"] == "done" for r in summary["stages"].values()), summary
    training = summary["stages"]["training_rise_overlap"]["result"]
    assert training["method"] == "rise" and training["overlap"] and training["train_fps"] > 0
    assert summary["stages"]["learner_btr"]["result"]["s_per_update"] > 0
    assert summary["stages"]["sample"]["result"]["sample_ms"] > 0
    assert "learner_btr" in (tmp_path / "gpu_check.log").read_text()


FAKE_PYTEST = textwrap.dedent(
    """
    import sys
    print("tests/test_gpu.py::test_replay_gathers_to_device[cuda] PASSED")
    print("tests/test_gpu.py::test_resume_on_device[cuda] FAILED")
    print("=========================== short test summary info ============================")
    print("FAILED tests/test_gpu.py::test_resume_on_device[cuda] - TypeError: not subscriptable")
    print("==================== 1 failed, 1 passed, 14 deselected in 3.21s ====================")
    sys.exit(1)
    """
)


def test_a_failing_test_still_writes_every_output(gpu_check, tmp_path, monkeypatch):
    fake = tmp_path / "fake_pytest.py"
    fake.write_text(FAKE_PYTEST)
    monkeypatch.setattr(gpu_check, "PYTEST", [sys.executable, str(fake)])
    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--stages", "tests", "--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "benchmarks_gpu.md",
        "gpu_check.log",
        "pytest.log",
        "summary.json",
    ]
    tests = json.loads((out / "summary.json").read_text())["stages"]["tests"]["result"]
    assert tests["rc"] == 1 and not tests["timed_out"]
    assert tests["counts"] == {"failed": 1, "passed": 1, "deselected": 14}
    assert tests["failed"] == ["tests/test_gpu.py::test_resume_on_device[cuda]"]
    assert "not subscriptable" in (out / "pytest.log").read_text()
    md = (out / "benchmarks_gpu.md").read_text()
    assert (
        "exit code 1" in md and "**Failed**: `tests/test_gpu.py::test_resume_on_device[cuda]`" in md
    )


def test_out_defaults_to_the_out_variable(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "from_env"))
    assert gpu_check.output_dir(None) == tmp_path / "from_env"
    assert (tmp_path / "from_env").is_dir()
    assert gpu_check.output_dir(tmp_path / "given") == tmp_path / "given"


def _fake_stages(gpu_check, seen: dict):
    def learner(ctx):
        return {"config": "btr", "s_per_update": 0.02, "bf16": True}

    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    def sample(ctx):  # runs after the others: their figures are already on disk
        seen["summary"] = json.loads((ctx.out / "summary.json").read_text())
        seen["md"] = (ctx.out / "benchmarks_gpu.md").read_text()
        return {"batch": 256, "sample_ms": 1.0, "sample_to_device_ms": 2.0, "tree": "torch"}

    def tests(ctx):
        counts = {"passed": 3}
        return {"rc": 0, "marker": "gpu", "timed_out": False, "counts": counts, "failed": []}

    Stage = gpu_check.Stage
    return [
        Stage("learner_btr", "learner", 0.0, learner),
        Stage("learner_rise", "learner", 0.0, broken),
        Stage("sample", "sample", 0.0, sample),
        Stage("training_rise_overlap", "training", 1e6, learner),  # never fits
        Stage("tests", "tests", 1e6, tests, cut_at_budget=True),  # starts: MIN_CUT_S left
    ]


def test_stages_written_as_measured_within_the_budget(gpu_check, tmp_path, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(gpu_check, "STAGES", _fake_stages(gpu_check, seen))
    monkeypatch.setattr(gpu_check, "MIN_CUT_S", 0.0)
    out = tmp_path / "out"
    assert gpu_check.main(["--dry-run", "--budget-s", "120", "--out", str(out)]) == 1  # an error
    before = seen["summary"]["stages"]
    assert before["learner_btr"]["result"]["s_per_update"] == 0.02
    assert "CUDA error" in before["learner_rise"]["error"] and "| btr | 20.0 |" in seen["md"]
    assert before["training_rise_overlap"]["status"] == "pending"
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages["training_rise_overlap"]["status"] == "skipped"
    assert stages["training_rise_overlap"]["reason"].startswith("budget: needs ~1000000 s")
    assert stages["tests"]["status"] == "done"
    md = (out / "benchmarks_gpu.md").read_text()
    assert 'GPU tests (`pytest -m "gpu" tests/test_gpu.py`): exit code 0, 3 passed' in md
    assert "skipped for the budget: training_rise_overlap" in md
    assert "error: RuntimeError: CUDA error" in md and "sample(256)" in md


def test_a_stage_that_hangs_past_the_budget_ends_the_check(gpu_check, tmp_path, monkeypatch):
    released = threading.Event()
    exits: list = []

    def hard_exit(code):  # instead of os._exit: what is on disk then, and let the stage return
        exits.append((code, json.loads((tmp_path / "summary.json").read_text())))
        released.set()

    def hangs(ctx):
        assert released.wait(timeout=30), "the watchdog did not fire"
        return {"config": "btr", "s_per_update": 0.02, "bf16": True}

    monkeypatch.setattr(gpu_check, "STAGES", [gpu_check.Stage("learner_btr", "learner", 0, hangs)])
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.2)
    monkeypatch.setattr(gpu_check, "_hard_exit", hard_exit)
    gpu_check.main(["--dry-run", "--budget-s", "0.5", "--out", str(tmp_path)])
    [(code, summary)] = exits
    record = summary["stages"]["learner_btr"]
    assert code == 3 and record["status"] == "cut" and "past the budget" in record["reason"]
    assert not summary["finished"]


def test_budget_counts_from_the_start(gpu_check):
    budget = gpu_check.Budget(10.0, t0=0.0)  # started long ago
    assert budget.left() < 0 and not budget.fits(0.0)
    assert gpu_check.Budget(10.0).fits(5.0) and not gpu_check.Budget(10.0).fits(11.0)


def test_unknown_stage_is_named(gpu_check):
    with pytest.raises(SystemExit, match=r"unknown \['lerner'\]; known: learner_btr"):
        gpu_check.select_stages("lerner", skip_tests=False)
    names = [s.name for s in gpu_check.select_stages("learner,sample", skip_tests=False)]
    assert names == ["learner_btr", "learner_rise", "sample", "learner_recurrent"]
    assert "tests" not in [s.name for s in gpu_check.select_stages(None, skip_tests=True)]


def test_a_pytest_run_cut_short_is_counted_from_its_lines(gpu_check):
    log = "tests/test_gpu.py::a[cuda] PASSED  [ 12%]\ntests/test_gpu.py::b[cuda] FAILED  [ 25%]\n"
    parsed = gpu_check.parse_pytest_log(log)
    assert parsed == {
        "counts": {"passed": 1, "failed": 1},
        "failed": ["tests/test_gpu.py::b[cuda]"],
        "complete": False,
    }


def test_merge_copies_the_section(gpu_check, tmp_path):
    src = tmp_path / "benchmarks_gpu.md"
    src.write_text("<!-- BEGIN gpu -->\n## GPU\n\nfigures\n<!-- END gpu -->\n")
    dest = tmp_path / "benchmarks.md"
    dest.write_text("# Benchmarks\n\n<!-- BEGIN learner -->\nx\n<!-- END learner -->\n")
    assert gpu_check.main(["--merge", str(src), "--report", str(dest)]) == 0
    text = dest.read_text()
    assert "<!-- END learner -->" in text and text.endswith(src.read_text())
    src.write_text("nothing here")
    with pytest.raises(ValueError, match="no section 'gpu'"):
        gpu_check.main(["--merge", str(src), "--report", str(dest)])


def test_gpu_marker_is_read_from_marks_not_folder_names(monkeypatch):
    """A checkout in a folder named ``gpu`` (or ``slow``) ran none of its tests: the skip looked
    for the word in ``item.keywords``, which holds every parent node's name too."""
    import conftest

    class Item(SimpleNamespace):
        def get_closest_marker(self, name):
            return name if name in self.marks else None

        def add_marker(self, marker):
            self.added.append(marker)

    plain = Item(keywords={"gpu": 1, "slow": 1, "test_x": 1}, marks=(), added=[])
    gpu = Item(keywords={"test_y": 1}, marks=("gpu",), added=[])
    monkeypatch.setattr(conftest.torch.cuda, "is_available", lambda: False)
    config = SimpleNamespace(getoption=lambda name: "")
    conftest.pytest_collection_modifyitems(config, [plain, gpu])
    assert plain.added == []
    assert [m.kwargs["reason"].split(":")[0] for m in gpu.added] == ["gpu"]
