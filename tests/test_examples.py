"""The scripts in examples/ run end to end (tiny frame counts)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    # one thread: the suite shares two cores between workers, and this is a subprocess
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.mark.atari
def test_rise_dqn_example_trains():
    pytest.importorskip("ale_py")
    out = _run("rise_dqn.py", "--frames", "256", "--context", "8")
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"loss (\S+)", out.stdout)]
    frames = [int(x) for x in re.findall(r"frames\s+(\d+)", out.stdout)]
    assert losses, f"no loss printed:\n{out.stdout}\n{out.stderr[-2000:]}"
    assert all(math.isfinite(v) for v in losses)
    assert frames[-1] == 256  # ran to the requested frame count


def test_rise_dqn_example_stays_short():
    """It is meant to be read: keep it around 100 lines, and built from the public pieces."""
    text = (REPO / "examples" / "rise_dqn.py").read_text()
    assert len(text.splitlines()) <= 110
    assert "from torchrl_rise import" in text and "torchrl_rise." not in text.replace(
        "from torchrl_rise import", ""
    )
    readme = (REPO / "README.md").read_text()
    assert "examples/rise_dqn.py" in readme
