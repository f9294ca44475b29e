"""Developer helper: re-import the library after editing it (Slicer's Reload re-executes only module files)."""

from __future__ import annotations

import importlib
import sys


def reload_library() -> list[str]:
    """Reload every imported ``PETDosePaintingLib`` sub-module, leaves first; returns their names."""
    names = sorted((n for n in sys.modules if n == "PETDosePaintingLib" or n.startswith("PETDosePaintingLib.")),
                   key=lambda n: -n.count("."))
    for name in names:
        importlib.reload(sys.modules[name])
    return names
