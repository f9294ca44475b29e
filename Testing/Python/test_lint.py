"""ruff is part of the test suite (same rules as CI's .ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    cmd = [ruff, "check", "."] if ruff else [sys.executable, "-m", "ruff", "check", "."]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        pytest.fail("ruff is not installed; install the test extra: pip install -e '.[test]'")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
