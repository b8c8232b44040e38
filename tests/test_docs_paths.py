"""The documentation names no directory of the machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|home)/")


def test_docs_and_readme_name_no_absolute_machine_path():
    files = [ROOT / "README.md"]
    files += [p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".csv", ".json")]
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, (
        f"absolute machine paths (make them relative to the repo or the grid's output dir): {found}"
    )
