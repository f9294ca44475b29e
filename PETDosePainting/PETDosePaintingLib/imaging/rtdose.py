"""DICOM RT Dose: write a dose map a treatment planning system imports, and read any RT Dose back in Gy.

Writing (:func:`write_rtdose`) follows the RT Dose IOD (PS3.3 A.18) and what planning systems check
(reference notes ``dose_painting.md`` §1.4 and §7.1):

* one multi-frame file, RT Dose Storage (1.2.840.10008.5.1.4.1.1.481.2), Explicit VR Little Endian;
* Patient and General Study attributes copied from the planning CT (PS3.3 C.7.1.1, C.7.2.1), so the TPS
  files the dose under the same patient and study; Frame of Reference UID (C.7.4.1) **identical** to the
  CT's; a dose whose frame of reference is unknown or different is refused;
* RT Series (C.8.8.1), General Equipment (C.7.5.1), General Image (C.7.6.1), Image Plane (C.7.6.2),
  Image Pixel (C.7.6.3), Multi-frame (C.7.6.6, Frame Increment Pointer = Grid Frame Offset Vector
  (3004,000C)) and RT Dose (C.8.8.3) modules;
* an axial dose grid with identity orientation (Image Orientation (Patient) 1\\0\\0\\0\\1\\0), the form
  every TPS reads. Grids whose axes are only flipped are re-ordered exactly (no interpolation); oblique
  grids are refused: resample them explicitly first (e.g. :func:`.resample.resample_to_reference` with
  linear interpolation onto an axial grid), so the interpolation is the caller's stated choice;
* 32-bit unsigned pixels (Bits Allocated = Bits Stored = 32, High Bit 31, Pixel Representation 0, as
  C.8.8.3.4 requires for Dose Type other than ERROR) with Dose Grid Scaling = max / (2^32 - 1), so the
  quantisation step is about 2e-10 of the maximum; Dose Units GY; Grid Frame Offset Vector relative
  (first element 0, PS3.3 C.8.8.3.2 form a);
* Referenced RT Plan Sequence (Type 1C, required for Dose Summation Type PLAN / MULTI_PLAN) pointing to a
  minimal RT Plan (RT Plan Storage 1.2.840.10008.5.1.4.1.1.481.5; RT General Plan module C.8.8.9 with
  plan label, name and description, Approval module C.8.8.16 with status UNAPPROVED, no beams) written
  next to the dose: Eclipse and others refuse orphan doses (§7.1);
* deterministic UIDs: every UID is derived (:func:`.dicom_export.uid_from`, UUID v5 under ``2.25``) from
  the study UID and a SHA-256 digest of the content (pixel values, grid, types, description, the CT
  series), so the same export gives the same UIDs and a different dose never re-uses one (a TPS treats
  an already-known SOP Instance UID as the same object).

Reading (:func:`read_rtdose`) returns a float32 image in Gy on the LPS grid given by Image Position /
Orientation (Patient), Pixel Spacing and Grid Frame Offset Vector (relative form a, or absolute form b,
which PS3.3 allows only for the orientation 1\\0\\0\\0\\1\\0), with the Frame of Reference UID in the image
metadata under ``"0020|0052"`` (the key SimpleITK/GDCM use, read by
:mod:`PETDosePaintingLib.comparison.metrics` to refuse masks from different frames of reference).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from .. import __version__
from ..errors import DicomError, GeometryError, InputError, OutputError, UnitsError
from .image import (
    DESCRIPTION_KEY,
    FRAME_OF_REFERENCE_KEY,
    Units,
    get_frame_of_reference,
    require_finite,
    require_units,
    same_geometry,
    set_units,
)
from .io import atomic_path

if TYPE_CHECKING:
    from .dicom_series import DicomSeries

RT_DOSE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.2")
RT_PLAN_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.5")
RT_STRUCTURE_SET_STORAGE = UID("1.2.840.10008.5.1.4.1.1.481.3")

#: Metadata key of the DICOM Frame of Reference UID (as SimpleITK/GDCM name the tag (0020,0052)).
#: Metadata keys also recorded by :func:`read_rtdose`.
STUDY_UID_KEY = "0020|000d"
SERIES_UID_KEY = "0020|000e"
SOP_INSTANCE_UID_KEY = "0008|0018"

#: Largest stored value of a 32-bit unsigned pixel.
UINT32_MAX = 2**32 - 1
#: Dose Summation Types this writer supports; both need Referenced RT Plan Sequence (PS3.3 C.8.8.3).
#: FRACTION, BEAM, BRACHY and the *_SESSION / CONTROL_POINT types also need fraction-group, beam or
#: control-point references that a dose map does not have, so they are refused.
SUMMATION_TYPES = ("PLAN", "MULTI_PLAN")
#: Dose Types (PS3.3 C.8.8.3): PHYSICAL, or EFFECTIVE for RBE- or biologically weighted dose. ERROR
#: (signed dose differences) is not a planning object and is refused.
DOSE_TYPES = ("PHYSICAL", "EFFECTIVE")
#: Series Numbers given to the written objects (Type 2 in the RT Series module; any value is legal).
RTPLAN_SERIES_NUMBER = 70
RTDOSE_SERIES_NUMBER = 71
#: Largest length of an LO value (Long String, PS3.5 Table 6.2-1).
LO_MAX = 64


@dataclass(frozen=True, eq=False)
class RtDoseExport:
    """What :func:`write_rtdose` wrote."""

    path: Path  #: the RT Dose file
    plan_path: Path | None  #: the minimal RT Plan written next to it (``None`` when ``write_plan=False``)
    sop_instance_uid: str  #: of the RT Dose
    series_instance_uid: str  #: of the RT Dose series
    plan_sop_instance_uid: str  #: the RT Plan the dose references (written or not)
    frame_of_reference_uid: str  #: the planning CT's, written in both objects
    dose_grid_scaling: float  #: Gy per stored unit, as written (a DS value)
    max_gy: float  #: largest dose given
    quantisation_error_gy: float  #: largest |written - given| over the grid
    image: sitk.Image  #: the dose the file represents (stored x scaling), Gy, on the written grid
    notes: tuple[str, ...] = ()  #: decisions taken (flipped axes, plan not written, ...)


# --------------------------------------------------------------------------------------------------------------
# Frame of reference helpers
# --------------------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------------------
# Shared dataset building (also used by the RT Structure Set writer)
# --------------------------------------------------------------------------------------------------------------

#: Patient (C.7.1.1) and General Study (C.7.2.1) attributes copied verbatim from the planning CT, with the
#: DICOM type: Type 2 attributes are written empty when the CT lacks them.
_COPIED_FROM_CT = (
    ("PatientName", 2), ("PatientID", 2), ("PatientBirthDate", 2), ("PatientSex", 2),
    ("StudyInstanceUID", 1), ("StudyDate", 2), ("StudyTime", 2), ("ReferringPhysicianName", 2),
    ("StudyID", 2), ("AccessionNumber", 2), ("StudyDescription", 3),
)


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def creation_datetime() -> _dt.datetime:
    """The local time written as Instance Creation / Content Date and Time."""
    return _dt.datetime.now().replace(microsecond=0)


def rt_base_dataset(reference: DicomSeries, sop_class: UID, sop_uid: str, *, modality: str, series_uid: str,
                    series_number: int, series_description: str, when: _dt.datetime) -> Dataset:
    """A dataset with File Meta, SOP Common (C.12.1), Patient and General Study copied from the CT,
    RT Series (C.8.8.1) and General Equipment (C.7.5.1) filled in."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PETDP_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ct = reference.datasets[0]
    for keyword, dicom_type in _COPIED_FROM_CT:
        value = ct.get(keyword)
        if value is not None and value != "":
            setattr(ds, keyword, value)
        elif dicom_type == 1:
            raise DicomError(f"the planning CT has no {keyword}; it cannot be referenced", reference.files[0])
        elif dicom_type == 2:
            setattr(ds, keyword, "")
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.SeriesTime = when.strftime("%H%M%S")
    ds.OperatorsName = ""
    ds.Manufacturer = "PETDosePainting"
    ds.ManufacturerModelName = "PETDosePainting"
    ds.SoftwareVersions = __version__
    return ds


def check_text(value: str, what: str, max_length: int = LO_MAX) -> str:
    """Refuse a DICOM text value that is too long or holds a backslash (the value separator)."""
    value = str(value)
    if len(value) > max_length:
        raise InputError(f"{what} {value!r} has {len(value)} characters; DICOM allows at most {max_length} here")
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise InputError(f"{what} {value!r} holds a backslash or a control character, which DICOM text "
                         "values cannot hold")
    return value


def reference_frame_of_reference(reference: DicomSeries) -> str:
    """The planning CT's Frame of Reference UID (an error if it has none)."""
    uid = reference.identity.frame_of_reference_uid
    if not uid or not UID(uid).is_valid:
        raise DicomError(f"the reference series has no valid Frame of Reference UID ({uid!r}); objects cannot "
                         "be placed in its frame", reference.files[0])
    return uid


def digest(*parts: object) -> str:
    """SHA-256 hex digest of the parts (bytes are hashed as they are, anything else through ``repr``)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, (bytes, bytearray, memoryview)) else repr(part).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def ensure_not_reference(out_path: Path, reference: DicomSeries) -> None:
    """Refuse an output file that is one of the reference series' files."""
    out = out_path.resolve()
    if any(out == Path(p).resolve() for p in reference.files):
        raise OutputError("is a file of the reference series; choose another output path", out_path)


# --------------------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------------------

def _axial_identity(dose: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float],
                                               list[str]]:
    """The ``[k, j, i]`` array, origin and spacing of ``dose`` on an identity-orientation grid.

    Axes that are only flipped (direction a diagonal matrix of +-1) are reversed exactly; anything else
    (oblique, or axes permuted) is refused.
    """
    direction = np.reshape(dose.GetDirection(), (3, 3))
    notes: list[str] = []
    diagonal = np.diag(np.sign(np.diag(direction)))
    if not np.allclose(direction, diagonal, atol=1e-6) or np.any(np.diag(diagonal) == 0):
        raise GeometryError(
            f"the dose grid is not axial with identity orientation (direction {np.round(direction, 4).tolist()}); "
            "resample it explicitly onto an axial grid first (imaging.resample.resample_to_reference with "
            "interpolation='linear' onto an identity-direction reference), so the interpolation is your choice")
    array = sitk.GetArrayFromImage(dose).astype(np.float64)
    size = np.asarray(dose.GetSize())
    first = np.zeros(3)
    flipped = []
    for axis in range(3):  # axis 0 = i (array axis 2), 1 = j, 2 = k
        if diagonal[axis, axis] < 0:
            array = np.flip(array, axis=2 - axis)
            first[axis] = size[axis] - 1
            flipped.append("ijk"[axis])
    origin = dose.TransformContinuousIndexToPhysicalPoint(first.tolist())
    if flipped:
        notes.append(f"dose grid axes {', '.join(flipped)} were reversed (exactly, no interpolation) to write "
                     "the identity orientation 1\\0\\0\\0\\1\\0")
    return np.ascontiguousarray(array), tuple(origin), tuple(dose.GetSpacing()), notes


def _check_frame_of_reference(dose: sitk.Image, reference: DicomSeries, ct_for: str) -> list[str]:
    dose_for = get_frame_of_reference(dose)
    if dose_for is not None:
        if dose_for != ct_for:
            raise GeometryError(f"the dose is in the frame of reference {dose_for} but the planning CT is in "
                                f"{ct_for}; register and resample the dose into the CT's frame first")
        return []
    if same_geometry(dose, reference.image, tolerance_mm=1e-3):
        return ["the dose records no frame of reference; it lies exactly on the planning CT grid, so it is "
                "written in the CT's frame of reference"]
    raise GeometryError(
        "the dose records no frame of reference (metadata 0020|0052) and is not on the planning CT grid, so "
        "nothing says it is in the CT's frame; resample it onto the CT grid, or tag it with "
        "rtdose.set_frame_of_reference(dose, uid) once you know its frame")


def _scaling(max_gy: float) -> float:
    """Dose Grid Scaling max / (2^32 - 1) as a DS value, nudged up so max / scaling fits in 32 bits."""
    if max_gy <= 0:
        return 1.0
    scaling = float(_ds(max_gy / UINT32_MAX))
    while max_gy / scaling > UINT32_MAX + 0.5:
        scaling = float(_ds(np.nextafter(scaling, np.inf) * (1 + 1e-12)))
    return scaling


def write_rtdose(
    dose: sitk.Image,
    out_path: str | Path,
    reference_series: DicomSeries,
    *,
    description: str = "",
    summation_type: str = "PLAN",
    write_plan: bool = True,
    dose_type: str = "PHYSICAL",
    plan_label: str = "PETDP",
    referenced_plan_uid: str | None = None,
    structure_set_uid: str | None = None,
) -> RtDoseExport:
    """Write ``dose`` (Gy) as a DICOM RT Dose in the planning CT's frame of reference.

    Parameters
    ----------
    dose:
        3-D image with units ``Gy``, no negative or non-finite values, axial grid (see the module
        docstring). Its frame of reference must be known: recorded in the metadata ``"0020|0052"`` and
        equal to the CT's, or, when not recorded, the dose lies on the CT's own grid.
    out_path:
        The RT Dose file to write (``.dcm``). The RT Plan goes next to it as ``<stem>_plan.dcm``.
    reference_series:
        The planning CT (:func:`.dicom_series.read_dicom_series`): patient, study and frame of reference.
    description:
        Series Description (LO, at most 64 characters) and Dose Comment, e.g. ``"DPBN_presc_70-86Gy"`` or
        ``"DPBN_inverted_base"``; include the mapping parameters (§7.1).
    summation_type:
        Dose Summation Type: ``"PLAN"`` (default) or ``"MULTI_PLAN"`` (accumulations).
    write_plan:
        Write the minimal RT Plan the dose references (default). With ``False`` the dose still
        references a plan (Type 1C): ``referenced_plan_uid`` if given, else the UID of the plan this
        function writes for the same inputs (write it once, or import the dose with that plan).
    dose_type:
        ``"PHYSICAL"`` (default) or ``"EFFECTIVE"`` (biologically weighted, e.g. EQD2 maps).
    plan_label:
        RT Plan Label (SH, at most 16 characters) of the written plan.
    referenced_plan_uid:
        Reference this existing RT Plan (SOP Instance UID) instead of a written one; implies no plan is
        written.
    structure_set_uid:
        SOP Instance UID of an RT Structure Set on the same CT. Given, the plan's RT Plan Geometry is
        ``PATIENT`` with a Referenced Structure Set Sequence (C.8.8.9); otherwise ``TREATMENT_DEVICE``
        (no structure set needed).

    Returns an :class:`RtDoseExport`. The file(s) are written atomically; nothing is written on error.
    """
    out_path = Path(out_path)
    require_units(dose, {Units.GY}, "dose for RT Dose export")
    require_finite(dose, "dose for RT Dose export")
    if dose.GetDimension() != 3:
        raise InputError(f"the dose must be a 3-D image, got {dose.GetDimension()}-D")
    if summation_type not in SUMMATION_TYPES:
        raise InputError(f"summation_type must be one of {', '.join(SUMMATION_TYPES)}, got {summation_type!r} "
                         "(other Dose Summation Types need fraction-group or beam references a dose map lacks)")
    if dose_type not in DOSE_TYPES:
        raise InputError(f"dose_type must be one of {', '.join(DOSE_TYPES)}, got {dose_type!r}")
    description = check_text(description, "description")
    plan_label = check_text(plan_label, "plan_label", 16)
    if not plan_label.strip():
        raise InputError("plan_label (RT Plan Label, Type 1) must not be empty")
    for name, uid in (("referenced_plan_uid", referenced_plan_uid), ("structure_set_uid", structure_set_uid)):
        if uid is not None and not UID(uid).is_valid:
            raise InputError(f"{name} {uid!r} is not a valid DICOM UID")
    if out_path.suffix.lower() != ".dcm":
        raise OutputError("an RT Dose file must end in .dcm", out_path)
    ensure_not_reference(out_path, reference_series)
    ct_for = reference_frame_of_reference(reference_series)
    notes = _check_frame_of_reference(dose, reference_series, ct_for)

    values, origin, spacing, flip_notes = _axial_identity(dose)
    notes += flip_notes
    if values.min() < 0:
        raise InputError(f"the dose holds negative values (down to {values.min():.4g} Gy); RT Dose pixels are "
                         "unsigned for Dose Type PHYSICAL/EFFECTIVE — clip or correct the map first")
    max_gy = float(values.max())
    scaling = _scaling(max_gy)
    stored = np.minimum(np.rint(values / scaling), UINT32_MAX).astype("<u4")
    written = stored.astype(np.float64) * scaling
    quant_err = float(np.abs(written - values).max())
    nz, ny, nx = stored.shape

    ident = reference_series.identity
    content = digest(stored.tobytes(), stored.shape, origin, spacing, scaling, description, summation_type,
                     dose_type, plan_label, reference_series.series_instance_uid, ct_for, referenced_plan_uid,
                     structure_set_uid)
    dose_uid = ident.uid("rtdose", content)
    dose_series_uid = ident.uid("rtdose-series", content)
    plan_uid = referenced_plan_uid or ident.uid("rtplan", content)
    plan_series_uid = ident.uid("rtplan-series", content)
    plan_path = out_path.with_name(f"{out_path.stem}_plan.dcm") if write_plan and not referenced_plan_uid else None
    if plan_path is None:
        notes.append(f"no RT Plan written; the dose references the RT Plan {plan_uid}"
                     + ("" if referenced_plan_uid else " (the plan write_plan=True writes for these inputs)"))
    else:
        ensure_not_reference(plan_path, reference_series)
    when = creation_datetime()

    ds = rt_base_dataset(reference_series, RT_DOSE_STORAGE, dose_uid, modality="RTDOSE",
                         series_uid=dose_series_uid, series_number=RTDOSE_SERIES_NUMBER,
                         series_description=description, when=when)
    # Frame of Reference (C.7.4.1)
    ds.FrameOfReferenceUID = ct_for
    ds.PositionReferenceIndicator = reference_series.datasets[0].get("PositionReferenceIndicator", "") or ""
    # General Image (C.7.6.1)
    ds.InstanceNumber = 1
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    # Image Plane (C.7.6.2): Pixel Spacing is (row spacing = along j, column spacing = along i)
    ds.ImagePositionPatient = [_ds(v) for v in origin]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.SliceThickness = _ds(spacing[2])
    # Image Pixel (C.7.6.3) with the RT Dose constraints of C.8.8.3.4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    # Multi-frame (C.7.6.6)
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    # RT Dose (C.8.8.3)
    ds.DoseUnits = "GY"
    ds.DoseType = dose_type
    ds.DoseSummationType = summation_type
    if description:
        ds.DoseComment = description
    ds.GridFrameOffsetVector = [_ds(k * spacing[2]) for k in range(nz)]  # relative form, first 0
    ds.DoseGridScaling = _ds(scaling)
    plan_ref = Dataset()
    plan_ref.ReferencedSOPClassUID = RT_PLAN_STORAGE
    plan_ref.ReferencedSOPInstanceUID = plan_uid
    ds.ReferencedRTPlanSequence = Sequence([plan_ref])
    ds.add_new(0x7FE00010, "OW", stored.tobytes())

    plan = None
    if plan_path is not None:
        plan = _minimal_plan(reference_series, plan_uid=plan_uid, series_uid=plan_series_uid, ct_for=ct_for,
                             label=plan_label, description=description, dose_uid=dose_uid,
                             structure_set_uid=structure_set_uid, when=when)
    if plan_path is not None:
        with atomic_path(plan_path) as tmp_plan, atomic_path(out_path) as tmp_dose:
            pydicom.dcmwrite(tmp_plan, plan, enforce_file_format=True)
            pydicom.dcmwrite(tmp_dose, ds, enforce_file_format=True)
    else:
        with atomic_path(out_path) as tmp_dose:
            pydicom.dcmwrite(tmp_dose, ds, enforce_file_format=True)

    image = sitk.GetImageFromArray(written.astype(np.float32))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    set_units(image, Units.GY)
    image.SetMetaData(FRAME_OF_REFERENCE_KEY, ct_for)
    return RtDoseExport(
        path=out_path, plan_path=plan_path, sop_instance_uid=dose_uid, series_instance_uid=dose_series_uid,
        plan_sop_instance_uid=plan_uid, frame_of_reference_uid=ct_for, dose_grid_scaling=scaling, max_gy=max_gy,
        quantisation_error_gy=quant_err, image=image, notes=tuple(notes))


def _minimal_plan(reference: DicomSeries, *, plan_uid: str, series_uid: str, ct_for: str, label: str,
                  description: str, dose_uid: str, structure_set_uid: str | None, when: _dt.datetime) -> Dataset:
    """A minimal RT Plan (A.20): RT General Plan (C.8.8.9) and Approval (C.8.8.16, UNAPPROVED), no beams."""
    ds = rt_base_dataset(reference, RT_PLAN_STORAGE, plan_uid, modality="RTPLAN", series_uid=series_uid,
                         series_number=RTPLAN_SERIES_NUMBER, series_description=description or "PETDP dose plan",
                         when=when)
    ds.FrameOfReferenceUID = ct_for  # Frame of Reference module (U in the RT Plan IOD): TPS match on it
    ds.PositionReferenceIndicator = reference.datasets[0].get("PositionReferenceIndicator", "") or ""
    ds.InstanceNumber = 1
    ds.RTPlanLabel = label
    ds.RTPlanName = description or label
    ds.RTPlanDescription = (
        f"Placeholder plan written by PETDosePainting {__version__} so that the RT Dose {dose_uid} has the "
        "Referenced RT Plan its Dose Summation Type requires. It has no beams and is not deliverable.")
    ds.RTPlanDate = when.strftime("%Y%m%d")
    ds.RTPlanTime = when.strftime("%H%M%S")
    if structure_set_uid:
        ds.RTPlanGeometry = "PATIENT"
        item = Dataset()
        item.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        item.ReferencedSOPInstanceUID = structure_set_uid
        ds.ReferencedStructureSetSequence = Sequence([item])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


# --------------------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------------------

def read_rt_dataset(path: Path) -> Dataset:
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            return pydicom.dcmread(path, force=True)  # files without the 128-byte preamble (old exports)
    except Exception as exc:  # pydicom raises many types on bad files
        raise DicomError(f"is corrupt or not a DICOM file ({type(exc).__name__}: {str(exc)[:150]})", path) from exc


def _numbers(ds: Dataset, keyword: str, path: Path, count: int | None = None) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise DicomError(f"{keyword} is missing; the dose grid cannot be built", path)
    items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        out = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{keyword} has the malformed value {value!r}", path) from exc
    if (count is not None and out.size != count) or not np.all(np.isfinite(out)):
        raise DicomError(f"{keyword} must hold {count or 'finite'} finite numbers, got {value!r}", path)
    return out


def read_rtdose(path: str | Path, *, offset_tolerance_mm: float = 0.01) -> sitk.Image:
    """Read a DICOM RT Dose file as a float32 image in Gy (units ``Gy``) on its LPS grid.

    * Values = stored pixel values x Dose Grid Scaling (3004,000E) (PS3.3 C.8.8.3); Dose Units must be
      ``GY`` (``RELATIVE`` doses are refused with :class:`~..errors.UnitsError`: they have no Gy value).
    * Geometry: Image Position / Orientation (Patient), Pixel Spacing (row, column), and the Grid Frame
      Offset Vector (3004,000C), PS3.3 C.8.8.3.2: form a (first element 0: offsets along the cross
      product of the row and column directions, relative to Image Position (Patient)) or form b (absolute
      z coordinates; valid only for the orientation 1\\0\\0\\0\\1\\0, and the first must equal the z of
      Image Position (Patient)). Decreasing offsets are re-ordered; spacings must be uniform within
      ``offset_tolerance_mm`` (a SimpleITK image has one slice spacing). A single frame takes the slice
      spacing from Slice Thickness (else 1 mm).
    * Metadata: ``"0020|0052"`` Frame of Reference UID, ``"0020|000d"`` study, ``"0020|000e"`` series,
      ``"0008|0018"`` SOP Instance UID, units ``Gy``, and the Series Description.
    """
    path = Path(path)
    ds = read_rt_dataset(path)
    modality = str(ds.get("Modality", "")).upper()
    if modality != "RTDOSE" and ds.get("SOPClassUID") != RT_DOSE_STORAGE:
        raise DicomError(f"is not an RT Dose (Modality {modality or 'missing'}); give an RT Dose file, or a "
                         "folder for an image series", path)
    units = str(ds.get("DoseUnits", "")).strip().upper()
    if units != "GY":
        raise UnitsError(f"has Dose Units (3004,0002) {units or 'missing'!r}; only GY doses can be used (a RELATIVE "
                         "dose has no absolute value in Gy)", path)
    if "PixelData" not in ds:
        raise DicomError("has no Pixel Data (a DVH-only RT Dose?); there is no dose grid to read", path)
    scaling_raw = ds.get("DoseGridScaling")
    if scaling_raw is None or scaling_raw == "":
        raise DicomError("has no Dose Grid Scaling (3004,000E), which is required with Pixel Data; refusing "
                         "to guess a scale", path)
    scaling = float(scaling_raw)
    if not np.isfinite(scaling) or scaling <= 0:
        raise DicomError(f"has the unusable Dose Grid Scaling {scaling_raw!r}", path)

    orientation = _numbers(ds, "ImageOrientationPatient", path, 6)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or \
            abs(float(row_dir @ col_dir)) > 1e-3:
        raise DicomError(f"Image Orientation (Patient) {orientation.tolist()} is not two orthonormal directions",
                         path)
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    position = _numbers(ds, "ImagePositionPatient", path, 3)
    pixel_spacing = _numbers(ds, "PixelSpacing", path, 2)
    if np.any(pixel_spacing <= 0):
        raise DicomError(f"Pixel Spacing {pixel_spacing.tolist()} must be positive", path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = int(ds.Rows), int(ds.Columns)

    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as exc:  # undecodable or truncated pixel data
        raise DicomError(f"has unreadable pixel data ({type(exc).__name__}: {str(exc)[:150]})", path) from exc
    stored = stored.reshape(frames, rows, columns)

    if frames > 1 or "GridFrameOffsetVector" in ds:
        offsets = _numbers(ds, "GridFrameOffsetVector", path)
        if offsets.size != frames:
            raise DicomError(f"Grid Frame Offset Vector has {offsets.size} values for {frames} frames", path)
        if offsets[0] != 0:  # form b: absolute z coordinates, only for the axial orientation
            if not np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4):
                raise DicomError("Grid Frame Offset Vector does not start at 0 (absolute form b) but the "
                                 "orientation is not 1\\0\\0\\0\\1\\0, for which alone PS3.3 C.8.8.3.2 allows it",
                                 path)
            if abs(offsets[0] - position[2]) > offset_tolerance_mm:
                raise DicomError(f"Grid Frame Offset Vector starts at {offsets[0]:g} mm, neither 0 (relative) nor "
                                 f"the Image Position (Patient) z {position[2]:g} mm (absolute)", path)
            offsets = offsets - offsets[0]
    else:
        offsets = np.zeros(1)
    order = np.argsort(offsets, kind="stable")
    offsets, stored = offsets[order], stored[order]
    if frames > 1:
        gaps = np.diff(offsets)
        if gaps.min() <= offset_tolerance_mm:
            raise DicomError("Grid Frame Offset Vector holds two frames at the same position", path)
        dz = (offsets[-1] - offsets[0]) / (frames - 1)
        deviation = np.abs(offsets - offsets[0] - dz * np.arange(frames)).max()
        if deviation > offset_tolerance_mm:
            raise DicomError(f"Grid Frame Offset Vector is not uniformly spaced (deviation {deviation:.3g} mm "
                             f"> {offset_tolerance_mm:g} mm); resample the dose onto a uniform grid first", path)
    else:
        thickness = ds.get("SliceThickness")
        try:
            dz = float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0
        except (TypeError, ValueError):
            dz = 1.0
    origin = position + offsets[0] * normal

    values = stored.astype(np.float64) * scaling
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), float(dz)))
    image.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel().tolist()))
    set_units(image, Units.GY)
    for key, keyword in ((FRAME_OF_REFERENCE_KEY, "FrameOfReferenceUID"), (STUDY_UID_KEY, "StudyInstanceUID"),
                         (SERIES_UID_KEY, "SeriesInstanceUID"), (SOP_INSTANCE_UID_KEY, "SOPInstanceUID")):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            image.SetMetaData(key, value)
    description = str(ds.get("SeriesDescription", "") or "").strip()
    if description:
        image.SetMetaData(DESCRIPTION_KEY, description)
    return image
