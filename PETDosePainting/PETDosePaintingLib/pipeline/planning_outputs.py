"""Files of a treatment-planning comparison: doses, tables, QVH/DVH CSVs, plots and ``plan.json``.

Shared by ``petdp plan`` (:mod:`PETDosePaintingLib.cli.plan`) and the demo's planning stage
(:mod:`PETDosePaintingLib.pipeline.demo_planning`). The planning itself is
:func:`PETDosePaintingLib.dosepainting.planning.plan_dose_painting`. Plots follow the conventions of
:mod:`PETDosePaintingLib.pipeline.plots` (Agg canvas, default style, no PNG metadata); every file is written
atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .plots import new_figure, png_bytes, write_png

#: Files written in the output folder (keys of :func:`write_planning_outputs`' result).
OUTPUT_NAMES = ("dose_painted.nrrd", "dose_uniform.nrrd", "comparison.csv", "comparison.json", "qvh_painted.csv",
                "qvh_uniform.csv", "dvh_painted.csv", "dvh_uniform.csv", "qvh.png", "dvh.png", "plan.json")


def write_planning_outputs(result, out_dir: str | Path, *, inputs: Mapping[str, Any] | None = None,
                           prefix: str = "", plan_json: bool = True) -> dict[str, Path]:
    """Write the doses, tables, QVH/DVH CSVs, plots and ``plan.json`` of a
    :class:`~PETDosePaintingLib.dosepainting.planning.PlanningResult` into ``out_dir`` (names in
    :data:`OUTPUT_NAMES`, each preceded by ``prefix``); returns them by key. All files are written atomically."""
    from ..dosepainting.planning import COMPARISON_COLUMNS
    from ..imaging.io import write_image, write_json, write_text

    out = Path(out_dir)
    files: dict[str, Path] = {}
    for plan in result.plans():
        files[f"dose_{plan.label}"] = write_image(plan.dose, out / f"{prefix}dose_{plan.label}.nrrd")
        files[f"qvh_{plan.label}"] = write_text(plan.evaluation.quality.qvh_csv(),
                                                out / f"{prefix}qvh_{plan.label}.csv")
        files[f"dvh_{plan.label}"] = write_text(result.dvh_csv(plan), out / f"{prefix}dvh_{plan.label}.csv")
    files["comparison_csv"] = write_text(result.comparison_csv(), out / f"{prefix}comparison.csv")
    summary = result.summary()
    files["comparison_json"] = write_json({"columns": list(COMPARISON_COLUMNS), "rows": summary["comparison"]},
                                          out / f"{prefix}comparison.json")
    files["qvh_png"] = write_png(render_qvh_comparison(result), out / f"{prefix}qvh.png")
    files["dvh_png"] = write_png(render_dvh_comparison(result), out / f"{prefix}dvh.png")
    if plan_json:
        summary["inputs"] = dict(inputs or {})
        summary["files"] = {k: v.name for k, v in files.items()}
        files["plan_json"] = write_json(summary, out / f"{prefix}plan.json")
    return files


_STYLES = {"painted": "-", "uniform": "--"}


def render_qvh_comparison(result) -> bytes:
    """PNG bytes: the QVH (fraction of the evaluation volume with Q >= q) of each plan, with the 0.95 and 1.05
    marks (same conventions as :mod:`PETDosePaintingLib.pipeline.plots`: Agg canvas, default style, no metadata)."""
    from matplotlib import style

    with style.context("default"):
        figure = new_figure()
        axes = figure.add_subplot()
        for plan in result.plans():
            q = plan.evaluation.quality
            axes.plot(q.qvh_q, 100.0 * q.qvh_fraction, _STYLES[plan.label], color="black" if plan.label == "painted"
                      else "tab:blue", label=f"{plan.label} (QF {q.qf:.3f}, Q95 {100 * q.q95:.0f} %, "
                                            f"Q105 {100 * q.q105:.0f} %)")
        for mark in (0.95, 1.05):
            axes.axvline(mark, color="0.6", linewidth=0.8, linestyle=":")
        axes.set_xlim(0.5, 1.5)
        axes.set_ylim(0, 101)
        axes.set_xlabel("Q = planned / prescribed dose")
        axes.set_ylabel("Volume with Q >= q (%)")
        axes.set_title("QVH over the prescription volume (PTV_PET)")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        figure.tight_layout()
        return png_bytes(figure)


def render_dvh_comparison(result, *, max_structures: int = 10) -> bytes:
    """PNG bytes: cumulative DVHs of the target, the evaluation volume and the organs at risk (not the
    External), painted solid and uniform dashed, one colour per structure."""
    from matplotlib import colormaps, style

    names = [n for n in result.structures if n != "External"][:max_structures]
    colours = colormaps["tab10"]
    with style.context("default"):
        figure = new_figure()
        axes = figure.add_subplot()
        for index, name in enumerate(names):
            for plan in result.plans():
                dvh = plan.evaluation.dvhs[name]
                dose, volume = dvh.curve(0.2)
                fraction = 100.0 * volume / dvh.volume_cc if dvh.volume_cc > 0 else volume
                axes.plot(dose, fraction, _STYLES[plan.label], color=colours(index % 10), linewidth=1.2,
                          label=name if plan.label == "painted" else None)
        axes.set_xlabel("Dose (Gy)")
        axes.set_ylabel("Volume (%)")
        axes.set_ylim(0, 101)
        axes.set_xlim(left=0)
        kinds = " (solid painted, dashed uniform)" if result.uniform is not None else ""
        axes.set_title(f"Cumulative DVH{kinds}")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=7, ncol=2)
        figure.tight_layout()
        return png_bytes(figure)
