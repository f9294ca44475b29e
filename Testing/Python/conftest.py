"""pytest configuration for the headless tests (plain Python + slicer-core; no Slicer application)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIB_ROOT = REPO_ROOT / "PETDosePainting" / "PETDosePaintingLib"
TEST_DATA = REPO_ROOT / "Testing" / "Data"

#: Tests that need the Slicer application (module Logic classes import Qt); Slicer's ctest runs them.
collect_ignore = ["PETDosePaintingWorkflowTest.py"]

# VTK/MRML log noise (e.g. archive lines while writing .mrb) is not useful in test logs.
os.environ.setdefault("VTK_SILENCE_GET_VOID_POINTER_WARNINGS", "1")


@pytest.fixture
def core_scene():
    """A fresh slicer-core MRML scene per test."""
    from PETDosePaintingLib.mrml.scene import create_core_scene

    scene = create_core_scene()
    yield scene
    scene.Clear(1)
