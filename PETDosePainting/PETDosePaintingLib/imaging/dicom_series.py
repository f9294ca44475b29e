"""Reading one DICOM image series (PET, CT, MR) into the project's image model, and PET in SUV.

* Files are read with pydicom; slices are sorted by their position along the slice normal (the cross
  product of the row and column directions of Image Orientation (Patient)), and each slice's stored values
  are rescaled with its own Rescale Slope/Intercept (PS3.3 C.7.6.16.2.11 Modality LUT; PET slopes differ per
  slice). The geometry is built from Image Position/Orientation (Patient) and Pixel Spacing (PS3.3
  C.7.6.2, DICOM patient coordinates are LPS); it matches SimpleITK's ``ImageSeriesReader`` (GDCM).
* Checks (each a :class:`DicomError` naming the file and the attribute): unreadable or truncated files,
  several series in the folder (the error lists them and says how to choose), several modalities in one
  series, inconsistent patient/study/frame of reference, orientation, pixel spacing or matrix size,
  duplicate or non-uniformly spaced slices, sheared stacks (gantry tilt), multi-frame objects.
* Non-image objects (RTSTRUCT, RTDOSE, RTPLAN, SEG, SR, ...) and non-DICOM files in the folder are skipped
  and listed in :attr:`DicomSeries.skipped`.
* Units: PET ``BQML`` -> ``Bq/mL``, ``CNTS`` -> ``CNTS``, ``GML`` -> ``SUVbw``; CT -> ``HU``; MR -> ``a.u.``.

The identity of the series (patient, study, series, frame of reference, SOP Instance UIDs in slice order) is
kept for later export (e.g. RT Structure Sets referencing the CT slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import DicomError, InputError
from .dicom_export import DicomIdentity
from .image import Units, get_frame_of_reference, set_frame_of_reference, set_units
from .suv import SuvResult, compute_suv, suv_inputs_from_datasets, tag_label

#: Modalities read as image series; everything else in a folder is skipped.
IMAGE_MODALITIES = ("PT", "CT", "MR")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_PET_UNITS = {"BQML": Units.BQML, "CNTS": "CNTS", "GML": Units.SUV_BW}


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One image series read from DICOM: the image, the sorted header datasets and the identity."""

    directory: Path  #: the folder (or file) it was read from
    modality: str  #: PT, CT or MR
    series_instance_uid: str
    sop_class_uid: str
    series_description: str
    identity: DicomIdentity  #: patient, study and frame of reference (for export)
    sop_instance_uids: tuple[str, ...]  #: in slice (k) order
    files: tuple[Path, ...]  #: in slice (k) order
    datasets: tuple[Dataset, ...]  #: headers without pixel data, in slice (k) order
    image: sitk.Image  #: rescaled values on the LPS grid, units set
    units: str  #: units recorded in the image
    rescale_slopes: tuple[float, ...]  #: per slice, as read
    rescale_intercepts: tuple[float, ...]
    skipped: tuple[str, ...] = ()  #: ``"path: reason"`` for files not used
    notes: tuple[str, ...] = ()  #: anything the reader had to decide (e.g. single-slice thickness)


def candidate_files(path: Path) -> list[Path]:
    """Files that may be DICOM: ``path`` itself if a file, else every file below it (hidden files skipped)."""
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    return sorted(files)


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (no pixel data); ``None`` for a file that is not DICOM at all."""
    try:
        preamble = _has_preamble(path)
    except OSError as exc:
        raise DicomError(f"cannot be read ({exc.strerror or exc})", path) from exc
    if not preamble and path.suffix.lower() not in _DICOM_SUFFIXES:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble)
        ds.get("SOPClassUID")  # force parsing of the leading elements
        if "SOPClassUID" not in ds or "Modality" not in ds:
            raise InvalidDicomError("no SOP Class UID or Modality")
    except Exception as exc:  # pydicom raises many types (struct.error, EOFError, ValueError...) on bad files
        raise DicomError(f"is corrupt or not a valid DICOM file ({type(exc).__name__}: {str(exc)[:150]})",
                         path) from exc
    return ds


def float_values(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    """The ``count`` numbers of a multi-valued attribute; :class:`DicomError` naming tag and file otherwise."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise DicomError(f"{tag_label(keyword)} is missing; the slice geometry cannot be built", path)
    try:
        values = np.array([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{tag_label(keyword)} has the malformed value {value!r}", path) from exc
    if values.size != count or not np.all(np.isfinite(values)):
        raise DicomError(f"{tag_label(keyword)} must hold {count} finite numbers, got {value!r}", path)
    return values


def _describe_series(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    parts = []
    for uid, members in groups.items():
        ds = members[0][1]
        desc = str(ds.get("SeriesDescription", "") or "").strip()
        parts.append(f"{uid} ({ds.get('Modality', '?')}, {len(members)} file(s){f', {desc!r}' if desc else ''})")
    return "; ".join(parts)


def _select_series(directory: Path, series_uid: str | None, modality: str | None
                   ) -> tuple[list[tuple[Path, Dataset]], list[str], list[str]]:
    """The (path, header) pairs of the one requested series, the skipped files, and notes."""
    if not directory.exists():
        raise InputError("no such file or directory", directory)
    files = candidate_files(directory)
    skipped: list[str] = []
    notes: list[str] = []
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    others: dict[str, int] = {}
    for path in files:
        ds = read_header(path)
        if ds is None:
            skipped.append(f"{path}: not a DICOM file")
            continue
        mod = str(ds.get("Modality", "")).strip().upper()
        if mod not in IMAGE_MODALITIES:
            skipped.append(f"{path}: {mod or 'no modality'} object, not an image series")
            others[mod or "?"] = others.get(mod or "?", 0) + 1
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if not uid:
            raise DicomError(f"{tag_label('SeriesInstanceUID')} is missing", path)
        groups.setdefault(uid, []).append((path, ds))
    if not groups:
        found = ", ".join(f"{m} x{n}" for m, n in sorted(others.items())) or "none"
        raise DicomError(f"no PET, CT or MR image files found ({len(files)} file(s); non-image DICOM objects: "
                         f"{found})", directory)
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomError(f"series {series_uid} is not here; image series found: {_describe_series(groups)}",
                             directory)
        chosen = groups[series_uid]
    else:
        candidates = groups
        if modality is not None:
            candidates = {u: m for u, m in groups.items()
                          if any(str(ds.get("Modality", "")).upper() == modality for _, ds in m)}
            if not candidates:
                raise DicomError(f"no {modality} series here; image series found: {_describe_series(groups)}",
                                 directory)
        if len(candidates) > 1:
            raise DicomError(f"holds {len(candidates)} {modality + ' ' if modality else ''}image series: "
                             f"{_describe_series(candidates)}; choose one with series_uid (petdp --series-uid UID) "
                             "or give a folder with one series", directory)
        (uid, chosen), = candidates.items()
        if len(groups) > 1:
            notes.append(f"selected the only {modality} series {uid}; other series in the folder were ignored: "
                         f"{_describe_series({u: m for u, m in groups.items() if u != uid})}")
    for uid, members in groups.items():
        if members is not chosen:
            skipped += [f"{p}: other series {uid}" for p, _ in members]
    return chosen, skipped, notes


def _check_consistent(members: list[tuple[Path, Dataset]], uid: str) -> None:
    modalities: dict[str, Path] = {}
    for path, ds in members:
        modalities.setdefault(str(ds.get("Modality", "")).upper(), path)
    if len(modalities) > 1:
        listed = ", ".join(f"{m} (e.g. {p})" for m, p in modalities.items())
        raise DicomError(f"mixed modalities in series {uid}: {listed}; a series must hold one modality",
                         members[0][0])
    for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "Rows", "Columns",
                    "Units"):
        first_path, first = members[0]
        ref = first.get(keyword)
        for path, ds in members[1:]:
            if ds.get(keyword) != ref:
                raise DicomError(f"mixed series {uid}: {tag_label(keyword)} is {ref!r} in {first_path} but "
                                 f"{ds.get(keyword)!r} in {path}", first_path)
    seen: dict[str, Path] = {}
    for path, ds in members:
        frames = ds.get("NumberOfFrames")
        if frames not in (None, "") and int(frames) > 1:
            raise DicomError(f"is a multi-frame object ({tag_label('NumberOfFrames')} = {frames}); only single-frame "
                             "image series are supported", path)
        sop = str(ds.get("SOPInstanceUID", "")).strip()
        if not sop:
            raise DicomError(f"{tag_label('SOPInstanceUID')} is missing", path)
        if sop in seen:
            raise DicomError(f"duplicate instance: {path} and {seen[sop]} have the same {tag_label('SOPInstanceUID')}",
                             path)
        seen[sop] = path


def _rescale(ds: Dataset, path: Path, modality: str) -> tuple[float, float]:
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = ds.get(keyword)
        if raw is None or raw == "":
            if modality in ("PT", "CT"):
                raise DicomError(f"{tag_label(keyword)} is missing (required for {modality}); the pixel values "
                                 "cannot be converted to physical units", path)
            values.append(default)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise DicomError(f"{tag_label(keyword)} has the malformed value {raw!r}", path) from exc
        if not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise DicomError(f"{tag_label(keyword)} = {raw!r} is not usable", path)
        values.append(value)
    return values[0], values[1]


def read_slice_values(path: Path, rows: int, columns: int, modality: str) -> tuple[np.ndarray, float, float]:
    """Rescaled values (float64, [j, i]) of one file, with the slope and intercept applied."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # as in _read_header: any parse failure means a corrupt file
        raise DicomError(f"is corrupt ({type(exc).__name__}: {str(exc)[:150]})", path) from exc
    slope, intercept = _rescale(ds, path, modality)
    if "PixelData" not in ds:
        raise DicomError("has no Pixel Data (7FE0,0010)", path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(f"{tag_label('SamplesPerPixel')} is {ds.SamplesPerPixel}; only grey-scale images are "
                         "supported", path)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # pydicom raises several types for undecodable or truncated pixel data
        if syntax is not None and syntax.is_compressed:
            return _slice_values_gdcm(path, rows, columns, exc), slope, intercept
        raise DicomError(f"has unreadable or truncated pixel data ({type(exc).__name__}: {str(exc)[:150]})",
                         path) from exc
    if stored.shape != (rows, columns):
        raise DicomError(f"pixel data of shape {stored.shape} does not match {tag_label('Rows')} x "
                         f"{tag_label('Columns')} = {rows} x {columns}", path)
    return stored * slope + intercept, slope, intercept


def _slice_values_gdcm(path: Path, rows: int, columns: int, cause: Exception) -> np.ndarray:
    """Fallback for compressed transfer syntaxes pydicom cannot decode here: SimpleITK (GDCM) reads the file
    and applies Rescale Slope/Intercept itself."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        values = sitk.GetArrayFromImage(reader.Execute()).astype(np.float64)
    except RuntimeError as exc:
        raise DicomError(f"has compressed pixel data that neither pydicom ({type(cause).__name__}: {str(cause)[:100]}) "
                         "nor SimpleITK/GDCM can decode", path) from exc
    values = values.reshape(values.shape[-2:]) if values.size == rows * columns else values
    if values.shape != (rows, columns):
        raise DicomError(f"decoded pixel data of shape {values.shape} does not match {rows} x {columns}", path)
    return values


@dataclass
class SliceStack:
    """Single-frame slices of one series sorted along their normal, with the geometry they define (LPS mm)."""

    members: list[tuple[Path, Dataset]]  #: (file, header) in slice order
    row_dir: np.ndarray  #: direction of the rows (i axis)
    col_dir: np.ndarray  #: direction of the columns (j axis), orthogonalised
    normal: np.ndarray  #: slice normal (k axis), row x column
    pixel_spacing: np.ndarray  #: PixelSpacing as in DICOM: (between rows, between columns), mm
    positions: np.ndarray  #: ImagePositionPatient of each slice, in slice order
    slice_spacing_mm: float
    rows: int
    columns: int
    notes: list[str] = field(default_factory=list)


def stack_slices(members: list[tuple[Path, Dataset]], *, tolerance_mm: float = 0.05,
                 duplicate_hint: str = "duplicated files?", what: str = "") -> SliceStack:
    """Check and sort single-frame slices into a regular stack (PS3.3 C.7.6.2 Image Plane module).

    Every slice must share ImageOrientationPatient (two orthonormal direction cosines), PixelSpacing and the
    matrix; slices are sorted by their position along the normal, which must be uniformly spaced within
    ``tolerance_mm`` with no in-plane shift (gantry tilt is refused). A single slice takes its spacing from
    SpacingBetweenSlices or SliceThickness (else 1 mm, noted). Errors name the tag and the file; ``what``
    (e.g. "at b = 800 s/mm2") says which stack of a series they concern.
    """
    where = f" {what}" if what else ""
    first_path, first = members[0]
    orientation = float_values(first, "ImageOrientationPatient", 6, first_path)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or \
            abs(float(np.dot(row_dir, col_dir))) > 1e-3:
        raise DicomError(f"{tag_label('ImageOrientationPatient')} {orientation.tolist()} is not two orthonormal "
                         "direction cosines", first_path)
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - np.dot(col_dir, row_dir) * row_dir
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = float_values(first, "PixelSpacing", 2, first_path)
    if np.any(pixel_spacing <= 0):
        raise DicomError(f"{tag_label('PixelSpacing')} {pixel_spacing.tolist()} must be positive", first_path)
    rows, columns = int(first.Rows), int(first.Columns)
    positions = []
    for path, ds in members:
        if not np.allclose(float_values(ds, "ImageOrientationPatient", 6, path), orientation, atol=1e-4):
            raise DicomError(f"{tag_label('ImageOrientationPatient')} differs from that of {first_path}; a series "
                             "must have one orientation", path)
        if not np.allclose(float_values(ds, "PixelSpacing", 2, path), pixel_spacing, atol=1e-4, rtol=0):
            raise DicomError(f"{tag_label('PixelSpacing')} differs from that of {first_path}", path)
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise DicomError(f"matrix {ds.Rows} x {ds.Columns} differs from {rows} x {columns} in {first_path}",
                             path)
        positions.append(float_values(ds, "ImagePositionPatient", 3, path))
    positions_arr = np.array(positions)
    along = positions_arr @ normal
    order = np.argsort(along, kind="stable")
    members = [members[i] for i in order]
    positions_arr, along = positions_arr[order], along[order]
    n = len(members)
    notes: list[str] = []
    if n > 1:
        gaps = np.diff(along)
        worst = int(np.argmin(gaps))
        if gaps[worst] <= tolerance_mm:
            raise DicomError(f"two slices at the same position{where} ({along[worst]:.3f} mm along the normal): "
                             f"{members[worst][0]} and {members[worst + 1][0]} ({duplicate_hint})", members[worst][0])
        dz = float((along[-1] - along[0]) / (n - 1))
        deviation = np.abs(along - (along[0] + dz * np.arange(n)))
        if deviation.max() > tolerance_mm:
            k = int(np.argmax(np.abs(gaps - dz)))
            raise DicomError(f"non-uniform slice spacing{where}: the gap between {members[k][0].name} and "
                             f"{members[k + 1][0].name} is {gaps[k]:.4g} mm while the series averages {dz:.4g} mm "
                             f"(missing slice?); tolerance {tolerance_mm:g} mm", members[k][0].parent)
        in_plane = (positions_arr - positions_arr[0]) - np.outer(along - along[0], normal)
        if np.abs(in_plane).max() > tolerance_mm:
            raise DicomError(f"slices are not stacked along the slice normal (in-plane shift up to "
                             f"{np.abs(in_plane).max():.3g} mm: gantry tilt or sheared series), which is not "
                             "supported", first_path.parent)
    else:
        dz = None
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = first.get(keyword)
            try:
                if value not in (None, "") and float(value) > 0:
                    dz = float(value)
                    notes.append(f"single slice: slice spacing {dz:g} mm taken from {tag_label(keyword)}")
                    break
            except (TypeError, ValueError):
                continue
        if dz is None:
            dz = 1.0
            notes.append("single slice without SpacingBetweenSlices or SliceThickness: slice spacing set to 1 mm "
                         "(it does not affect voxel values)")
    return SliceStack(members, row_dir, col_dir, normal, pixel_spacing, positions_arr, dz, rows, columns, notes)


def read_dicom_series(
    directory: str | Path,
    series_uid: str | None = None,
    *,
    modality: str | None = None,
    slice_tolerance_mm: float = 0.05,
) -> DicomSeries:
    """Read one PET, CT or MR series from a folder (searched recursively) or a single file.

    Parameters
    ----------
    directory:
        Folder holding the series (other series, non-image objects and non-DICOM files may be present), or
        one DICOM file.
    series_uid:
        Series Instance UID to read when the folder holds several image series. Default ``None``: the folder
        must hold exactly one (of ``modality``, if given); otherwise the error lists the series found.
    modality:
        ``"PT"``, ``"CT"`` or ``"MR"``: only series of this modality are candidates (a folder with one PET and
        one CT series is then unambiguous). Default ``None``: any.
    slice_tolerance_mm:
        Largest allowed deviation (mm) of a slice position from the uniform grid through the first and last
        slices, of a duplicate-slice distance, and of the in-plane offset of the stack (gantry tilt). Default
        0.05 mm: above the rounding of positions written by scanners, far below a voxel.

    Returns a :class:`DicomSeries`; its image holds the rescaled values (PET float32; CT and MR int16 when all
    values are integers that fit, else float32) with units set as described in the module docstring.
    """
    directory = Path(directory)
    if modality is not None and modality not in IMAGE_MODALITIES:
        raise InputError(f"modality must be one of {', '.join(IMAGE_MODALITIES)}, got {modality!r}")
    members, skipped, notes = _select_series(directory, series_uid, modality)
    uid = str(members[0][1].SeriesInstanceUID).strip()
    _check_consistent(members, uid)
    mod = str(members[0][1].Modality).upper()

    # --- geometry: orientation, spacing, positions ------------------------------------------------------
    stack = stack_slices(members, tolerance_mm=slice_tolerance_mm,
                         duplicate_hint="duplicated files, or a dynamic or multi-frame acquisition?")
    notes.extend(stack.notes)
    members, positions, dz, n = stack.members, stack.positions, stack.slice_spacing_mm, len(stack.members)
    row_dir, col_dir, normal, pixel_spacing = stack.row_dir, stack.col_dir, stack.normal, stack.pixel_spacing
    first = members[0][1]

    # --- pixel values ------------------------------------------------------------------------------------
    rows, columns = int(first.Rows), int(first.Columns)
    values = np.empty((n, rows, columns), dtype=np.float64)
    slopes, intercepts = [], []
    for k, (path, _ds) in enumerate(members):
        values[k], slope, intercept = read_slice_values(path, rows, columns, mod)
        slopes.append(slope)
        intercepts.append(intercept)

    if mod == "PT":
        raw_units = str(first.get("Units", "") or "").strip().upper()
        units = _PET_UNITS.get(raw_units)
        if units is None:
            units = raw_units or "unknown"
            notes.append(f"PET {tag_label('Units')} is {raw_units or 'missing'!r}: values kept as stored x slope + "
                         "intercept, with no physical unit")
        array = values.astype(np.float32)
    else:
        units = Units.HU if mod == "CT" else Units.ARBITRARY
        integral = np.all(values == np.rint(values)) and values.min() >= -32768 and values.max() <= 32767
        array = values.astype(np.int16 if integral else np.float32)

    image = sitk.GetImageFromArray(array)
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), float(dz)))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    set_units(image, units)
    identity = DicomIdentity.from_dataset(first)
    try:  # downstream code refuses to mix grids of different frames of reference
        set_frame_of_reference(image, identity.frame_of_reference_uid)
    except InputError:
        notes.append(f"FrameOfReferenceUID {identity.frame_of_reference_uid!r} is malformed and was not recorded")

    return DicomSeries(
        directory=directory, modality=mod, series_instance_uid=uid, sop_class_uid=str(first.SOPClassUID),
        series_description=str(first.get("SeriesDescription", "") or "").strip(),
        identity=identity,
        sop_instance_uids=tuple(str(ds.SOPInstanceUID).strip() for _, ds in members),
        files=tuple(p for p, _ in members), datasets=tuple(ds for _, ds in members), image=image, units=units,
        rescale_slopes=tuple(slopes), rescale_intercepts=tuple(intercepts), skipped=tuple(skipped),
        notes=tuple(notes),
    )


def read_dicom_image(directory: str | Path) -> sitk.Image:
    """The image of the one PET, CT or MR series in ``directory`` (see :func:`read_dicom_series`).

    PET in Bq/mL (``CNTS`` or ``SUVbw`` for count or GML series), CT in HU, MR in arbitrary units. Used by
    :func:`PETDosePaintingLib.imaging.io.read_image` for DICOM folders.
    """
    return read_dicom_series(directory).image


def suv_from_series(
    series: DicomSeries,
    kind: str = "bw",
    *,
    weight_kg: float | None = None,
    dose_bq: float | None = None,
    height_m: float | None = None,
    sex: str | None = None,
    allow_uncorrected: bool = False,
    **suv_options: object,
) -> tuple[sitk.Image, SuvResult]:
    """SUV image (float32, units of ``kind``) of a PET :class:`DicomSeries`, and how it was computed.

    Each slice's rescaled values are multiplied by its factor from :func:`~.suv.compute_suv` (QIBA
    pseudo-code; see there for ``kind``, the overrides and ``suv_options``). A non-PET series is refused.
    """
    if series.modality != "PT":
        raise DicomError(f"is a {series.modality} series ({tag_label('Modality')} {series.modality}), not PET; "
                         "SUV needs a PET series", series.files[0])
    inputs = suv_inputs_from_datasets(series.datasets, str(series.directory), [str(p) for p in series.files])
    result = compute_suv(inputs, kind, weight_kg=weight_kg, dose_bq=dose_bq, height_m=height_m, sex=sex,
                         allow_uncorrected=allow_uncorrected, **suv_options)  # type: ignore[arg-type]
    values = sitk.GetArrayFromImage(series.image).astype(np.float64)
    suv = values * np.asarray(result.factors, dtype=np.float64)[:, None, None]
    image = sitk.GetImageFromArray(suv.astype(np.float32))
    image.CopyInformation(series.image)
    set_units(image, result.units)
    set_frame_of_reference(image, get_frame_of_reference(series.image))
    return image, result


def read_pet_suv(
    directory: str | Path,
    kind: str = "bw",
    *,
    series_uid: str | None = None,
    weight_kg: float | None = None,
    dose_bq: float | None = None,
    height_m: float | None = None,
    sex: str | None = None,
    allow_uncorrected: bool = False,
    **suv_options: object,
) -> tuple[sitk.Image, SuvResult]:
    """Read the PET series in ``directory`` and return (SUV image, :class:`~.suv.SuvResult`).

    A folder that also holds CT/MR series is fine as long as it has one PET series (else give
    ``series_uid``). ``kind`` and the overrides are those of :func:`~.suv.compute_suv`: ``weight_kg`` (kg),
    ``dose_bq`` (Bq injected at the radiopharmaceutical start time), ``height_m`` (m), ``sex`` (M/F),
    ``allow_uncorrected`` (accept images without attenuation or decay correction).
    """
    series = read_dicom_series(directory, series_uid, modality=None if series_uid else "PT")
    return suv_from_series(series, kind, weight_kg=weight_kg, dose_bq=dose_bq, height_m=height_m, sex=sex,
                           allow_uncorrected=allow_uncorrected, **suv_options)


def series_summary(series: DicomSeries) -> list[str]:
    """Plain-text lines describing a read series (for logs)."""
    size = series.image.GetSize()
    lines = [f"series {series.series_instance_uid} ({series.modality}, {size[2]} slice(s) of {size[0]} x {size[1]}"
             f"{f', {series.series_description!r}' if series.series_description else ''})",
             f"patient {series.identity.patient_id!r}, study {series.identity.study_instance_uid}",
             "spacing " + " x ".join(f"{s:.4g}" for s in series.image.GetSpacing()) + " mm, origin (LPS) " +
             ", ".join(f"{o:.2f}" for o in series.image.GetOrigin()) + " mm"]
    lines += [f"note: {n}" for n in series.notes]
    if series.skipped:
        lines.append(f"skipped {len(series.skipped)} file(s) (non-image objects, other series or non-DICOM)")
    return lines
