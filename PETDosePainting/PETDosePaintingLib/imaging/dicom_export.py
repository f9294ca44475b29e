"""DICOM writers for synthetic data: PET (Bq/mL, full radiopharmaceutical module), CT (HU) and MR series.

The digital patient and the tests go through the real DICOM path with these writers, so what the reader
(:mod:`.dicom_series`) and the SUV code (:mod:`.suv`) see is what a scanner would send. Each writer:

* takes a 3-D SimpleITK image in LPS (DICOM patient coordinates *are* LPS, PS3.3 C.7.6.2.1.1) and writes
  one single-frame file per slice, Explicit VR Little Endian, with Image Position/Orientation (Patient),
  Pixel Spacing and Slice Thickness consistent with the image geometry (a left-handed direction matrix is
  written as the equivalent right-handed grid, k axis reversed);
* writes into a folder that must be new or empty, atomically (a temporary sibling folder, renamed at the
  end), with UIDs derived deterministically from the :class:`DicomIdentity` so output is reproducible;
* returns the written paths, the UIDs, and the exact image the DICOM represents after quantisation to
  16-bit integers (plus the worst quantisation error relative to the slice maximum).

Modules written (PS3.3): Patient, General Study, Patient Study, General Series, Frame of Reference, General
Equipment, General Image, Image Plane, Image Pixel, SOP Common, and per modality PET Series + PET Isotope +
NM/PET Patient Orientation + PET Image (A.21), CT Image (A.3), MR Image (A.4). The images are marked
``DERIVED`` and the equipment ``PETDosePainting`` since they are synthetic.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from .. import __version__
from ..errors import InputError, OutputError
from .image import Units, image_from_array, require_finite, require_units
from .suv import F18_HALF_LIFE_S, decay_factor

PET_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.128")
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
_UID_NAMESPACE = uuid.UUID("6f1c3c52-7a0e-4d55-9a57-3c2d0b1c9e11")  # fixed: UIDs are reproducible


def uid_from(*parts: object) -> str:
    """A deterministic DICOM UID ``2.25.<UUID as integer>`` (PS3.5 B.2) from name-based UUID v5 of ``parts``."""
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "/".join(str(p) for p in parts)).int)


def _ds(value: float) -> str:
    """A DS (decimal string, at most 16 characters) of ``value``; :func:`_ds_float` gives the value it stands for."""
    return format_number_as_ds(float(value))


def _ds_float(value: float) -> float:
    return float(_ds(value))


@dataclass(frozen=True)
class DicomIdentity:
    """Patient, study and frame-of-reference identity shared by the series of one (synthetic or read) study.

    Attribute names follow PS3.3 Patient Module (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2)
    and Frame of Reference (C.7.4.1). Weight (kg) and size (m) go to Patient's Weight / Patient's Size
    and are needed for PET (SUV). :meth:`synthetic` makes one with UIDs derived from a seed.
    """

    patient_id: str = "PETDP-0"
    patient_name: str = "Digital^Patient"
    patient_sex: str = ""  #: M, F, O or empty
    patient_birth_date: str = ""  #: YYYYMMDD or empty
    patient_weight_kg: float | None = None
    patient_size_m: float | None = None
    study_instance_uid: str = ""
    study_date: str = ""  #: YYYYMMDD
    study_time: str = ""  #: HHMMSS
    study_description: str = ""
    study_id: str = ""
    accession_number: str = ""
    frame_of_reference_uid: str = ""

    @classmethod
    def synthetic(cls, seed: int | str = 0, **fields: object) -> DicomIdentity:
        """An identity whose study and frame-of-reference UIDs are derived from ``seed`` (reproducible output).

        Defaults: patient ``PETDP-<seed>``, ``Digital^Patient``, study on 2024-01-15 at 09:00; any field can be
        given as a keyword.
        """
        base = cls(
            patient_id=f"PETDP-{seed}",
            study_instance_uid=uid_from("study", seed),
            frame_of_reference_uid=uid_from("frame-of-reference", seed),
            study_date="20240115",
            study_time="090000",
            study_id="1",
            study_description="PETDosePainting digital patient (synthetic)",
        )
        return replace(base, **fields)  # type: ignore[arg-type]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DicomIdentity:
        """The identity recorded in a dataset (empty strings / ``None`` for absent attributes)."""

        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        def number(keyword: str) -> float | None:
            value = ds.get(keyword)
            try:
                number = float(value) if value not in (None, "") else None
            except (TypeError, ValueError):
                return None
            return number if number else None

        return cls(
            patient_id=text("PatientID"), patient_name=text("PatientName"), patient_sex=text("PatientSex"),
            patient_birth_date=text("PatientBirthDate"), patient_weight_kg=number("PatientWeight"),
            patient_size_m=number("PatientSize"), study_instance_uid=text("StudyInstanceUID"),
            study_date=text("StudyDate"), study_time=text("StudyTime"), study_description=text("StudyDescription"),
            study_id=text("StudyID"), accession_number=text("AccessionNumber"),
            frame_of_reference_uid=text("FrameOfReferenceUID"),
        )

    def uid(self, *parts: object) -> str:
        """A UID derived from the study UID and ``parts`` (series and instance UIDs of the writers)."""
        return uid_from(self.study_instance_uid, *parts)

    def validate(self) -> None:
        """Raise :class:`InputError` if a UID is missing or malformed, or a coded value is invalid."""
        for name in ("study_instance_uid", "frame_of_reference_uid"):
            value = getattr(self, name)
            if not value or not UID(value).is_valid:
                raise InputError(f"DicomIdentity.{name} {value!r} is not a valid DICOM UID "
                                 "(use DicomIdentity.synthetic(seed) to make one)")
        if self.patient_sex not in ("", "M", "F", "O"):
            raise InputError(f"DicomIdentity.patient_sex must be M, F, O or empty, got {self.patient_sex!r}")
        if not self.patient_id:
            raise InputError("DicomIdentity.patient_id is empty")


@dataclass(frozen=True)
class PetAcquisition:
    """The acquisition a synthetic PET series claims (PS3.3 C.8.9.1 PET Series, C.8.9.2 PET Isotope).

    The tracer is fluorine-18 (half-life :data:`~.suv.F18_HALF_LIFE_S` s); the image is attenuation- and
    decay-corrected to the scan start (Decay Correction START). ``injected_dose_bq`` is the activity at
    ``injection_datetime`` (Radionuclide Total Dose at Radiopharmaceutical Start DateTime); ``scan_datetime``
    is the Series and Acquisition Date/Time. Defaults: 350 MBq FDG, 60 min uptake, one 180 s frame.
    """

    injected_dose_bq: float = 350e6
    injection_datetime: _dt.datetime = _dt.datetime(2024, 1, 15, 9, 0, 0)
    scan_datetime: _dt.datetime = _dt.datetime(2024, 1, 15, 10, 0, 0)
    frame_duration_s: float = 180.0
    radiopharmaceutical: str = "Fluorodeoxyglucose F^18^"
    corrected_image: tuple[str, ...] = ("DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM")


@dataclass(frozen=True, eq=False)
class DicomExportResult:
    """What a writer wrote: paths and UIDs in slice order, and the exact image the files represent."""

    out_dir: Path
    paths: tuple[Path, ...]  #: one file per slice, in the k order of :attr:`image`
    modality: str
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]  #: in the k order of :attr:`image`
    image: sitk.Image  #: the values the files hold after quantisation, right-handed grid, with units
    rescale_slopes: tuple[float, ...]  #: Rescale Slope of each slice as written
    quantisation_error_rel: float  #: max |written - given| / max |slice| over slices (0 if exact)


@dataclass(frozen=True, eq=False)
class PetExportResult(DicomExportResult):
    """:class:`DicomExportResult` of a PET series, with the SUVbw the series represents."""

    suv_image: sitk.Image  #: SUVbw of the written values (float32), what a QIBA reader gets back
    suv_factor: float  #: SUVbw per Bq/mL = weight (g) / decayed dose, from the written header values
    decay_time_s: float  #: scan - injection, s
    decayed_dose_bq: float  #: injected dose decayed to the scan time, Bq


# --------------------------------------------------------------------------------------------------------------
# Geometry and quantisation
# --------------------------------------------------------------------------------------------------------------

def _right_handed(image: sitk.Image) -> sitk.Image:
    """The same voxels on a grid whose k axis is the slice normal (cross product of the i and j axes)."""
    if image.GetDimension() != 3:
        raise InputError(f"a 3-D image is needed for a DICOM series, got {image.GetDimension()}-D")
    direction = np.reshape(image.GetDirection(), (3, 3))
    if np.linalg.det(direction) > 0:
        return image
    array = sitk.GetArrayFromImage(image)[::-1]
    last = image.TransformIndexToPhysicalPoint((0, 0, image.GetSize()[2] - 1))
    direction = direction.copy()
    direction[:, 2] *= -1.0
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(last)
    out.SetDirection(tuple(direction.ravel()))
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def _quantise(values: np.ndarray, per_slice: bool) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """16-bit stored values and Rescale Slopes (DS-exact) using the full integer range.

    Unsigned when no value is negative (0..65535), else signed (-32767..32767); one slope per slice or one
    for the series. Returns (stored [k,j,i], slopes per slice, signed, max error relative to slice max).
    """
    signed = bool(np.any(values < 0))
    top = 32767 if signed else 65535
    peak = np.abs(values).reshape(values.shape[0], -1).max(axis=1)
    if not per_slice:
        peak = np.full_like(peak, peak.max())
    slopes = np.array([_ds_float(p / top) if p > 0 else 1.0 for p in peak])
    stored = np.clip(np.rint(values / slopes[:, None, None]), -top if signed else 0, top)
    rel = _relative_error(stored * slopes[:, None, None], values)
    return stored.astype(np.int16 if signed else np.uint16), slopes, signed, rel


# --------------------------------------------------------------------------------------------------------------
# Dataset building and atomic folder writing
# --------------------------------------------------------------------------------------------------------------

def _da(when: _dt.datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: _dt.datetime) -> str:
    return when.strftime("%H%M%S.%f")


def _dt_str(when: _dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S.%f")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _new_output_dir(out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError("must be a new or empty folder for a DICOM series", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    return out, tmp


def _finish_output_dir(tmp: Path, out: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp creates 0700
    try:
        os.replace(tmp, out)  # atomic; allowed over an empty folder
    except OSError as exc:
        raise OutputError(f"cannot move the written series into place ({exc})", out) from exc


def _write_series(
    image: sitk.Image,
    *,
    stored: np.ndarray,
    slopes: np.ndarray,
    intercept: float,
    signed: bool,
    out_dir: str | Path,
    identity: DicomIdentity,
    modality: str,
    sop_class: UID,
    series_number: int,
    series_description: str,
    series_datetime: _dt.datetime | None,
    specialise: Callable[[Dataset, int], None],
) -> tuple[Path, tuple[Path, ...], str, tuple[str, ...]]:
    identity.validate()
    size = image.GetSize()
    spacing = image.GetSpacing()
    direction = np.reshape(image.GetDirection(), (3, 3))
    orientation = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    normal = direction[:, 2]
    series_uid = identity.uid("series", modality, series_number)
    sop_uids = tuple(identity.uid("instance", modality, series_number, k) for k in range(size[2]))
    out, tmp = _new_output_dir(out_dir)
    paths = []
    try:
        for k in range(size[2]):
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uids[k]
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = f"PETDP_{__version__}"[:16]
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uids[k]
            # Patient (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2)
            ds.PatientName = identity.patient_name
            ds.PatientID = identity.patient_id
            ds.PatientBirthDate = identity.patient_birth_date
            ds.PatientSex = identity.patient_sex
            if identity.patient_weight_kg is not None:
                ds.PatientWeight = _ds(identity.patient_weight_kg)
            if identity.patient_size_m is not None:
                ds.PatientSize = _ds(identity.patient_size_m)
            ds.StudyInstanceUID = identity.study_instance_uid
            ds.StudyDate = identity.study_date
            ds.StudyTime = identity.study_time
            ds.ReferringPhysicianName = ""
            ds.StudyID = identity.study_id
            ds.AccessionNumber = identity.accession_number
            if identity.study_description:
                ds.StudyDescription = identity.study_description
            # General Series (C.7.3.1), Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)
            ds.Modality = modality
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description
            ds.PatientPosition = "HFS"
            if series_datetime is not None:
                ds.SeriesDate = _da(series_datetime)
                ds.SeriesTime = _tm(series_datetime)
                ds.AcquisitionDate = ds.ContentDate = _da(series_datetime)
                ds.AcquisitionTime = ds.ContentTime = _tm(series_datetime)
            ds.FrameOfReferenceUID = identity.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            ds.Manufacturer = "PETDosePainting"
            ds.ManufacturerModelName = "digital patient (synthetic)"
            ds.SoftwareVersions = __version__
            # General Image (C.7.6.1), Image Plane (C.7.6.2), Image Pixel (C.7.6.3)
            ds.InstanceNumber = k + 1
            ds.ImageType = ["DERIVED", "PRIMARY"]
            ds.ImageOrientationPatient = orientation
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (j), column spacing (i)
            ds.SliceThickness = _ds(spacing[2])
            ds.SliceLocation = _ds(float(np.dot(position, normal)))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = size[1]
            ds.Columns = size[0]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slopes[k])
            specialise(ds, k)
            ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(stored[k]).astype("<i2" if signed else "<u2").tobytes())
            path = tmp / f"{modality}{k + 1:04d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(out / path.name)
        _finish_output_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out, tuple(paths), series_uid, sop_uids


def _written_image(stored: np.ndarray, slopes: np.ndarray, intercept: float, reference: sitk.Image,
                   units: str) -> sitk.Image:
    values = stored.astype(np.float64) * slopes[:, None, None] + intercept
    return image_from_array(values.astype(np.float32), reference, units=units)


# --------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------

def write_pet_series(
    image: sitk.Image,
    out_dir: str | Path,
    identity: DicomIdentity,
    acquisition: PetAcquisition | None = None,
    *,
    series_number: int = 3,
    series_description: str = "PET AC (synthetic)",
) -> PetExportResult:
    """Write a PET series (PET Image Storage, Units BQML, Decay Correction START) from Bq/mL or SUVbw.

    ``image`` has units ``Bq/mL`` (activity concentration decay-corrected to the scan start) or ``SUVbw``
    (converted to Bq/mL with the factor below). ``identity.patient_weight_kg`` is required. Per-slice 16-bit
    pixel data use the full range with a per-slice Rescale Slope (Rescale Intercept 0, as PS3.3 C.8.9.4.1.2
    requires for PET). The radiopharmaceutical module holds Radiopharmaceutical, Radionuclide Code Sequence
    (SCT 77004003 ^18^Fluorine), Radionuclide Total Dose, Half Life, Positron Fraction, Start DateTime and
    Start Time.

    The SUVbw factor is weight (g) / (dose x 2^(-(scan - injection) / half-life)) computed from the values
    *as written* (decimal strings), so :attr:`PetExportResult.suv_image` is exactly what a reader following
    QIBA gets back (up to float32 rounding).
    """
    acquisition = acquisition or PetAcquisition()
    units = require_units(image, {Units.BQML, Units.SUV_BW}, "PET image for DICOM export")
    require_finite(image, "PET image for DICOM export")
    if identity.patient_weight_kg is None or not identity.patient_weight_kg > 0:
        raise InputError("DicomIdentity.patient_weight_kg is needed for a PET series (SUV normalisation)")
    if not acquisition.injected_dose_bq > 0:
        raise InputError(f"PetAcquisition.injected_dose_bq must be positive, got {acquisition.injected_dose_bq!r}")
    elapsed = (acquisition.scan_datetime - acquisition.injection_datetime).total_seconds()
    if elapsed < 0:
        raise InputError("PetAcquisition.scan_datetime is before injection_datetime")
    if not acquisition.frame_duration_s > 0:
        raise InputError("PetAcquisition.frame_duration_s must be positive")
    grid = _right_handed(image)

    weight_g = _ds_float(identity.patient_weight_kg) * 1000.0
    dose = _ds_float(acquisition.injected_dose_bq)
    half_life = _ds_float(F18_HALF_LIFE_S)
    decayed = dose * decay_factor(elapsed, half_life)
    suv_factor = weight_g / decayed

    values = sitk.GetArrayFromImage(grid).astype(np.float64)
    if units == Units.SUV_BW:
        values = values / suv_factor
    stored, slopes, signed, rel_err = _quantise(values, per_slice=True)

    lam = math.log(2.0) / half_life
    duration = float(acquisition.frame_duration_s)
    in_frame = lam * duration / (1.0 - math.exp(-lam * duration))  # decay during the frame (PS3.3 C.8.9.4.1.5)
    frame_reference_ms = math.log(in_frame) / lam * 1000.0  # time of the average count rate within the frame

    isotope = Dataset()
    isotope.Radiopharmaceutical = acquisition.radiopharmaceutical
    isotope.RadiopharmaceuticalStartTime = _tm(acquisition.injection_datetime)
    isotope.RadiopharmaceuticalStartDateTime = _dt_str(acquisition.injection_datetime)
    isotope.RadionuclideTotalDose = _ds(dose)
    isotope.RadionuclideHalfLife = _ds(half_life)
    isotope.RadionuclidePositronFraction = "0.9673"
    isotope.RadionuclideCodeSequence = Sequence([_code("77004003", "SCT", "^18^Fluorine")])
    if acquisition.radiopharmaceutical == "Fluorodeoxyglucose F^18^":
        isotope.RadiopharmaceuticalCodeSequence = Sequence([_code("35321007", "SCT", "Fluorodeoxyglucose F^18^")])

    def specialise(ds: Dataset, k: int) -> None:
        # PET Series (C.8.9.1)
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.CorrectedImage = list(acquisition.corrected_image)
        ds.DecayCorrection = "START"
        ds.NumberOfSlices = grid.GetSize()[2]
        ds.CollimatorType = "NONE"
        # PET Isotope (C.8.9.2), NM/PET Patient Orientation (C.8.4.6)
        ds.RadiopharmaceuticalInformationSequence = Sequence([isotope])
        ds.PatientOrientationCodeSequence = Sequence([])
        ds.PatientGantryRelationshipCodeSequence = Sequence([])
        # PET Image (C.8.9.4)
        ds.ImageIndex = k + 1
        ds.FrameReferenceTime = _ds(frame_reference_ms)
        ds.ActualFrameDuration = round(duration * 1000.0)
        ds.DecayFactor = _ds(in_frame)

    out, paths, series_uid, sop_uids = _write_series(
        grid, stored=stored, slopes=slopes, intercept=0.0, signed=signed, out_dir=out_dir, identity=identity,
        modality="PT", sop_class=PET_IMAGE_STORAGE, series_number=series_number,
        series_description=series_description, series_datetime=acquisition.scan_datetime, specialise=specialise)
    written = _written_image(stored, slopes, 0.0, grid, Units.BQML)
    suv = stored.astype(np.float64) * slopes[:, None, None] * suv_factor
    suv_image = image_from_array(suv.astype(np.float32), grid, units=Units.SUV_BW)
    return PetExportResult(
        out_dir=out, paths=paths, modality="PT", sop_class_uid=str(PET_IMAGE_STORAGE), series_instance_uid=series_uid,
        sop_instance_uids=sop_uids, image=written, rescale_slopes=tuple(float(s) for s in slopes),
        quantisation_error_rel=rel_err, suv_image=suv_image, suv_factor=suv_factor, decay_time_s=elapsed,
        decayed_dose_bq=decayed,
    )


def write_ct_series(
    image: sitk.Image,
    out_dir: str | Path,
    identity: DicomIdentity,
    *,
    series_number: int = 2,
    series_description: str = "CT (synthetic)",
    series_datetime: _dt.datetime | None = None,
    kvp: float = 120.0,
) -> DicomExportResult:
    """Write a CT series (CT Image Storage) from an image in HU; values are rounded to integer HU.

    Stored as signed 16-bit with Rescale Slope 1, Rescale Intercept 0, Rescale Type HU (PS3.3 C.8.2.1), so
    integer HU round-trip exactly; values outside -32768..32767 HU are refused. ``series_datetime`` defaults
    to the study date and time of ``identity``.
    """
    require_units(image, {Units.HU}, "CT image for DICOM export")
    require_finite(image, "CT image for DICOM export")
    grid = _right_handed(image)
    values = np.rint(sitk.GetArrayFromImage(grid).astype(np.float64))
    if values.min() < -32768 or values.max() > 32767:
        raise InputError(f"CT values {values.min():g}..{values.max():g} HU do not fit 16-bit signed DICOM pixels")
    stored = values.astype(np.int16)
    slopes = np.ones(values.shape[0])
    rel_err = _relative_error(values, sitk.GetArrayFromImage(grid).astype(np.float64))

    def specialise(ds: Dataset, k: int) -> None:  # CT Image (C.8.2.1)
        ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]
        ds.RescaleType = "HU"
        ds.KVP = _ds(kvp)
        ds.AcquisitionNumber = 1

    out, paths, series_uid, sop_uids = _write_series(
        grid, stored=stored, slopes=slopes, intercept=0.0, signed=True, out_dir=out_dir, identity=identity,
        modality="CT", sop_class=CT_IMAGE_STORAGE, series_number=series_number,
        series_description=series_description, series_datetime=series_datetime or _study_datetime(identity),
        specialise=specialise)
    written = image_from_array(stored, grid, units=Units.HU)
    return DicomExportResult(
        out_dir=out, paths=paths, modality="CT", sop_class_uid=str(CT_IMAGE_STORAGE), series_instance_uid=series_uid,
        sop_instance_uids=sop_uids, image=written, rescale_slopes=tuple(slopes.tolist()),
        quantisation_error_rel=rel_err)


def write_mr_series(
    image: sitk.Image,
    out_dir: str | Path,
    identity: DicomIdentity,
    *,
    series_number: int = 4,
    series_description: str = "MR (synthetic)",
    series_datetime: _dt.datetime | None = None,
    scanning_sequence: str = "RM",
    echo_time_ms: float | None = None,
    repetition_time_ms: float | None = None,
    magnetic_field_strength_t: float | None = None,
) -> DicomExportResult:
    """Write an MR series (MR Image Storage) from any image (intensities are arbitrary units).

    Integer images that fit 16 bits are stored exactly (Rescale Slope 1); others use the full 16-bit range
    with one Rescale Slope for the whole series (so relative intensities between slices are kept). The MR
    Image IOD has no Modality LUT module: the Rescale Slope/Intercept are standard attributes added as in a
    Standard Extended SOP Class (common vendor practice; SimpleITK/GDCM and pydicom readers apply them).
    ``scanning_sequence`` defaults to ``RM`` (research mode, PS3.3 C.8.3.1) since the image is synthetic.
    """
    require_finite(image, "MR image for DICOM export")
    grid = _right_handed(image)
    values = sitk.GetArrayFromImage(grid).astype(np.float64)
    integer = bool(np.all(values == np.rint(values)))
    if integer and values.min() >= -32768 and values.max() <= 65535 and (values.min() >= 0 or values.max() <= 32767):
        signed = bool(values.min() < 0)
        stored = values.astype(np.int16 if signed else np.uint16)
        slopes, rel_err = np.ones(values.shape[0]), 0.0
    else:
        stored, slopes, signed, rel_err = _quantise(values, per_slice=False)

    def specialise(ds: Dataset, k: int) -> None:  # MR Image (C.8.3.1)
        ds.ScanningSequence = scanning_sequence
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "" if repetition_time_ms is None else _ds(repetition_time_ms)
        ds.EchoTime = "" if echo_time_ms is None else _ds(echo_time_ms)
        ds.EchoTrainLength = ""
        ds.ImagedNucleus = "1H"
        if magnetic_field_strength_t is not None:
            ds.MagneticFieldStrength = _ds(magnetic_field_strength_t)
        ds.SpacingBetweenSlices = _ds(grid.GetSpacing()[2])
        ds.AcquisitionNumber = 1

    out, paths, series_uid, sop_uids = _write_series(
        grid, stored=stored, slopes=slopes, intercept=0.0, signed=signed, out_dir=out_dir, identity=identity,
        modality="MR", sop_class=MR_IMAGE_STORAGE, series_number=series_number,
        series_description=series_description, series_datetime=series_datetime or _study_datetime(identity),
        specialise=specialise)
    written = _written_image(stored, slopes, 0.0, grid, Units.ARBITRARY)
    return DicomExportResult(
        out_dir=out, paths=paths, modality="MR", sop_class_uid=str(MR_IMAGE_STORAGE), series_instance_uid=series_uid,
        sop_instance_uids=sop_uids, image=written, rescale_slopes=tuple(float(s) for s in slopes),
        quantisation_error_rel=rel_err)


def _relative_error(written: np.ndarray, given: np.ndarray) -> float:
    peak = np.abs(given).reshape(given.shape[0], -1).max(axis=1)
    err = np.abs(written - given).reshape(given.shape[0], -1).max(axis=1)
    return float(np.max(np.where(peak > 0, err / np.where(peak > 0, peak, 1.0), 0.0)))


def _study_datetime(identity: DicomIdentity) -> _dt.datetime | None:
    if not identity.study_date:
        return None
    try:
        day = _dt.datetime.strptime(identity.study_date, "%Y%m%d")
        if identity.study_time:
            clock = _dt.datetime.strptime(identity.study_time.split(".")[0].ljust(6, "0"), "%H%M%S")
            day = day.replace(hour=clock.hour, minute=clock.minute, second=clock.second)
    except ValueError as exc:
        raise InputError(f"DicomIdentity study date/time {identity.study_date!r} {identity.study_time!r} "
                         "are not DICOM DA/TM values") from exc
    return day
