"""PNG plots of comparison results: volume over time per structure, and a heatmap of an overlap matrix.

matplotlib is used here, in the pipeline layer only (never in tier-1 modules). Figures are drawn with
the object-oriented API on the Agg canvas (``matplotlib.backends.backend_agg``), never through
``pyplot``, so no global backend is selected or changed (safe inside Slicer) and nothing opens a window.
Plots are deterministic: matplotlib's default style (``style.context("default")``, so a user's
matplotlibrc does not change them), fixed size and resolution, and no timestamp or software metadata in
the PNG. Files are written atomically (:func:`~PETDosePaintingLib.imaging.io.atomic_path`): rendering
happens in memory first (``render_*`` return PNG bytes), so a failed plot never leaves a partial file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..imaging.io import atomic_path

#: Figure size (inches) and resolution (dots per inch) of every plot.
FIGURE_SIZE_IN = (6.4, 4.8)
DPI = 100

#: Metrics whose heatmap colour scale is fixed to [0, 1] (overlaps); distances scale from 0 to the maximum.
UNIT_INTERVAL_METRICS = ("dice", "jaccard", "sensitivity", "ppv")

_LABELS = {"dice": "Dice", "jaccard": "Jaccard", "hd_mm": "Hausdorff distance (mm)",
           "hd95_mm": "HD95 (mm)", "msd_mm": "Mean surface distance (mm)", "centroid_shift_mm": "Centroid shift (mm)"}


def new_figure(size: tuple[float, float] = FIGURE_SIZE_IN):
    """A matplotlib Figure of ``size`` inches at :data:`DPI` on its own Agg canvas (no pyplot, no window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    """The figure as PNG bytes at :data:`DPI`, without software metadata (deterministic files)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def render_volume_over_time(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    *,
    time_label: str = "fraction",
    title: str = "Volume over time",
) -> bytes:
    """PNG bytes of structure volumes (mL) against time (fraction number or day), one line per structure.

    ``curves`` maps a structure name to its (time, volume in mL) points, in any order (sorted by time
    here). Volumes must be finite and >= 0, times finite.
    """
    from matplotlib import style

    if not curves:
        raise InputError("no volume curves to plot")
    checked = {}
    for name, points in curves.items():
        array = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
        if array.shape[0] == 0:
            raise InputError(f"structure {name!r} has no (time, volume) point")
        if not np.all(np.isfinite(array)) or np.any(array[:, 1] < 0):
            raise InputError(f"structure {name!r}: times and volumes must be finite and volumes >= 0 mL")
        checked[name] = array[np.argsort(array[:, 0], kind="stable")]
    with style.context("default"):
        figure = new_figure()
        axes = figure.add_subplot()
        for name, array in checked.items():
            axes.plot(array[:, 0], array[:, 1], marker="o", label=name)
        axes.set_xlabel(time_label)
        axes.set_ylabel("Volume (mL)")
        axes.set_ylim(bottom=0)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best")
        figure.tight_layout()
        return png_bytes(figure)


def render_matrix_heatmap(
    names: Sequence[str],
    matrix: np.ndarray,
    *,
    metric: str = "dice",
    title: str | None = None,
) -> bytes:
    """PNG bytes of an N x N matrix (e.g. Dice) as an annotated heatmap; NaN cells are grey and marked "n/a".

    Overlap metrics (:data:`UNIT_INTERVAL_METRICS`) use a fixed [0, 1] colour scale, so heatmaps of
    different patients compare; distances scale from 0 to the largest value.
    """
    from matplotlib import style

    values = np.asarray(matrix, dtype=np.float64)
    n = len(names)
    if n == 0 or values.shape != (n, n):
        raise InputError(f"the matrix must be {n} x {n} for {n} names, got shape {values.shape}")
    finite = values[np.isfinite(values)]
    if metric in UNIT_INTERVAL_METRICS:
        vmin, vmax = 0.0, 1.0
    else:
        vmin, vmax = 0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = (max(4.8, 1.2 + 0.9 * n), max(4.0, 1.0 + 0.8 * n))
    with style.context("default"):
        figure = new_figure(size)
        axes = figure.add_subplot()
        masked = np.ma.masked_invalid(values)
        from matplotlib import colormaps

        cmap = colormaps["viridis"].with_extremes(bad="0.8")
        image = axes.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax)
        axes.set_xticks(range(n), labels=list(names), rotation=45, ha="right")
        axes.set_yticks(range(n), labels=list(names))
        for i in range(n):  # n x n cell labels, not voxels
            for j in range(n):
                value = values[i, j]
                text = "n/a" if not np.isfinite(value) else (f"{value:.2f}" if vmax <= 1.0 else f"{value:.1f}")
                dark = not np.isfinite(value) or (value - vmin) / (vmax - vmin or 1.0) > 0.6
                axes.text(j, i, text, ha="center", va="center", color="black" if dark else "white", fontsize=9)
        figure.colorbar(image, ax=axes, label=_LABELS.get(metric, metric))
        axes.set_title(title or f"Pairwise {_LABELS.get(metric, metric)}")
        figure.tight_layout()
        return png_bytes(figure)


def write_png(data: bytes, path: str | Path) -> Path:
    """Write PNG bytes atomically; refuses data that is not a PNG."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError("the data to write is not a PNG image")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def plot_volume_over_time(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *,
                          time_label: str = "fraction", title: str = "Volume over time") -> Path:
    """Render :func:`render_volume_over_time` and write it to ``path`` (PNG, atomic)."""
    return write_png(render_volume_over_time(curves, time_label=time_label, title=title), path)


def plot_matrix_heatmap(names: Sequence[str], matrix: np.ndarray, path: str | Path, *, metric: str = "dice",
                        title: str | None = None) -> Path:
    """Render :func:`render_matrix_heatmap` and write it to ``path`` (PNG, atomic)."""
    return write_png(render_matrix_heatmap(names, matrix, metric=metric, title=title), path)


__all__ = ["plot_matrix_heatmap", "plot_volume_over_time", "render_matrix_heatmap", "render_volume_over_time",
           "write_png"]
