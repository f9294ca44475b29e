"""Output folders that are safe to (re)write: never clobber unrelated files."""

from __future__ import annotations

from pathlib import Path

from ..errors import OutputError
from ..imaging.io import write_json


def prepare_output_dir(path: str | Path, kind: str) -> Path:
    """Create (or reuse) an output folder for a ``petdp <kind>`` run.

    The folder may be new, empty, or a previous output of the same kind (it holds the marker file
    ``.petdp-<kind>``). Anything else is refused with :class:`OutputError`, so unrelated files are never
    overwritten. The marker is written before any output.
    """
    path = Path(path)
    marker = path / f".petdp-{kind}"
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a directory", path)
    if path.is_dir() and any(path.iterdir()) and not marker.is_file():
        raise OutputError(
            f"is not empty and is not a previous 'petdp {kind}' output (no {marker.name} marker); "
            "refusing to overwrite its content — choose a new or empty folder", path)
    path.mkdir(parents=True, exist_ok=True)
    write_json({"kind": kind, "note": f"written by petdp {kind}; this folder may be overwritten by it"}, marker)
    return path
