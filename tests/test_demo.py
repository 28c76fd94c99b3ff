"""`make demo` keeps working: the demo runs to its end with the real tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent.parent / "demo" / "quickstart.py"


def test_demo_runs(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(QUICKSTART)], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "passes veritysetup verify" in r.stdout
    assert "does not match the signed hash tree" in r.stdout
    assert "next boot A" in r.stdout
    assert (tmp_path / "demo-out" / "update-1.1.0.bundle").is_file()
