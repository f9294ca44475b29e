"""``petdp report``: a self-contained HTML page (and optionally a PDF) of what a result folder holds.

The report reads a folder written by ``petdp demo``, by one ``petdp batch`` row (``rows/<id>/``) or by a
whole batch (the cohort: ``cohort_summary.json``), shows everything it finds and says what it did not find:

* the lesion: axial, coronal and sagittal PET slices through it with every method's GTV contour and the
  truth/reference when known;
* the method comparison table (``accuracy.csv``) with a volume/Dice chart, the GTV quantification
  (SUVmax, SUVpeak, SUVmean, MTV, TLG), the overlap matrix and Table-2 volume table (``compare/``);
* the dose-painting prescription map with its colour bar, the nested levels, the DVH and QVH curves;
* the hypoxia ratio map (or the FMISO PET) with the hypoxic sub-volume, and its metrics;
* the timepoint table and the volume-over-time plot (batch ``timepoints`` step, or the digital patient's
  truth in a demo folder), and any PNG plot already in the folder (e.g. ``petdp compare --plots``);
* for a cohort: the summary table (each row linked to its own report) and per-method volume and Dice plots.

The page has no external resource (figures are base64 PNG ``data:`` URIs, CSS inline, no script; a
Content-Security-Policy forbids anything else). Figures are drawn with matplotlib's object-oriented API on
the Agg canvas (never ``pyplot``), in the default style, at a fixed size, without timestamps in the PNGs.
Slices are shown in the patient's LPS axes after :func:`SimpleITK.DICOMOrient` (axial: anterior up,
patient right on the image left; coronal and sagittal: superior up), cropped around the lesion.

A part that cannot be drawn (e.g. an unreadable file) is reported in the page, never fatal to the page.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from .plots import new_figure, png_bytes

#: Half-width (mm) of the slice crops: at least this, at most the maximum, else the lesion's extent + margin.
CROP_MIN_HALF_MM, CROP_MAX_HALF_MM, CROP_MARGIN_MM = 35.0, 110.0, 25.0
#: Summary columns shown in the cohort table.
COHORT_TABLE_COLUMNS = ("id", "status", "target_volume_ml", "reference_volume_ml", "suv_max", "suv_peak", "suv_mean",
                        "mtv_ml", "tlg", "dose_mean_gy", "hv_ml", "hf", "seconds", "error")
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #2a6f97; padding-bottom: 0.2em;
margin-top: 1.6em; } h3 { margin-bottom: 0.3em; }
.meta { color: #555; font-size: 0.9em; } nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #eef3f7; } td.text, th.text { text-align: left; }
tr.failed td, tr.refused td { background: #fdecea; } tr.invalid td { background: #fff4e5; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; } .scroll { overflow-x: auto; }
td.text { max-width: 32em; overflow-wrap: anywhere; }
.missing { color: #8a5300; } .problem { color: #b00020; } .note { color: #555; font-size: 0.9em; }
"""


@dataclass
class ReportFigure:
    """One figure of the report: a PNG and how it is introduced."""

    key: str
    title: str
    caption: str
    png: bytes


@dataclass
class ReportResult:
    """What :func:`write_report` wrote and found."""

    html: Path
    pdf: Path | None
    kind: str  #: "demo", "batch row", "batch cohort" or "result folder"
    sections: list[str] = field(default_factory=list)  #: titles of the sections shown
    figures: list[str] = field(default_factory=list)  #: keys of the figures embedded
    missing: list[str] = field(default_factory=list)  #: what was looked for and not found
    problems: list[str] = field(default_factory=list)  #: parts that could not be drawn, with the reason


# ------------------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------------------

def write_report(result_dir: str | Path, *, out: str | Path | None = None, title: str | None = None,
                 location: str | None = None, pdf: bool | str | Path = False, progress: str = "off",
                 stream: TextIO | None = None) -> ReportResult:
    """Write the HTML report of ``result_dir`` (default ``result_dir/report.html``) and optionally a PDF
    (``pdf=True``: next to the HTML as ``report.pdf``; or a path) of the same figures.

    ``title`` heads the page (default from the folder's kind); ``location`` is how the page names the
    folder (default its path). ``progress``: a progress-bar mode of :mod:`.progress` over the sections.
    """
    from ..imaging.io import write_text
    from .progress import Progress

    folder = Path(result_dir)
    if not folder.is_dir():
        raise InputError("is not a folder (give a result folder of petdp demo or petdp batch)", folder)
    html_path = Path(out) if out is not None else folder / "report.html"
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise InputError("the report file name must end in .html", html_path)
    builder = _Builder(folder, title=title, location=location)
    plan = builder.plan()
    with Progress(total=len(plan), desc="report", unit="sections", mode=progress, stream=stream,
                  min_interval_s=0.0) as bar:
        for name, action in plan:
            bar.update(0, label=name)
            builder.run_section(name, action)
            bar.update(1)
    write_text(builder.html(), html_path)
    pdf_path = None
    if pdf:
        pdf_path = Path(pdf) if not isinstance(pdf, bool) else html_path.with_suffix(".pdf")
        _write_pdf(builder, pdf_path)
    return ReportResult(html=html_path, pdf=pdf_path, kind=builder.kind,
                        sections=[s.title for s in builder.sections],
                        figures=[f.key for s in builder.sections for f in s.figures],
                        missing=list(builder.missing), problems=list(builder.problems))


# ------------------------------------------------------------------------------------------------------------
# Reading the folder and building the sections
# ------------------------------------------------------------------------------------------------------------

@dataclass
class _Section:
    key: str
    title: str
    parts: list[str] = field(default_factory=list)  #: HTML fragments in order (figures inserted by index)
    figures: list[ReportFigure] = field(default_factory=list)

    def add_html(self, fragment: str) -> None:
        self.parts.append(fragment)

    def add_figure(self, figure: ReportFigure) -> None:
        self.figures.append(figure)
        self.parts.append(_figure_html(figure))


class _Builder:
    """Finds what the folder holds and renders the sections."""

    def __init__(self, folder: Path, *, title: str | None, location: str | None) -> None:
        self.folder = folder
        self.location = location or str(folder)
        self.sections: list[_Section] = []
        self.missing: list[str] = []
        self.problems: list[str] = []
        self.record: dict[str, Any] = {}
        if (folder / "cohort_summary.json").is_file():
            self.kind, self.record = "batch cohort", _read_json(folder / "cohort_summary.json")
        elif (folder / "row_summary.json").is_file():
            self.kind, self.record = "batch row", _read_json(folder / "row_summary.json")
        elif (folder / "summary.json").is_file():
            self.kind, self.record = "demo", _read_json(folder / "summary.json")
        else:
            self.kind = "result folder"
        self.title = title or {"demo": "PETDosePainting demo", "batch row": "PETDosePainting batch row",
                               "batch cohort": "PETDosePainting cohort"}.get(self.kind, "PETDosePainting results")
        self._pet: sitk.Image | None = None
        self._pet_loaded = False
        self._masks: dict[str, sitk.Image] | None = None

    # -- plan ------------------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, Callable[[], None]]]:
        if self.kind == "batch cohort":
            return [("overview", self.section_overview), ("cohort", self.section_cohort),
                    ("other plots", self.section_other_plots)]
        return [("overview", self.section_overview), ("lesion", self.section_lesion),
                ("methods", self.section_methods), ("quantification", self.section_quantification),
                ("comparison", self.section_comparison), ("prescription", self.section_prescription),
                ("plan evaluation", self.section_evaluation), ("hypoxia", self.section_hypoxia),
                ("timepoints", self.section_timepoints), ("other plots", self.section_other_plots)]

    def run_section(self, name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # one part failing never loses the rest of the page
            message = f"{name}: could not be drawn ({type(exc).__name__}: {exc})"
            self.problems.append(message)
            section = self.section(f"problem-{name.replace(' ', '-')}", name.capitalize())
            section.add_html(f'<p class="problem">{_e(message)}</p>')

    def section(self, key: str, title: str) -> _Section:
        for s in self.sections:
            if s.key == key:
                return s
        s = _Section(key, title)
        self.sections.append(s)
        return s

    def miss(self, what: str) -> None:
        self.missing.append(what)

    # -- files -----------------------------------------------------------------------------------------

    def path(self, *candidates: str | None) -> Path | None:
        for c in candidates:
            if c and (self.folder / c).exists():
                return self.folder / c
        return None

    def record_files(self) -> dict[str, str]:
        return dict(self.record.get("files") or {})

    def pet(self) -> sitk.Image | None:
        if not self._pet_loaded:
            self._pet_loaded = True
            from ..imaging.io import read_image

            path = self.path(self.record_files().get("pet"), "pet_suv.nrrd", "pet_fdg_suv_from_dicom.nrrd")
            if path is None:
                found = sorted(p for p in self.folder.glob("*pet*.nrrd"))
                path = found[0] if found else None
            self._pet = None if path is None else _oriented(sitk.Cast(read_image(path), sitk.sitkFloat32))
            self.pet_file = None if path is None else path.relative_to(self.folder)
        return self._pet

    def on_pet(self, image: sitk.Image, *, mask: bool) -> sitk.Image:
        from ..imaging.image import same_geometry
        from ..imaging.resample import resample_mask, resample_to_reference

        pet = self.pet()
        image = _oriented(image)
        if pet is None or same_geometry(image, pet):
            return image
        if mask:
            return resample_mask(image, pet)
        return resample_to_reference(image, pet, interpolation="linear", default_value=0.0)

    def read_on_pet(self, relative: str | Path, *, mask: bool) -> sitk.Image:
        from ..imaging.io import read_image, read_mask

        path = self.folder / relative
        image = read_mask(path, nonzero=True) if mask else sitk.Cast(read_image(path), sitk.sitkFloat32)
        return self.on_pet(image, mask=mask)

    def method_order(self) -> list[str]:
        rows = _read_csv(self.folder / "accuracy.csv") if (self.folder / "accuracy.csv").is_file() else []
        return [r["method"] for r in rows]

    def masks(self) -> dict[str, sitk.Image]:
        """Every GTV contour to draw: the reference/truth first, then each method's GTV."""
        if self._masks is None:
            masks: dict[str, sitk.Image] = {}
            truth = self.path("reference.nrrd", "patient/baseline/truth/gtv_pet.nrrd")
            if truth is not None:
                masks[self.truth_label()] = self.read_on_pet(truth.relative_to(self.folder), mask=True)
            order = {m: i for i, m in enumerate(self.method_order())}
            files = sorted(self.folder.glob("gtv/gtv_*.nrrd"),
                           key=lambda p: (order.get(p.name[4:-5], len(order)), p.name))
            for p in files:
                masks[p.name[4:-5]] = self.read_on_pet(p.relative_to(self.folder), mask=True)
            self._masks = masks
        return self._masks

    def truth_label(self) -> str:
        source = str((self.record.get("reference") or {}).get("source") or "")
        if self.kind == "demo" or "truth" in source:
            return "truth"
        return "reference"

    def centre_index(self) -> tuple[int, int, int] | None:
        """``(i, j, k)`` of the lesion centre on the (oriented) PET grid."""
        pet = self.pet()
        if pet is None:
            return None
        masks = self.masks()
        candidates = []
        target = self.path("target.nrrd")
        if target is not None:
            candidates.append(self.read_on_pet("target.nrrd", mask=True))
        candidates += [masks[k] for k in (self.truth_label(), "gradient") if k in masks] + list(masks.values())
        for mask in candidates:
            array = sitk.GetArrayViewFromImage(mask)
            if array.any():
                k, j, i = (round(float(np.mean(a))) for a in np.nonzero(array))
                return i, j, k
        seed = (self.record.get("data") or {}).get("seed_lps") or (self.record.get("data") or {}).get("click_lps_mm")
        if seed:
            try:
                index = pet.TransformPhysicalPointToIndex([float(c) for c in seed])
                if all(0 <= index[d] < pet.GetSize()[d] for d in range(3)):
                    return tuple(int(v) for v in index)  # type: ignore[return-value]
            except RuntimeError:
                pass
        values = sitk.GetArrayViewFromImage(pet)
        k, j, i = np.unravel_index(int(np.argmax(values)), values.shape)
        return int(i), int(j), int(k)

    def crop_half_mm(self, centre: tuple[int, int, int]) -> float:
        pet = self.pet()
        extent = 0.0
        spacing = np.asarray(pet.GetSpacing())
        for mask in self.masks().values():
            nz = np.nonzero(sitk.GetArrayViewFromImage(mask))
            if nz[0].size:
                ijk = np.stack(nz[::-1], axis=1)
                extent = max(extent, float(np.max(np.abs(ijk - np.asarray(centre)) * spacing)))
        return float(np.clip(extent + CROP_MARGIN_MM, CROP_MIN_HALF_MM, CROP_MAX_HALF_MM))

    # -- sections --------------------------------------------------------------------------------------

    def section_overview(self) -> None:
        s = self.section("overview", "Overview")
        rec = self.record
        items: list[tuple[str, Any]] = [("kind", self.kind), ("folder", self.location)]
        if self.kind == "demo":
            data = rec.get("data") or {}
            gtv = rec.get("gtv") or {}
            items += [("data", data.get("kind")), ("patient seed", data.get("seed")),
                      ("PET voxel (mm)", data.get("pet_voxel_mm")),
                      ("scanner FWHM (mm)", data.get("scanner_effective_fwhm_mm")),
                      ("timepoints", ", ".join(data.get("timepoints") or [])),
                      ("truth GTV (mL)", data.get("baseline_gtv_truth_ml")),
                      ("GTV method", gtv.get("method")), ("GTV volume (mL)", gtv.get("volume_ml")),
                      ("Dice vs truth", gtv.get("dice_vs_truth_mask")), ("runtime (s)", rec.get("runtime_s"))]
        elif self.kind == "batch row":
            data = rec.get("data") or {}
            spec = rec.get("spec") or {}
            items += [("row", f"{rec.get('id')} (manifest line {rec.get('line')})"), ("status", rec.get("status")),
                      ("error", rec.get("error")), ("data", data.get("kind")),
                      ("PET", spec.get("pet") or (f"digital patient {spec.get('phantom_seed')}"
                                                  if spec.get("phantom_seed") is not None else None)),
                      ("steps", " ".join(rec.get("steps") or [])), ("methods", " ".join(spec.get("methods") or [])),
                      ("target", (rec.get("target") or {}).get("source")),
                      ("reference", (rec.get("reference") or {}).get("source")),
                      ("click (LPS mm)", data.get("seed_lps")), ("scanner FWHM (mm)", data.get("fwhm_mm")),
                      ("run time (s)", rec.get("seconds"))]
            items += [(f"meta: {k[5:]}", v) for k, v in (rec.get("meta") or {}).items()]
        elif self.kind == "batch cohort":
            counts = rec.get("counts") or {}
            items += [("manifest", rec.get("manifest")), ("rows", counts.get("rows")), ("ok", counts.get("ok")),
                      ("reused from a previous run", counts.get("reused")), ("failed", counts.get("failed")),
                      ("invalid", counts.get("invalid")), ("run", (rec.get("run") or {}).get("workers"))]
        else:
            self.miss("a result summary (summary.json of petdp demo, row_summary.json or cohort_summary.json of "
                      "petdp batch)")
        items.append(("petdp version", rec.get("petdp_version") or __version__))
        s.add_html(_kv_table([(k, v) for k, v in items if v not in (None, "", [])]))
        notes = rec.get("notes") or []
        if notes:
            s.add_html("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul>")

    def section_lesion(self) -> None:
        pet = self.pet()
        if pet is None:
            self.miss("PET image (pet_suv.nrrd, pet_fdg_suv_from_dicom.nrrd): no lesion slices")
            return
        masks = self.masks()
        if not any(k != self.truth_label() for k in masks):
            self.miss("GTV masks (gtv/gtv_<method>.nrrd)")
        if self.truth_label() not in masks:
            self.miss("truth or reference GTV (reference.nrrd, patient/baseline/truth/gtv_pet.nrrd)")
        centre = self.centre_index()
        half = self.crop_half_mm(centre)
        png = render_slices(pet, centre, half_mm=half, masks=masks, truth=self.truth_label(),
                            title="PET (SUV) through the lesion", value_label="SUV")
        s = self.section("lesion", "Lesion and GTV contours")
        s.add_figure(ReportFigure("lesion_slices", "Lesion slices",
                                  f"Axial, coronal and sagittal PET slices through voxel {centre} (i, j, k) of "
                                  f"{self.pet_file}, cropped to ±{half:.0f} mm, with every GTV contour"
                                  + (f" and the {self.truth_label()} (dashed)" if self.truth_label() in masks else "")
                                  + ".", png))

    def section_methods(self) -> None:
        path = self.folder / "accuracy.csv"
        if not path.is_file():
            self.miss("method comparison table (accuracy.csv)")
            return
        rows = _read_csv(path)
        s = self.section("methods", "Segmentation methods")
        reference = any(r.get("dice") for r in rows)
        columns = ["method", "status", "volume_ml", "truth_volume_ml", "volume_error_pct", "dice", "sensitivity",
                   "ppv", "hd95_mm", "msd_mm", "threshold", "seconds", "note"]
        if not reference:
            columns = [c for c in columns if c not in ("truth_volume_ml", "volume_error_pct", "dice", "sensitivity",
                                                       "ppv", "hd95_mm", "msd_mm")]
        labels = {"truth_volume_ml": f"{self.truth_label()}_volume_ml"}
        s.add_html(_table(columns, rows, labels=labels, row_class=lambda r: r.get("status", "")))
        ok = [r for r in rows if r.get("status") == "ok" and _float(r.get("volume_ml")) is not None]
        if ok:
            s.add_figure(ReportFigure("method_volumes", "GTV volume per method",
                                      "GTV volume of every method that answered"
                                      + (f"; the {self.truth_label()} volume as a dashed line and the Dice "
                                         "coefficient against it on the right." if reference else "."),
                                      render_method_bars(ok, truth_label=self.truth_label())))

    def section_quantification(self) -> None:
        quant = self.record.get("quantification") or (self.record.get("gtv") or {}).get("quantification")
        if not quant:
            self.miss("GTV quantification (SUVmax, SUVpeak, SUVmean, MTV, TLG)")
            return
        s = self.section("quantification", "GTV quantification")
        keys = ("units", "suv_max", "suv_peak", "suv_mean", "suv_sd", "mtv_ml", "tlg", "n_voxels", "suv_max_lps",
                "suv_peak_lps", "suv_peak_diameter_mm", "background", "background_definition")
        s.add_html(_kv_table([(k, quant.get(k)) for k in keys if quant.get(k) is not None]))

    def section_comparison(self) -> None:
        from .plots import render_matrix_heatmap

        matrix_path, table_path = self.folder / "compare/matrix.csv", self.folder / "compare/table2.csv"
        if not matrix_path.is_file() and not table_path.is_file():
            self.miss("overlap matrix and volume table (compare/matrix.csv, compare/table2.csv: batch step compare)")
            return
        s = self.section("comparison", "Method agreement")
        if matrix_path.is_file():
            names, matrix = _matrix_from_csv(matrix_path, "dice")
            s.add_figure(ReportFigure("dice_matrix", "Pairwise Dice", "Dice coefficient of every pair of GTVs.",
                                      render_matrix_heatmap(names, matrix, metric="dice")))
        if table_path.is_file():
            rows = _read_csv(table_path)
            columns = [c for c in ("structure", "kind", "volume_ml", "reference_volume_ml", "volume_error_pct", "dice",
                                   "jaccard", "sensitivity", "ppv", "uncovered_reference_ml") if rows and c in rows[0]]
            s.add_html("<h3>Volume table against the reference</h3>" + _table(columns, rows))

    def dose_maps(self) -> list[tuple[str, Path]]:
        """Prescription maps in the folder: a batch row's ``prescription/*.nrrd``, the demo's RT Dose files."""
        maps = []
        main = "boost" if (self.record.get("prescription") or {}).get("mode") == "boost" else "dpbn"
        for label, rel in ((main, self.record_files().get("dose") or "prescription/dose.nrrd"),
                           ("levels", "prescription/levels.nrrd")):
            if (self.folder / rel).is_file():
                maps.append((label, self.folder / rel))
        for key, rel in sorted(self.record_files().items()):
            if key.startswith("rtdose_") and (self.folder / rel).is_file():
                maps.append((key[len("rtdose_"):], self.folder / rel))
        return maps

    def section_prescription(self) -> None:
        maps = self.dose_maps()
        if not maps:
            self.miss("dose-painting prescription (prescription/dose.nrrd: batch step prescribe; RT Dose files of "
                      "the demo)")
            return
        pet = self.pet()
        contours: dict[str, sitk.Image] = {}
        for label, rel in (("target", "target.nrrd"), ("PTV_PET", "prescription/evaluation_mask.nrrd"),
                           ("boost", "prescription/boost_mask.nrrd")):
            if (self.folder / rel).is_file():
                contours[label] = self.read_on_pet(rel, mask=True)
        gtv_label, gtv = self.target_mask()
        if "target" not in contours and gtv is not None:
            contours["target"] = gtv
        s = self.section("prescription", "Dose-painting prescription")
        presc = self.record.get("prescription") or {}
        keys = ("mode", "mapping", "dose_low_gy", "dose_high_gy", "margin_mm", "i_low", "i_high", "target_volume_ml",
                "evaluation_volume_ml", "dose_min_gy", "dose_mean_gy", "dose_max_gy", "target_mean_dose_gy",
                "boost_volume_ml")
        if presc:
            s.add_html(_kv_table([(k, presc.get(k)) for k in keys if presc.get(k) is not None]))
        demo_stats = {k: v for k, v in (self.record.get("dose_painting") or {}).items()
                      if isinstance(v, dict) and "dose_mean_gy" in v}
        if demo_stats:
            rows = [{"map": k, **v} for k, v in demo_stats.items()]
            s.add_html(_table(["map", "mode", "dose_low_gy", "dose_high_gy", "dose_min_gy", "dose_mean_gy",
                               "dose_max_gy", "target_volume_ml", "evaluation_volume_ml", "grid"], rows))
        dvh_curves: dict[str, list[tuple[float, float]]] = {}
        for label, path in maps:
            dose = self.read_on_pet(path.relative_to(self.folder), mask=False)
            centre = self.centre_index() if pet is not None else _array_centre(dose)
            half = self.crop_half_mm(centre) if pet is not None else CROP_MIN_HALF_MM
            s.add_figure(ReportFigure(
                f"prescription_{label}", f"Prescription map {label}",
                f"Prescribed dose (Gy) of {path.relative_to(self.folder)} over the PET"
                + (" (resampled onto the PET grid for display)" if path.suffix == ".dcm" else "")
                + ", with the target" + (" and the evaluation volume (target plus margin)." if "PTV_PET" in contours
                                         else "."),
                render_slices(pet if pet is not None else dose, centre, half_mm=half, overlay=dose,
                              overlay_label="Prescribed dose (Gy)", overlay_cmap="turbo", masks=contours,
                              title=f"Prescription {label}", colours=_DOSE_COLOURS, value_label="SUV",
                              positive_only=True)))
            if path.suffix == ".dcm" and gtv is not None:
                dvh_curves[label] = _dvh_points(path, gtv)
        if dvh_curves:
            s.add_figure(ReportFigure("prescription_dvh", f"DVH in the GTV ({gtv_label})",
                                      "Cumulative DVH of every prescription map in the GTV (mask put on the dose "
                                      "grid by nearest neighbour).",
                                      render_curves(dvh_curves, xlabel="Dose (Gy)", ylabel="Volume (%)",
                                                    title=f"Prescriptions in the GTV ({gtv_label})")))
        self._curves(s, "prescription/dvh.csv", "prescription_dvh", "DVH of the prescription",
                     "Cumulative dose-volume histogram of the prescribed dose per structure.", dvh=True)
        self._curves(s, "prescription/qvh.csv", "prescription_qvh", "QVH of the levels",
                     "Q-volume histogram of the nested levels against the continuous prescription "
                     "(Q = level dose / prescribed dose).", dvh=False,
                     q_label="Q (level dose / continuous prescription)")

    def target_mask(self) -> tuple[str, sitk.Image | None]:
        """The GTV the prescriptions were made for: ``target.nrrd``, else the headline method's GTV, else the truth."""
        if (self.folder / "target.nrrd").is_file():
            return "target", self.read_on_pet("target.nrrd", mask=True)
        masks = self.masks()
        headline = (self.record.get("gtv") or {}).get("method") or "gradient"
        for key in (headline, self.truth_label()):
            if key in masks:
                return key, masks[key]
        return "", None

    def section_evaluation(self) -> None:
        if not (self.folder / "evaluation").is_dir():
            if (self.folder / "prescription").is_dir():
                self.miss("plan evaluation (evaluation/: batch step evaluate with a planned dose)")
            return
        s = self.section("evaluation", "Planned dose against the prescription")
        quality = (self.record.get("evaluation") or {}).get("quality") or {}
        if quality:
            s.add_html(_kv_table([(k, quality.get(k)) for k in ("qf", "q95", "q105", "q95_105", "q_mean", "q_min",
                                                                 "q_max", "volume_ml") if quality.get(k) is not None]))
        self._curves(s, "evaluation/qvh.csv", "plan_qvh", "QVH", "Q-volume histogram of the planned dose "
                     "(Q = planned / prescribed dose).", dvh=False)
        self._curves(s, "evaluation/dvh.csv", "plan_dvh", "DVH of the planned dose",
                     "Cumulative dose-volume histogram of the planned dose.", dvh=True)

    def _curves(self, s: _Section, relative: str, key: str, title: str, caption: str, *, dvh: bool,
                q_label: str = "Q (planned / prescribed)") -> None:
        path = self.folder / relative
        if not path.is_file():
            return
        rows = _read_csv(path)
        if dvh:
            curves: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                d, v = _float(r.get("dose_gy")), _float(r.get("volume_fraction"))
                if d is not None and v is not None:
                    curves.setdefault(r.get("structure", "?"), []).append((d, 100.0 * v))
            png = render_curves(curves, xlabel="Dose (Gy)", ylabel="Volume (%)", title=title)
        else:
            points = [(_float(r.get("q")), _float(r.get("volume_fraction"))) for r in rows]
            curve = [(q, 100.0 * v) for q, v in points if q is not None and v is not None]
            png = render_curves({"QVH": curve}, xlabel=q_label, ylabel="Volume with Q ≥ q (%)",
                                title=title, vlines=(0.95, 1.05))
        s.add_figure(ReportFigure(key, title, caption, png))

    def section_hypoxia(self) -> None:
        pet = self.pet()
        ratio_path = self.path(self.record_files().get("ratio"), "hypoxia/ratio.nrrd")
        fmiso_path = self.path(self.record_files().get("fmiso_pet"), "hypoxia/fmiso_suv.nrrd", "fmiso_suv.nrrd",
                               "patient/baseline/pet_fmiso_suv.nrrd")
        if ratio_path is None and fmiso_path is None:
            self.miss("hypoxia map (hypoxia/ratio.nrrd: batch step hypoxia; or an FMISO PET)")
            return
        s = self.section("hypoxia", "Hypoxia")
        metrics = self.record.get("hypoxia") or (self.record.get("dose_painting") or {}).get("hypoxia") or {}
        if metrics:
            ref = metrics.get("reference") or {}
            items = [("reference", f"{ref.get('kind')} ({ref.get('source')})"), ("reference mean", ref.get("mean"))] \
                if ref else [("reference mean", metrics.get("reference_mean_suv"))]
            s.add_html(_kv_table([(k, v) for k, v in items if v is not None]
                                 + [(k, metrics.get(k)) for k in ("tracer", "threshold", "comparison",
                                                                  "threshold_source", "hv_ml", "hf", "tmr_max",
                                                                  "tmr_peak", "tmr_mean", "target_volume_ml",
                                                                  "truth_hypoxic_ml", "dice_vs_truth")
                                    if metrics.get(k) is not None]))
        contours: dict[str, sitk.Image] = {}
        for label, rel in (("target", "target.nrrd"), ("hypoxic", "hypoxia/hypoxic_mask.nrrd"),
                           ("hypoxic truth", "patient/baseline/truth/hypoxic_pet.nrrd")):
            if (self.folder / rel).is_file():
                contours[label] = self.read_on_pet(rel, mask=True)
        caption_target = ""
        if "target" not in contours:
            label, gtv = self.target_mask()
            if gtv is not None:
                contours["target"] = gtv
                caption_target = f" Target: the {label} GTV."
        if ratio_path is not None:
            image, label, caption = (self.read_on_pet(ratio_path.relative_to(self.folder), mask=False),
                                     "Tumour-to-reference ratio", "Hypoxia PET divided by the mean uptake of the "
                                     "reference region, with the target and its hypoxic sub-volume.")
        else:
            image, label, caption = (self.read_on_pet(fmiso_path.relative_to(self.folder), mask=False), "FMISO SUV",
                                     "FMISO PET (no ratio map in this folder), with the GTV and the hypoxic truth "
                                     "when known.")
            if not metrics:
                self.miss("hypoxia ratio map and metrics (batch step hypoxia)")
        caption += caption_target
        base = pet if pet is not None else image
        centre = self.centre_index() if pet is not None else _array_centre(image)
        half = self.crop_half_mm(centre) if pet is not None else CROP_MIN_HALF_MM
        s.add_figure(ReportFigure("hypoxia_map", "Hypoxia map", caption,
                                  render_slices(base, centre, half_mm=half, overlay=image, overlay_label=label,
                                                overlay_cmap="magma", masks=contours, title=label, value_label="SUV",
                                                colours=_HYPOXIA_COLOURS,
                                                overlay_alpha=1.0)))

    def section_timepoints(self) -> None:
        from .plots import render_volume_over_time

        path = self.folder / "timepoints/timepoints.csv"
        rows: list[dict[str, Any]] = []
        if path.is_file():
            rows = _read_csv(path)
            caption = "GTV of the target method at every timepoint, from each timepoint's own click."
        else:
            params = self.path("patient/parameters.json")
            if params is not None:
                tps = _read_json(params).get("timepoints") or []
                rows = [{"timepoint": t.get("name"), "fraction": t.get("fraction"),
                         "truth_volume_ml": t.get("gtv_volume_ml"), "hypoxic_volume_ml": t.get("hypoxic_volume_ml")}
                        for t in tps]
                caption = "Truth of the digital patient at every timepoint (GTV and hypoxic volumes)."
        if len(rows) < 2:
            self.miss("timepoints (timepoints/timepoints.csv: batch step timepoints; patient/parameters.json)")
            return
        s = self.section("timepoints", "Timepoints")
        columns = [c for c in ("timepoint", "fraction", "method", "status", "volume_ml", "truth_volume_ml",
                               "volume_error_pct", "dice", "hypoxic_volume_ml", "note") if c in rows[0]]
        s.add_html(_table(columns, rows))
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            t = _float(r.get("fraction"))
            for column, name in (("volume_ml", str(r.get("method") or "GTV")), ("truth_volume_ml", "truth GTV"),
                                 ("hypoxic_volume_ml", "truth hypoxic volume")):
                v = _float(r.get(column))
                if t is not None and v is not None:
                    curves.setdefault(name, []).append((t, v))
        if curves:
            s.add_figure(ReportFigure("volume_over_time", "Volume over time", caption,
                                      render_volume_over_time(curves, time_label="fraction")))

    def section_other_plots(self) -> None:
        pngs = sorted({*self.folder.glob("*.png"), *self.folder.glob("plots/*.png"),
                       *self.folder.glob("*/plots/*.png")})
        if not pngs:
            return
        s = self.section("plots", "Other plots in the folder")
        for p in pngs:
            data = p.read_bytes()
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                s.add_figure(ReportFigure(f"file:{p.relative_to(self.folder)}", p.name,
                                          f"{p.relative_to(self.folder)}", data))

    def section_cohort(self) -> None:
        rec = self.record
        flat = rec.get("summary") or []
        s = self.section("cohort", "Rows")
        rows = []
        for r in flat:
            row = dict(r)
            link = self.folder / "rows" / str(r.get("id")) / "report.html"
            row["_link"] = f"rows/{r.get('id')}/report.html" if link.is_file() else None
            rows.append(row)
        s.add_html(_table(list(COHORT_TABLE_COLUMNS), rows, row_class=lambda r: r.get("status", ""),
                          link_column="id"))
        methods = [c[len("gtv_ml_"):] for c in (rec.get("columns") or []) if c.startswith("gtv_ml_")]
        if methods and any(r.get(f"gtv_ml_{m}") is not None for r in flat for m in methods):
            s.add_figure(ReportFigure("cohort_volumes", "GTV volume per method",
                                      "Each row's GTV volume per method and the reference volume (boxes: quartiles; "
                                      "points: rows).",
                                      render_cohort(flat, methods, prefix="gtv_ml_", ylabel="GTV volume (mL)",
                                                    reference="reference_volume_ml")))
        if any(r.get(f"dice_{m}") is not None for r in flat for m in methods):
            s.add_figure(ReportFigure("cohort_dice", "Dice per method",
                                      "Dice coefficient of each method against each row's reference.",
                                      render_cohort(flat, methods, prefix="dice_", ylabel="Dice", unit_interval=True)))
        failed = [r for r in flat if r.get("status") != "ok"]
        if failed:
            s.add_html("<h3>Rows that failed</h3><ul>" + "".join(
                f'<li class="problem">{_e(r.get("id"))} (line {_e(r.get("line"))}): {_e(r.get("error"))}</li>'
                for r in failed) + "</ul>")

    # -- output ----------------------------------------------------------------------------------------

    def html(self) -> str:
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        nav = " ".join(f'<a href="#{_e(s.key)}">{_e(s.title)}</a>' for s in self.sections)
        if self.missing:
            nav += ' <a href="#missing">Not in this folder</a>'
        body = []
        for s in self.sections:
            body.append(f'<section id="{_e(s.key)}"><h2>{_e(s.title)}</h2>' + "".join(s.parts) + "</section>")
        if self.missing:
            body.append('<section id="missing"><h2>Not in this folder</h2><ul>' + "".join(
                f'<li class="missing">{_e(m)}</li>' for m in self.missing) + "</ul></section>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{_e(self.title)}</h1><p class=\"meta\">{_e(self.kind)} &middot; {_e(self.location)} "
            f"&middot; report written {_e(created)} by petdp {_e(__version__)}</p>"
            "<p class=\"meta\">Research software, not a medical device: every contour and prescription must be "
            "reviewed by a qualified clinician.</p>"
            f"<nav>{nav}</nav></header>\n"
            + "\n".join(body) + "\n</body>\n</html>\n"
        )


# ------------------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------------------

def _oriented(image: sitk.Image) -> sitk.Image:
    """The image with LPS-aligned axes (axis permutations/flips only), metadata kept."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.allclose(direction, np.eye(3), atol=1e-6):
        return image
    out = sitk.DICOMOrient(image, "LPS")
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def _array_centre(image: sitk.Image) -> tuple[int, int, int]:
    return tuple(int(s // 2) for s in image.GetSize())  # type: ignore[return-value]


_DOSE_COLOURS = {"target": "black", "PTV_PET": "white", "boost": "magenta"}
_HYPOXIA_COLOURS = {"target": "#00e5ff", "hypoxic": "#39ff14", "hypoxic truth": "white"}
_METHOD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                   "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
                   "#dbdb8d", "#393b79", "#637939")


def render_slices(
    base: sitk.Image,
    centre: tuple[int, int, int],
    *,
    half_mm: float = CROP_MIN_HALF_MM,
    masks: dict[str, sitk.Image] | None = None,
    truth: str | None = None,
    colours: dict[str, str] | None = None,
    overlay: sitk.Image | None = None,
    overlay_label: str = "",
    overlay_cmap: str = "turbo",
    overlay_alpha: float = 0.85,
    positive_only: bool = False,
    title: str = "",
    value_label: str = "",
) -> bytes:
    """PNG of axial, coronal and sagittal slices of ``base`` through voxel ``centre`` (i, j, k), cropped to
    ``±half_mm``, with the contours of ``masks`` (``truth`` dashed) and an optional colour ``overlay`` (with a
    colour bar; ``positive_only`` hides its values <= 0). ``colours`` sets a contour's colour by label. All
    images share ``base``'s LPS-aligned grid."""
    from matplotlib import colormaps, style
    from matplotlib.lines import Line2D

    masks = masks or {}
    values = sitk.GetArrayViewFromImage(base).astype(np.float64)
    over = None if overlay is None else sitk.GetArrayViewFromImage(overlay).astype(np.float64)
    spacing = np.asarray(base.GetSpacing())
    origin = np.asarray(base.GetOrigin())
    size = np.asarray(base.GetSize())
    ci = np.clip(np.asarray(centre), 0, size - 1)
    half_vox = np.ceil(half_mm / spacing).astype(int)
    lo = np.maximum(ci - half_vox, 0)
    hi = np.minimum(ci + half_vox + 1, size)
    coords = [origin[d] + spacing[d] * np.arange(lo[d], hi[d]) for d in range(3)]  # x, y, z of voxel centres
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    crop = values[box]
    vmax = float(np.percentile(crop, 99.9)) if crop.size else 1.0
    vmax = vmax if vmax > 0 else float(crop.max() or 1.0)
    views = (("Axial", lambda a: a[ci[2] - lo[2], :, :], 0, 1, True),
             ("Coronal", lambda a: a[:, ci[1] - lo[1], :], 0, 2, False),
             ("Sagittal", lambda a: a[:, :, ci[0] - lo[0]], 1, 2, False))
    axis_names = ("x (mm, patient left →)", "y (mm, posterior →)", "z (mm, superior ↑)")
    o_lo = o_hi = None
    if over is not None:
        ocrop = over[box]
        shown = ocrop[ocrop > 0] if positive_only else ocrop
        o_lo = float(shown.min()) if shown.size else 0.0
        o_hi = float(np.percentile(shown, 99.9)) if shown.size else 1.0
        if o_hi <= o_lo:
            o_hi = o_lo + 1.0
    with style.context("default"):
        figure = new_figure((13.0, 5.0))
        # A fixed layout (tight_layout would cost ~40 % of the report's time): room for the axis labels, the
        # legend rows under the panels and the colour bar.
        legend_rows = -(-len(masks) // 9)
        grid = figure.add_gridspec(1, 4 if over is not None else 3,
                                   width_ratios=[1, 1, 1, 0.05] if over is not None else [1, 1, 1],
                                   left=0.05, right=0.94 if over is not None else 0.985,
                                   bottom=0.12 + 0.045 * legend_rows, top=0.88, wspace=0.32)
        image_handle = None
        drawn: dict[str, str] = {}
        for n, (name, take, hx, vy, flip) in enumerate(views):
            ax = figure.add_subplot(grid[0, n])
            xs, ys = coords[hx], coords[vy]
            extent = (xs[0] - spacing[hx] / 2, xs[-1] + spacing[hx] / 2, ys[0] - spacing[vy] / 2,
                      ys[-1] + spacing[vy] / 2)
            ax.imshow(take(crop), cmap="gray_r", vmin=0.0, vmax=vmax, extent=extent, origin="lower",
                      interpolation="nearest", alpha=0.55 if over is not None else 1.0)
            if over is not None:
                data = take(over[box])
                shown = np.ma.masked_less_equal(data, 0.0) if positive_only else data
                image_handle = ax.imshow(shown, cmap=colormaps[overlay_cmap], vmin=o_lo, vmax=o_hi, extent=extent,
                                         origin="lower", interpolation="nearest", alpha=overlay_alpha)
            for m, (label, mask) in enumerate(masks.items()):
                data = take(sitk.GetArrayViewFromImage(mask)[box])
                if not data.any() or data.all():
                    continue
                colour = (colours or {}).get(label) or ("black" if label == truth else
                                                        _METHOD_COLOURS[m % len(_METHOD_COLOURS)])
                if label == truth:
                    ax.contour(xs, ys, data.astype(float), levels=[0.5], colors="white", linewidths=3.5)
                    ax.contour(xs, ys, data.astype(float), levels=[0.5], colors=colour, linewidths=2.0,
                               linestyles="dashed")
                else:
                    ax.contour(xs, ys, data.astype(float), levels=[0.5], colors=colour, linewidths=1.3)
                drawn[label] = colour
            if flip:
                ax.set_ylim(extent[3], extent[2])  # axial: anterior at the top
            ax.set_title(f"{name}", fontsize=11)
            ax.set_xlabel(axis_names[hx], fontsize=8)
            ax.set_ylabel(axis_names[vy], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_aspect("equal")
        if image_handle is not None:
            bar = figure.colorbar(image_handle, cax=figure.add_subplot(grid[0, 3]))
            bar.set_label(overlay_label)
        if drawn:
            handles = [Line2D([0], [0], color=c, lw=2, linestyle="--" if k == truth else "-") for k, c in drawn.items()]
            figure.legend(handles, list(drawn), loc="lower center", ncol=min(len(drawn), 9), fontsize=8,
                          frameon=True, facecolor="#e4e4e4", edgecolor="none")  # grey: white contours show
        grey_visible = value_label and (over is None or overlay_alpha < 1.0)
        figure.suptitle(f"{title} ({value_label} grey scale 0-{vmax:.3g})" if grey_visible else title, fontsize=12)
        return png_bytes(figure)


def render_method_bars(rows: Sequence[dict[str, Any]], *, truth_label: str = "truth") -> bytes:
    """PNG bar chart of the GTV volume per method (and Dice, when known)."""
    from matplotlib import style

    names = [r["method"] for r in rows]
    volumes = [_float(r.get("volume_ml")) or 0.0 for r in rows]
    dice = [_float(r.get("dice")) for r in rows]
    truth = next((_float(r.get("truth_volume_ml")) for r in rows if _float(r.get("truth_volume_ml"))), None)
    has_dice = any(d is not None for d in dice)
    with style.context("default"):
        figure = new_figure((12.0 if has_dice else 7.0, 4.2))
        axes = figure.add_subplot(1, 2 if has_dice else 1, 1)
        positions = np.arange(len(names))
        axes.bar(positions, volumes, color="#2a6f97")
        if truth is not None:
            axes.axhline(truth, color="black", linestyle="--", label=f"{truth_label} {truth:.2f} mL")
            axes.legend(loc="best", fontsize=8)
        axes.set_xticks(positions, labels=names, rotation=45, ha="right", fontsize=8)
        axes.set_ylabel("GTV volume (mL)")
        axes.grid(True, axis="y", alpha=0.3)
        if has_dice:
            ax2 = figure.add_subplot(1, 2, 2)
            ax2.bar(positions, [d if d is not None else 0.0 for d in dice], color="#61a5c2")
            ax2.set_ylim(0, 1)
            ax2.set_xticks(positions, labels=names, rotation=45, ha="right", fontsize=8)
            ax2.set_ylabel(f"Dice vs {truth_label}")
            ax2.grid(True, axis="y", alpha=0.3)
        figure.subplots_adjust(left=0.07 if has_dice else 0.1, right=0.98, bottom=0.27, top=0.96, wspace=0.18)
        return png_bytes(figure)


def render_curves(curves: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str, title: str,
                  vlines: Sequence[float] = ()) -> bytes:
    """PNG of named (x, y) curves (DVH, QVH)."""
    from matplotlib import style

    with style.context("default"):
        figure = new_figure((7.0, 4.2))
        axes = figure.add_subplot()
        for name, points in curves.items():
            if points:
                array = np.asarray(points, dtype=float)
                axes.plot(array[:, 0], array[:, 1], label=name, lw=1.8)
        for x in vlines:
            axes.axvline(x, color="grey", linestyle=":", lw=1)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_ylim(0, 105)
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        if len(curves) > 0:
            axes.legend(loc="best", fontsize=8)
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
        return png_bytes(figure)


def render_cohort(rows: Sequence[dict[str, Any]], methods: Sequence[str], *, prefix: str, ylabel: str,
                  reference: str | None = None, unit_interval: bool = False) -> bytes:
    """PNG of one box per method (and the reference) over the cohort's rows, with every row's value as a point
    (deterministic horizontal jitter). Methods without any value are left out."""
    from matplotlib import style

    columns: list[tuple[str, list[float]]] = []
    keys = [(m, prefix + m) for m in methods] + ([("reference", reference)] if reference else [])
    for label, key in keys:
        values = [v for v in (_float(r.get(key)) for r in rows) if v is not None]
        if values:
            columns.append((label, values))
    if not columns:
        raise InputError(f"no {ylabel} value to plot")
    jitter = np.random.default_rng(0)
    with style.context("default"):
        figure = new_figure((max(6.0, 1.2 + 0.75 * len(columns)), 4.5))
        axes = figure.add_subplot()
        positions = np.arange(1, len(columns) + 1)
        axes.boxplot([v for _, v in columns], positions=positions, widths=0.55, showfliers=False)
        for pos, (_, values) in zip(positions, columns, strict=True):
            axes.plot(pos + jitter.uniform(-0.15, 0.15, len(values)), values, "o", color="#2a6f97", alpha=0.7,
                      markersize=4)
        axes.set_xticks(positions, labels=[label for label, _ in columns], rotation=45, ha="right", fontsize=8)
        axes.set_ylabel(ylabel)
        if unit_interval:
            axes.set_ylim(0, 1.02)
        axes.grid(True, axis="y", alpha=0.3)
        axes.set_title(f"{ylabel}: {len(rows)} row(s)")
        figure.subplots_adjust(left=0.12, right=0.97, bottom=0.25, top=0.91)
        return png_bytes(figure)


# ------------------------------------------------------------------------------------------------------------
# PDF
# ------------------------------------------------------------------------------------------------------------

def _write_pdf(builder: _Builder, path: Path) -> None:
    """The report's figures, one per A4 landscape page, with a first page of contents (matplotlib PdfPages)."""
    from matplotlib import image as mpimg
    from matplotlib import style
    from matplotlib.backends.backend_pdf import PdfPages

    from ..imaging.io import atomic_path

    with atomic_path(path) as tmp, style.context("default"), \
            PdfPages(tmp, metadata={"Creator": f"petdp {__version__}", "CreationDate": None}) as pdf:
        cover = new_figure((11.69, 8.27))
        lines = [builder.title, builder.location, ""] + [f"{s.title}: {len(s.figures)} figure(s)"
                                                         for s in builder.sections]
        if builder.missing:
            lines += ["", "Not in this folder:"] + [f"  - {m}" for m in builder.missing]
        cover.text(0.05, 0.95, "\n".join(lines), va="top", ha="left", fontsize=10, family="DejaVu Sans")
        pdf.savefig(cover)
        for section in builder.sections:
            for fig in section.figures:
                page = new_figure((11.69, 8.27))
                axes = page.add_axes((0.03, 0.08, 0.94, 0.84))
                axes.imshow(mpimg.imread(io.BytesIO(fig.png), format="png"))
                axes.set_axis_off()
                page.suptitle(f"{section.title}: {fig.title}", fontsize=12)
                page.text(0.03, 0.03, fig.caption[:220], fontsize=8)
                pdf.savefig(page)


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------

def _dvh_points(dose_path: Path, mask: sitk.Image) -> list[tuple[float, float]]:
    """Cumulative DVH (dose Gy, volume %) of the dose file in ``mask`` (put on the dose grid, nearest)."""
    from ..dosepainting.dvh import dvh_from_mask
    from ..imaging.io import read_image
    from ..imaging.resample import resample_mask

    dose = read_image(dose_path)
    result = dvh_from_mask(dose, resample_mask(mask, dose), roi="GTV")
    axis, volume_cc = result.curve(0.1)
    total = result.volume_cc or 1.0
    return [(float(d), 100.0 * float(v) / total) for d, v in zip(axis, volume_cc, strict=True)]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _fmt(value: Any) -> str:
    """A cell's text: numbers to 4 significant digits (integers as they are), lists joined, None empty."""
    text = ""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, (int, np.integer)):
        text = str(value)
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):.4g}" if np.isfinite(value) else ""
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_fmt(v) for v in value)
    elif isinstance(value, str):
        number = _float(value) if value.strip()[:1] in tuple("-+.0123456789") and value.strip() else None
        text = f"{number:.4g}" if number is not None and not value.strip().isdigit() else value
    elif value is not None:
        text = str(value)
    return text


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f'<tr><th class="text">{_e(k)}</th><td class="text">{_e(_fmt(v))}</td></tr>' for k, v in items)
    return f"<table>{rows}</table>"


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]], *, labels: dict[str, str] | None = None,
           row_class: Callable[[dict[str, Any]], str] | None = None, link_column: str | None = None) -> str:
    labels = labels or {}
    text_columns = {"method", "status", "note", "error", "id", "structure", "kind", "timepoint", "mask"}
    head = "".join(f'<th class="{"text" if c in text_columns else ""}">{_e(labels.get(c, c))}</th>' for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            value = _e(_fmt(r.get(c)))
            if c == link_column and r.get("_link"):
                value = f'<a href="{_e(r["_link"])}">{value}</a>'
            cells.append(f'<td class="{"text" if c in text_columns else ""}">{value}</td>')
        cls = _e(row_class(r)) if row_class else ""
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure_html(fig: ReportFigure) -> str:
    from matplotlib import image as mpimg

    height, width = mpimg.imread(io.BytesIO(fig.png), format="png").shape[:2]
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{_e(fig.key)}"><img src="data:image/png;base64,{data}" alt="{_e(fig.title)}" '
            f'width="{width}" height="{height}"><figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)}</figcaption>'
            "</figure>")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as CSV ({exc})", path) from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as JSON ({exc})", path) from exc
    return data if isinstance(data, dict) else {}


def _matrix_from_csv(path: Path, metric: str) -> tuple[list[str], np.ndarray]:
    rows = [r for r in _read_csv(path) if r.get("metric") == metric]
    names = [r["mask"] for r in rows]
    matrix = np.array([[_float(r.get(n)) if _float(r.get(n)) is not None else np.nan for n in names] for r in rows])
    if not names:
        raise InputError(f"holds no {metric!r} rows", path)
    return names, matrix


__all__ = ["ReportFigure", "ReportResult", "render_cohort", "render_curves", "render_method_bars", "render_slices",
           "write_report"]
