"""Standardised uptake value (SUV) scale factors from PET DICOM header values (pure, no file I/O).

The rules follow the QIBA vendor-neutral SUV pseudo-code ("Standardized Uptake Value (SUV)", QIBA FDG-PET
technical committee wiki, the pseudo-code reproduced by the MIT-licensed reference implementation
cornerstonejs/calculate-suv) with the DICOM attributes of PS3.3 C.8.9.1 *PET Series Module*, C.8.9.2
*PET Isotope Module* (Radiopharmaceutical Information Sequence) and C.8.9.4 *PET Image Module*:

* **Units** (0054,1001): ``BQML`` -> factor = normaliser / decayed dose; ``CNTS`` -> the Philips private
  SUV Scale Factor (7053,1000), or when it is absent or zero the Philips Activity Concentration Scale Factor
  (7053,1009) times the BQML factor; ``GML`` -> the image is already SUVbw (factor 1). Any other unit is
  refused. Philips private tags are ignored for BQML images.
* **Corrected Image** (0028,0051) must contain ``ATTN`` and ``DECY`` (else refused unless explicitly
  allowed); **Decay Correction** (0054,1102) ``START`` decays the dose from the radiopharmaceutical start to
  the scan reference time; ``ADMIN`` means the image is already decay-corrected to the administration time,
  so the dose is not decayed (QIBA covers START only; ADMIN follows the meaning PS3.3 gives the term).
* **Scan reference time**: Series Date/Time if it is not after the earliest Acquisition Date/Time of the
  series; otherwise (a post-processed series) the GE private scan date-time (0009,xx0d, creator
  ``GEMS_PETD_01``) when present, else the earliest Acquisition Date/Time. The QIBA alternative of
  back-computing from Frame Reference Time is not used (neither does the reference implementation).
* **Injection time**: Radiopharmaceutical Start DateTime (0018,1078); if absent, Radiopharmaceutical Start
  Time (0018,1072) on the Series Date, moved to the previous day when that puts the injection after the
  scan (acquisition after midnight, QIBA "consider spanning midnight").
* **Decayed dose** = Radionuclide Total Dose (0018,1074) x 2^(-decay time / Radionuclide Half Life
  (0018,1075)); a negative decay time is an error.

Normalisers: body weight (g), lean body mass (James 1976 with the QIBA/Sugawara coefficients, or
Janmahasatian 2005), body surface area (DuBois & DuBois 1916, cm2). SUV = rescaled pixel value x factor.

Nothing is guessed: every missing, implausible or contradictory value raises :class:`DicomError` naming
the attribute (keyword and tag) and the file; user overrides are recorded in the result.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom.datadict

from ..errors import DicomError, InputError, ProcessingError
from .image import Units

#: SUV kinds accepted by :func:`compute_suv` and the units of the resulting image.
SUV_KINDS: dict[str, str] = {
    "bw": Units.SUV_BW,
    "lbm": Units.SUV_LBM,
    "lbm-janma": Units.SUV_LBM_JANMA,
    "bsa": Units.SUV_BSA,
}

#: (a, b) of the James lean-body-mass formula LBM = a W - b (W/H)^2 (W kg, H cm), as used by QIBA,
#: Sugawara et al. (Radiology 1999) and the reference suite. James (1976) printed b = 128 for men.
JAMES_MALE_QIBA: tuple[float, float] = (1.10, 120.0)
JAMES_FEMALE_QIBA: tuple[float, float] = (1.07, 148.0)

#: Half-life of fluorine-18 used by DICOM vendors (109.77 min, NIST), s.
F18_HALF_LIFE_S = 6586.2
_F18_CODES = {"77004003", "C-111A1"}

#: Plausibility limits (refuse rather than guess): weights above this are likely grams or pounds, kg.
MAX_PLAUSIBLE_WEIGHT_KG = 650.0
#: Patient Size (0010,1020) is in metres; values above this are likely centimetres, m.
MAX_PLAUSIBLE_HEIGHT_M = 3.0

_KEYWORD_TAGS = {
    "Units": "(0054,1001)",
    "CorrectedImage": "(0028,0051)",
    "DecayCorrection": "(0054,1102)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionDate": "(0008,0022)",
    "AcquisitionTime": "(0008,0032)",
    "AcquisitionDateTime": "(0008,002A)",
    "PatientWeight": "(0010,1030)",
    "PatientSize": "(0010,1020)",
    "PatientSex": "(0010,0040)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "RadionuclideCodeSequence": "(0054,0300)",
    "SUVScaleFactor": "(7053,1000)",
    "ActivityConcentrationScaleFactor": "(7053,1009)",
    "GEPrivatePostInjectionDateTime": "(0009,100d) GEMS_PETD_01",
}


def tag_label(keyword: str) -> str:
    """``"Keyword (gggg,eeee)"`` for messages, e.g. ``PatientWeight (0010,1030)``.

    Standard keywords come from pydicom's data dictionary; the vendor private tags used for SUV from
    :data:`_KEYWORD_TAGS`; anything else is returned as given.
    """
    tag = _KEYWORD_TAGS.get(keyword)
    if tag is None:
        number = pydicom.datadict.tag_for_keyword(keyword)
        tag = None if number is None else f"({number >> 16:04X},{number & 0xFFFF:04X})"
    return f"{keyword} {tag}" if tag else keyword


# --------------------------------------------------------------------------------------------------------------
# Body-size formulas
# --------------------------------------------------------------------------------------------------------------

def _check_sex(sex: str | None, what: str = "sex") -> str:
    norm = None if sex is None else str(sex).strip().upper()[:1]
    if norm not in ("M", "F"):
        raise InputError(f"{what} must be 'M' or 'F' for the lean-body-mass formulas, got {sex!r}")
    return norm


def lbm_james_kg(
    weight_kg: float,
    height_m: float,
    sex: str,
    *,
    male: tuple[float, float] = JAMES_MALE_QIBA,
    female: tuple[float, float] = JAMES_FEMALE_QIBA,
) -> float:
    """Lean body mass (kg) by the James formula: LBM = a W - b (W / H)^2, W in kg, H in **cm**.

    Source: James WPT, *Research on obesity*, HMSO 1976, as used for SUVlbm by QIBA and Sugawara et al.
    (Radiology 1999;213:521). Defaults ``male=(1.10, 120)``, ``female=(1.07, 148)`` are the QIBA/Sugawara
    coefficients, which the reference suite uses; James' original publication gives 128 instead of 120
    for men — pass ``male=(1.10, 128.0)`` to reproduce it. The formula is known to fail for obese patients
    (it decreases with weight above W = a H^2 / 2b and becomes negative); a non-positive result raises
    :class:`InputError`.
    """
    a, b = male if _check_sex(sex) == "M" else female
    w, h_cm = float(weight_kg), float(height_m) * 100.0
    lbm = a * w - b * (w / h_cm) ** 2
    if not lbm > 0:
        raise InputError(f"the James formula gives a non-positive lean body mass ({lbm:.1f} kg) for "
                         f"{w:g} kg and {height_m:g} m; use the Janmahasatian formula (kind 'lbm-janma')")
    return lbm


def lbm_janmahasatian_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg) by Janmahasatian et al., Clin Pharmacokinet 2005;44:1051.

    Men: 9270 W / (6680 + 216 BMI); women: 9270 W / (8780 + 244 BMI); W in kg, BMI = W / H^2 (kg/m2).
    Implemented as published, no deviation.
    """
    w, h = float(weight_kg), float(height_m)
    bmi = w / (h * h)
    if _check_sex(sex) == "M":
        return 9270.0 * w / (6680.0 + 216.0 * bmi)
    return 9270.0 * w / (8780.0 + 244.0 * bmi)


def bsa_dubois_cm2(weight_kg: float, height_m: float) -> float:
    """Body surface area (cm2) by DuBois & DuBois (Arch Intern Med 1916;17:863): 71.84 W^0.425 H^0.725.

    W in kg, H in cm; the constant 71.84 gives cm2 (0.007184 gives m2). Implemented as published.
    """
    return 71.84 * float(weight_kg) ** 0.425 * (float(height_m) * 100.0) ** 0.725


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """Fraction of the activity left after ``elapsed_s`` seconds: 2^(-t / T1/2)."""
    return 2.0 ** (-float(elapsed_s) / float(half_life_s))


# --------------------------------------------------------------------------------------------------------------
# DICOM value parsing (DA, TM, DT, DS, CS)
# --------------------------------------------------------------------------------------------------------------

_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(?:\.(\d{1,6}))?$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    text = str(value).replace("\x00", "").strip()
    return text or None


def _bad(keyword: str, value: Any, where: str, expected: str) -> DicomError:
    return DicomError(f"{tag_label(keyword)} has the malformed value {value!r} (expected {expected})", where)


def parse_da(value: Any, keyword: str = "date", where: str | None = None) -> _dt.date | None:
    """A DICOM DA value (``YYYYMMDD``; ACR-NEMA ``YYYY.MM.DD`` accepted) as a date, ``None`` if empty."""
    text = _text(value)
    if text is None:
        return None
    match = _DA_RE.match(text)
    try:
        if match is None:
            raise ValueError
        return _dt.date(*(int(g) for g in match.groups()))
    except ValueError:
        raise _bad(keyword, value, where, "a DA date YYYYMMDD") from None


def parse_tm(value: Any, keyword: str = "time", where: str | None = None) -> _dt.time | None:
    """A DICOM TM value (``HH[MM[SS[.FFFFFF]]]``; ACR-NEMA ``HH:MM:SS`` accepted) as a time, ``None`` if empty."""
    text = _text(value)
    if text is None:
        return None
    match = _TM_RE.match(text)
    try:
        if match is None:
            raise ValueError
        hh, mm, ss, frac = match.groups()
        micro = int((frac or "0").ljust(6, "0"))
        return _dt.time(int(hh), int(mm or 0), int(ss or 0), micro)
    except ValueError:
        raise _bad(keyword, value, where, "a TM time HHMMSS.FFFFFF") from None


def parse_dt(value: Any, keyword: str = "date-time", where: str | None = None) -> tuple[_dt.datetime, str] | None:
    """A DICOM DT value (``YYYYMMDDHHMM[SS[.FFFFFF]][&ZZXX]``) as (naive local datetime, UTC offset or "").

    A date-time without hour and minute cannot time a decay and is refused as malformed. The UTC offset
    suffix, if any, is returned separately (the caller records that it was not applied).
    """
    text = _text(value)
    if text is None:
        return None
    match = _DT_RE.match(text)
    try:
        if match is None:
            raise ValueError
        y, mo, d, hh, mi, ss, frac, offset = match.groups()
        micro = int((frac or "0").ljust(6, "0"))
        return _dt.datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), micro), offset or ""
    except ValueError:
        raise _bad(keyword, value, where, "a DT date-time YYYYMMDDHHMMSS.FFFFFF") from None


def _number(value: Any, keyword: str, where: str) -> float | None:
    text = _text(value) if not isinstance(value, (int, float)) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif text is None:
        return None
    else:
        try:
            number = float(text)
        except ValueError:
            raise _bad(keyword, value, where, "a number") from None
    if not math.isfinite(number):
        raise _bad(keyword, value, where, "a finite number")
    return number


def _code_string_list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        text = _text(value)
        return None if text is None else tuple(v.strip().upper() for v in text.split("\\") if v.strip())
    return tuple(str(v).strip().upper() for v in value if str(v).strip())


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuvInputs:
    """The SUV-relevant header values of one PET series, parsed (one entry per instance where per-instance).

    Build it with :func:`suv_inputs_from_datasets` (pydicom datasets) or :func:`suv_inputs_from_mapping`
    (values keyed by DICOM keyword, as in the reference cases). Series-level values are checked to agree
    between instances. ``None`` means the attribute is absent or empty; :func:`compute_suv` decides whether
    it is needed. Dates and times are naive local times as DICOM stores them.
    """

    source: str  #: the series (directory or file) for messages
    instance_sources: tuple[str, ...]  #: the file (or ``source[i]``) of each instance, in the given order
    units: str | None  #: Units (0054,1001): BQML, CNTS, GML...
    corrected_image: tuple[str, ...] | None  #: Corrected Image (0028,0051) values
    decay_correction: str | None  #: Decay Correction (0054,1102): START, ADMIN, NONE
    series_date: _dt.date | None  #: Series Date (0008,0021)
    series_time: _dt.time | None  #: Series Time (0008,0031)
    acquisition_datetimes: tuple[_dt.datetime | None, ...]  #: Acquisition Date + Time (0008,0022/0032) per instance
    radiopharmaceutical_start_datetime: _dt.datetime | None  #: (0018,1078)
    radiopharmaceutical_start_time: _dt.time | None  #: (0018,1072)
    ge_post_injection_datetime: _dt.datetime | None  #: GE private scan date-time (0009,xx0d, GEMS_PETD_01)
    patient_weight_kg: float | None  #: Patient's Weight (0010,1030), kg
    patient_size_m: float | None  #: Patient's Size (0010,1020), m
    patient_sex: str | None  #: Patient's Sex (0010,0040)
    total_dose_bq: float | None  #: Radionuclide Total Dose (0018,1074), Bq at the start time
    half_life_s: float | None  #: Radionuclide Half Life (0018,1075), s
    radionuclide: str | None = None  #: Radionuclide Code Sequence code value or meaning
    philips_suv_scale_factors: tuple[float | None, ...] = ()  #: (7053,1000) per instance
    philips_activity_concentration_scale_factors: tuple[float | None, ...] = ()  #: (7053,1009) per instance
    notes: tuple[str, ...] = ()  #: things noticed while parsing (e.g. a UTC offset not applied)

    @property
    def series_datetime(self) -> _dt.datetime | None:
        """Series Date + Series Time, or ``None`` if either is missing."""
        if self.series_date is None or self.series_time is None:
            return None
        return _dt.datetime.combine(self.series_date, self.series_time)


#: Keys of the flat per-instance mapping accepted by :func:`suv_inputs_from_mapping` (DICOM keywords, plus
#: ``PhilipsPETPrivateGroup`` = {SUVScaleFactor, ActivityConcentrationScaleFactor},
#: ``GEPrivatePostInjectionDateTime`` and ``RadionuclideCode``).
MAPPING_KEYS = (
    "Units", "CorrectedImage", "DecayCorrection", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "PatientWeight", "PatientSize", "PatientSex", "RadionuclideTotalDose",
    "RadionuclideHalfLife", "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStartDateTime",
    "RadionuclideCode", "PhilipsPETPrivateGroup", "GEPrivatePostInjectionDateTime",
)


def _series_value(values: Sequence[Any], keyword: str, names: Sequence[str]) -> Any:
    """The common value of a series-level attribute; DicomError naming two files if instances disagree."""
    first = values[0]
    for name, value in zip(names[1:], values[1:], strict=True):
        if value != first:
            raise DicomError(
                f"mixed series: {tag_label(keyword)} is {first!r} in {names[0]} but {value!r} in {name}; "
                "every instance of a series must agree (select one series)",
                names[0],
            )
    return first


def suv_inputs_from_mapping(
    instances: Sequence[Mapping[str, Any]],
    source: str = "instances",
    instance_sources: Sequence[str] | None = None,
) -> SuvInputs:
    """Parse per-instance header values keyed by DICOM keyword (see :data:`MAPPING_KEYS`) into :class:`SuvInputs`.

    This is the adapter for the reference cases (``Testing/Data/suv_reference/*-instances.json``, keyed as in
    cornerstonejs/calculate-suv) and the one parser behind :func:`suv_inputs_from_datasets`. Malformed values
    and series-level values that differ between instances raise :class:`DicomError` naming the attribute and
    the instance.
    """
    if not instances:
        raise DicomError("no PET instances given for the SUV computation", source)
    names = tuple(instance_sources) if instance_sources is not None else tuple(
        f"{source}[instance {i}]" for i in range(len(instances)))
    if len(names) != len(instances):
        raise InputError(f"{len(names)} instance names for {len(instances)} instances")
    notes: list[str] = []

    def each(keyword: str, parse) -> list[Any]:
        return [parse(inst.get(keyword), keyword, name) for inst, name in zip(instances, names, strict=True)]

    def dt_value(value: Any, keyword: str, where: str) -> _dt.datetime | None:
        parsed = parse_dt(value, keyword, where)
        if parsed is None:
            return None
        when, offset = parsed
        if offset:
            note = (f"{tag_label(keyword)} carries the UTC offset {offset}, which was not applied "
                    "(all times are compared as the scanner's local times)")
            if note not in notes:
                notes.append(note)
        return when

    def text_upper(value: Any, keyword: str, where: str) -> str | None:
        text = _text(value)
        return None if text is None else text.upper()

    def code_list(value: Any, keyword: str, where: str) -> tuple[str, ...] | None:
        return _code_string_list(value)

    def private(key: str):
        def parse(value: Any, keyword: str, where: str) -> float | None:
            group = value or {}
            return _number(group.get(key), key, where) if isinstance(group, Mapping) else None
        return parse

    series_level = {
        "Units": text_upper, "CorrectedImage": code_list, "DecayCorrection": text_upper,
        "SeriesDate": parse_da, "SeriesTime": parse_tm, "PatientWeight": _number, "PatientSize": _number,
        "PatientSex": text_upper, "RadionuclideTotalDose": _number, "RadionuclideHalfLife": _number,
        "RadiopharmaceuticalStartTime": parse_tm, "RadiopharmaceuticalStartDateTime": dt_value,
        "GEPrivatePostInjectionDateTime": dt_value, "RadionuclideCode": text_upper,
    }
    common = {key: _series_value(each(key, parse), key, names) for key, parse in series_level.items()}

    acquisitions: list[_dt.datetime | None] = []
    for inst, name in zip(instances, names, strict=True):
        when = dt_value(inst.get("AcquisitionDateTime"), "AcquisitionDateTime", name)
        if when is None:
            date = parse_da(inst.get("AcquisitionDate"), "AcquisitionDate", name)
            time = parse_tm(inst.get("AcquisitionTime"), "AcquisitionTime", name)
            when = _dt.datetime.combine(date, time) if date is not None and time is not None else None
        acquisitions.append(when)

    return SuvInputs(
        source=str(source),
        instance_sources=names,
        units=common["Units"],
        corrected_image=common["CorrectedImage"],
        decay_correction=common["DecayCorrection"],
        series_date=common["SeriesDate"],
        series_time=common["SeriesTime"],
        acquisition_datetimes=tuple(acquisitions),
        radiopharmaceutical_start_datetime=common["RadiopharmaceuticalStartDateTime"],
        radiopharmaceutical_start_time=common["RadiopharmaceuticalStartTime"],
        ge_post_injection_datetime=common["GEPrivatePostInjectionDateTime"],
        patient_weight_kg=common["PatientWeight"],
        patient_size_m=common["PatientSize"],
        patient_sex=common["PatientSex"],
        total_dose_bq=common["RadionuclideTotalDose"],
        half_life_s=common["RadionuclideHalfLife"],
        radionuclide=common["RadionuclideCode"],
        philips_suv_scale_factors=tuple(each("PhilipsPETPrivateGroup", private("SUVScaleFactor"))),
        philips_activity_concentration_scale_factors=tuple(
            each("PhilipsPETPrivateGroup", private("ActivityConcentrationScaleFactor"))),
        notes=tuple(notes),
    )


def _private_value(ds: Any, group: int, creator: str, element: int) -> Any:
    """Value of private element (group, xx<element>) reserved by ``creator``, or ``None``."""
    try:
        block = ds.private_block(group, creator)
    except KeyError:
        return None
    tag = block.get_tag(element)
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):  # UN (implicit VR read without the private dictionary): DS/DT are ASCII
        value = value.decode("ascii", errors="replace")
    return value


def dataset_suv_mapping(ds: Any, where: str = "dataset") -> dict[str, Any]:
    """The SUV-relevant values of one pydicom PET dataset as a flat mapping (keys :data:`MAPPING_KEYS`).

    Reads the first item of the Radiopharmaceutical Information Sequence (0054,0016) (PS3.3 C.8.9.2, PET
    Isotope Module); a sequence with several items (several radiopharmaceuticals) is refused, as QIBA
    covers single-tracer studies only.
    """
    out: dict[str, Any] = {key: ds.get(key) for key in (
        "Units", "CorrectedImage", "DecayCorrection", "SeriesDate", "SeriesTime", "AcquisitionDate",
        "AcquisitionTime", "AcquisitionDateTime", "PatientWeight", "PatientSize", "PatientSex")}
    for key, value in list(out.items()):
        if value is not None and key != "CorrectedImage" and not isinstance(value, (str, bytes, int, float)):
            out[key] = str(value)
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    if sequence is not None and len(sequence) > 1:
        raise DicomError(f"{tag_label('RadiopharmaceuticalInformationSequence')} holds {len(sequence)} items "
                         "(several radiopharmaceuticals); SUV of multi-tracer series is not supported", where)
    if sequence:
        item = sequence[0]
        for key in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
                    "RadiopharmaceuticalStartDateTime"):
            value = item.get(key)
            out[key] = value if value is None or isinstance(value, (int, float, bytes)) else str(value)
        codes = item.get("RadionuclideCodeSequence")
        if codes:
            out["RadionuclideCode"] = codes[0].get("CodeValue") or codes[0].get("CodeMeaning")
    philips = {
        "SUVScaleFactor": _private_value(ds, 0x7053, "Philips PET Private Group", 0x00),
        "ActivityConcentrationScaleFactor": _private_value(ds, 0x7053, "Philips PET Private Group", 0x09),
    }
    out["PhilipsPETPrivateGroup"] = {k: v for k, v in philips.items() if v is not None}
    out["GEPrivatePostInjectionDateTime"] = _private_value(ds, 0x0009, "GEMS_PETD_01", 0x0D)
    return out


def suv_inputs_from_datasets(
    datasets: Sequence[Any],
    source: str = "series",
    instance_sources: Sequence[str] | None = None,
) -> SuvInputs:
    """Extract :class:`SuvInputs` from the pydicom datasets of one PET series (pixel data not needed).

    ``instance_sources`` (the file of each dataset) makes every error name the file; by default the
    datasets' ``filename`` is used when known. See :func:`dataset_suv_mapping` for the attributes read.
    """
    names = list(instance_sources) if instance_sources is not None else [
        str(getattr(ds, "filename", "") or f"{source}[instance {i}]") for i, ds in enumerate(datasets)]
    mappings = [dataset_suv_mapping(ds, name) for ds, name in zip(datasets, names, strict=True)]
    return suv_inputs_from_mapping(mappings, source, names)


# --------------------------------------------------------------------------------------------------------------
# Result and computation
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SuvResult:
    """SUV scale factors of a series and every value used to compute them.

    ``factors[i]`` multiplies the rescaled pixel values (stored value x Rescale Slope + Rescale Intercept) of
    instance ``i`` (in the order of :attr:`SuvInputs.instance_sources`) to give SUV in :attr:`units`
    (g/mL for SUVbw and SUVlbm, cm2/mL for SUVbsa).
    """

    kind: str  #: bw, lbm, lbm-janma or bsa
    units: str  #: :class:`Units` string of the SUV image
    factors: tuple[float, ...]  #: per instance, per rescaled pixel unit (Bq/mL, count, or g/mL for GML)
    input_units: str  #: DICOM Units of the pixel values (BQML, CNTS, GML)
    method: str  #: the rule that produced the factor
    source: str  #: the series
    weight_kg: float | None = None
    height_m: float | None = None
    sex: str | None = None
    injected_dose_bq: float | None = None  #: at the injection (radiopharmaceutical start) time
    injection_datetime: str | None = None  #: ISO local time
    injection_time_rule: str | None = None
    scan_datetime: str | None = None  #: ISO local time of the decay reference (scan) time
    scan_time_rule: str | None = None
    decay_correction: str | None = None
    decay_time_s: float | None = None
    half_life_s: float | None = None
    decayed_dose_bq: float | None = None
    normaliser: str = ""  #: body weight, lean body mass (...), body surface area (...)
    normaliser_value: float | None = None  #: in :attr:`normaliser_unit`
    normaliser_unit: str = ""  #: g or cm2
    lean_body_mass_kg: float | None = None
    body_surface_area_m2: float | None = None
    overrides: tuple[str, ...] = ()  #: user-given values that replaced (or filled) header values
    notes: tuple[str, ...] = ()  #: warnings and rules worth knowing, in plain words
    extra: dict[str, Any] = field(default_factory=dict)  #: vendor factors used, etc.

    @property
    def factor(self) -> float | None:
        """The factor shared by every instance, or ``None`` if the factors differ between instances."""
        first = self.factors[0]
        if all(math.isclose(f, first, rel_tol=1e-12, abs_tol=0.0) for f in self.factors):
            return first
        return None

    def describe(self) -> list[str]:
        """Plain-text lines: the factor and every value it was computed from (for logs and reports)."""
        unit_per = {"BQML": "Bq/mL", "CNTS": "count", "GML": "g/mL"}.get(self.input_units, self.input_units)
        norm_unit = "cm2/mL" if self.kind == "bsa" else "g/mL"
        if self.factor is not None:
            lines = [f"{self.units} ({norm_unit}) = pixel value ({unit_per}) x {self.factor:.10g}"]
        else:
            lines = [f"{self.units} ({norm_unit}) = pixel value ({unit_per}) x per-slice factor "
                     f"{min(self.factors):.10g} .. {max(self.factors):.10g}"]
        lines.append(f"method: {self.method}")
        if self.weight_kg is not None:
            lines.append(f"weight: {self.weight_kg:g} kg")
        if self.height_m is not None:
            lines.append(f"height: {self.height_m:g} m")
        if self.sex is not None:
            lines.append(f"sex: {self.sex}")
        if self.injected_dose_bq is not None:
            lines.append(f"injected dose: {self.injected_dose_bq / 1e6:.6g} MBq")
        if self.injection_datetime is not None:
            lines.append(f"injection time: {self.injection_datetime} ({self.injection_time_rule})")
        if self.scan_datetime is not None:
            lines.append(f"scan reference time: {self.scan_datetime} ({self.scan_time_rule})")
        if self.decay_correction is not None:
            lines.append(f"decay correction: {self.decay_correction}")
        if self.decay_time_s is not None:
            lines.append(f"decay time: {self.decay_time_s:.3f} s with half-life {self.half_life_s:g} s")
        if self.decayed_dose_bq is not None:
            lines.append(f"decayed dose: {self.decayed_dose_bq / 1e6:.6g} MBq")
        if self.normaliser_value is not None:
            lines.append(f"normaliser: {self.normaliser} = {self.normaliser_value:.6g} {self.normaliser_unit}")
        lines += [f"override: {o}" for o in self.overrides]
        lines += [f"note: {n}" for n in self.notes]
        return lines


def _positive(value: float | None, keyword: str, where: str, upper: float | None = None,
              unit: str = "") -> float | None:
    """``None`` for absent or zero (anonymised) values; DicomError for negative or implausible ones."""
    if value is None or value == 0:
        return None
    if value < 0:
        raise DicomError(f"{tag_label(keyword)} is negative ({value:g}{unit})", where)
    if upper is not None and value > upper:
        raise DicomError(f"{tag_label(keyword)} = {value:g}{unit} is implausible (above {upper:g}{unit}); "
                         "check the units or give the value explicitly", where)
    return value


def _override(value: float | None, name: str, upper: float | None = None, unit: str = "") -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive number, got {value!r}")
    if upper is not None and value > upper:
        raise InputError(f"{name} = {value:g}{unit} is implausible (above {upper:g}{unit})")
    return value


def _scan_datetime(inputs: SuvInputs) -> tuple[_dt.datetime, str]:
    """QIBA scan reference time: Series Date/Time unless it is after the earliest acquisition."""
    where = inputs.instance_sources[0]
    series = inputs.series_datetime
    if series is None:
        missing = "SeriesDate" if inputs.series_date is None else "SeriesTime"
        raise DicomError(f"{tag_label(missing)} is missing; it is the decay reference time of the SUV", where)
    for name, acq in zip(inputs.instance_sources, inputs.acquisition_datetimes, strict=True):
        if acq is None:
            raise DicomError(f"{tag_label('AcquisitionDate')}/{tag_label('AcquisitionTime')} is missing; QIBA "
                             "compares it with the series time to choose the scan time", name)
    earliest = min(inputs.acquisition_datetimes)  # type: ignore[type-var]
    if series <= earliest:
        return series, "SeriesDate/SeriesTime, not after the earliest acquisition time (QIBA)"
    if inputs.ge_post_injection_datetime is not None:
        return inputs.ge_post_injection_datetime, (
            f"GE private scan date-time {tag_label('GEPrivatePostInjectionDateTime')}, because SeriesTime is after "
            "the earliest acquisition time (QIBA)")
    return earliest, ("earliest AcquisitionDate/AcquisitionTime of the series, because SeriesDate/SeriesTime "
                      f"{series.isoformat()} is after it (post-processed series, QIBA)")


def _injection_datetime(inputs: SuvInputs, scan: _dt.datetime) -> tuple[_dt.datetime, str]:
    """Injection time: Radiopharmaceutical Start DateTime, else Start Time on the Series Date (QIBA)."""
    where = inputs.instance_sources[0]
    start_dt, start_tm = inputs.radiopharmaceutical_start_datetime, inputs.radiopharmaceutical_start_time
    if start_dt is not None:
        if start_tm is not None:
            gap = abs((_dt.datetime.combine(start_dt.date(), start_tm) - start_dt).total_seconds())
            if gap > 1.0:
                raise DicomError(
                    f"{tag_label('RadiopharmaceuticalStartDateTime')} ({start_dt.isoformat()}) and "
                    f"{tag_label('RadiopharmaceuticalStartTime')} ({start_tm.isoformat()}) disagree by {gap:.0f} s",
                    where)
        return start_dt, "RadiopharmaceuticalStartDateTime (0018,1078)"
    if start_tm is None:
        raise DicomError(
            f"the injection time is missing: neither {tag_label('RadiopharmaceuticalStartDateTime')} nor "
            f"{tag_label('RadiopharmaceuticalStartTime')} is in the "
            f"{tag_label('RadiopharmaceuticalInformationSequence')}", where)
    if inputs.series_date is None:
        raise DicomError(f"{tag_label('SeriesDate')} is missing; it dates {tag_label('RadiopharmaceuticalStartTime')}",
                         where)
    start = _dt.datetime.combine(inputs.series_date, start_tm)
    if start > scan:
        return start - _dt.timedelta(days=1), (
            "RadiopharmaceuticalStartTime (0018,1072) on the day before SeriesDate: on the SeriesDate it would "
            "follow the scan, so the acquisition ran past midnight (QIBA)")
    return start, "RadiopharmaceuticalStartTime (0018,1072) on SeriesDate (no RadiopharmaceuticalStartDateTime)"


def compute_suv(
    inputs: SuvInputs,
    kind: str = "bw",
    *,
    weight_kg: float | None = None,
    dose_bq: float | None = None,
    height_m: float | None = None,
    sex: str | None = None,
    allow_uncorrected: bool = False,
    james_male: tuple[float, float] = JAMES_MALE_QIBA,
    james_female: tuple[float, float] = JAMES_FEMALE_QIBA,
    min_plausible_dose_bq: float = 1e6,
    max_decay_half_lives: float = 10.0,
) -> SuvResult:
    """SUV scale factors of a PET series by the QIBA vendor-neutral pseudo-code (see the module docstring).

    Parameters
    ----------
    inputs:
        Header values of the series (:func:`suv_inputs_from_datasets` / :func:`suv_inputs_from_mapping`).
    kind:
        ``"bw"`` (body weight, g), ``"lbm"`` (lean body mass, James with QIBA coefficients), ``"lbm-janma"``
        (lean body mass, Janmahasatian 2005) or ``"bsa"`` (body surface area, DuBois, cm2). Default ``"bw"``.
    weight_kg, dose_bq, height_m, sex:
        Overrides (or fillers) of Patient's Weight (kg), Radionuclide Total Dose (Bq, the activity at the
        radiopharmaceutical start time), Patient's Size (m) and Patient's Sex (``"M"``/``"F"``). Each use is
        recorded in :attr:`SuvResult.overrides`. Default ``None``: the header value.
    allow_uncorrected:
        Accept images whose Corrected Image (0028,0051) lacks ATTN or DECY (or Decay Correction NONE); the
        SUV is then not quantitative and a note says so. A non-decay-corrected image is treated as
        decay-corrected to the scan reference time. Default ``False``: refused.
    james_male, james_female:
        (a, b) of the James formula; defaults are the QIBA/Sugawara coefficients (see :func:`lbm_james_kg`).
    min_plausible_dose_bq:
        A header Radionuclide Total Dose below this (default 1 MBq) is refused as implausible — DICOM stores
        Bq, and a value like 370 is most likely MBq. An explicit ``dose_bq`` bypasses the check.
    max_decay_half_lives:
        Decay times above this many half-lives (default 10, i.e. 18 h for F-18) are refused as implausible
        (usually a wrong date or time tag).

    Deviations from the pseudo-code: Decay Correction ADMIN is supported (no decay); GML images give SUVlbm
    and SUVbsa by multiplying SUVbw with normaliser / body weight; the Philips SUV Scale Factor is not used
    when a weight or dose override is given (it embeds the header values), the Activity Concentration Scale
    Factor path is used instead.
    """
    if kind not in SUV_KINDS:
        raise InputError(f"unknown SUV kind {kind!r}; use one of {', '.join(SUV_KINDS)}")
    where = inputs.instance_sources[0] if inputs.instance_sources else inputs.source
    notes: list[str] = list(inputs.notes)
    overrides: list[str] = []
    extra: dict[str, Any] = {}

    # --- units and corrections (PET Series Module C.8.9.1) -------------------------------------------------
    units = inputs.units
    if units is None:
        raise DicomError(f"{tag_label('Units')} is missing; cannot tell Bq/mL from counts", where)
    if units not in ("BQML", "CNTS", "GML"):
        raise DicomError(f"{tag_label('Units')} is {units!r}; SUV can be computed from BQML, from CNTS with Philips "
                         "scale factors, or from GML only", where)
    corrected = inputs.corrected_image
    decay_corr = inputs.decay_correction
    if corrected is None:
        lacking = ["ATTN", "DECY"]
        problem = f"{tag_label('CorrectedImage')} is missing, so attenuation and decay correction are unknown"
    else:
        lacking = [c for c in ("ATTN", "DECY") if c not in corrected]
        shown = "\\".join(corrected)
        what = " and ".join({"ATTN": "attenuation", "DECY": "decay"}[c] for c in lacking)
        problem = (f"{tag_label('CorrectedImage')} ({shown}) lacks {' and '.join(lacking)}: the image is not "
                   f"{what}-corrected")
    if lacking:
        if not allow_uncorrected:
            raise DicomError(f"{problem}; SUV would not be quantitative (allow_uncorrected / --allow-uncorrected "
                             "accepts it knowingly)", where)
        notes.append(f"{problem}; accepted on request — this SUV is NOT quantitative")
    if decay_corr is None:
        if units != "GML":
            raise DicomError(f"{tag_label('DecayCorrection')} is missing; cannot tell which time the image is "
                             "decay-corrected to", where)
    elif decay_corr not in ("START", "ADMIN", "NONE"):
        raise DicomError(f"{tag_label('DecayCorrection')} is {decay_corr!r}; expected START, ADMIN or NONE", where)
    elif decay_corr == "NONE":
        if corrected is not None and "DECY" in corrected:
            raise DicomError(f"{tag_label('DecayCorrection')} is NONE but {tag_label('CorrectedImage')} contains DECY "
                             "(contradictory)", where)
        if not allow_uncorrected:
            raise DicomError(f"{tag_label('DecayCorrection')} is NONE: the image is not decay-corrected; SUV "
                             "would not be quantitative (allow_uncorrected / --allow-uncorrected accepts it "
                             "knowingly)", where)
        notes.append("DecayCorrection NONE: treated as decay-corrected to the scan reference time (approximation)")

    # --- body values -------------------------------------------------------------------------------------
    header_weight = _positive(inputs.patient_weight_kg, "PatientWeight", where, MAX_PLAUSIBLE_WEIGHT_KG, " kg")
    header_height = _positive(inputs.patient_size_m, "PatientSize", where, MAX_PLAUSIBLE_HEIGHT_M, " m")
    weight = _override(weight_kg, "weight_kg", MAX_PLAUSIBLE_WEIGHT_KG, " kg")
    height = _override(height_m, "height_m", MAX_PLAUSIBLE_HEIGHT_M, " m")
    if weight is not None:
        overrides.append(f"weight {weight:g} kg (header {tag_label('PatientWeight')}: "
                         f"{'absent' if header_weight is None else f'{header_weight:g} kg'})")
    if height is not None:
        overrides.append(f"height {height:g} m (header {tag_label('PatientSize')}: "
                         f"{'absent' if header_height is None else f'{header_height:g} m'})")
    header_sex = inputs.patient_sex if inputs.patient_sex in ("M", "F") else None
    use_sex = None
    if sex is not None:
        use_sex = _check_sex(sex, "sex")
        overrides.append(f"sex {use_sex} (header {tag_label('PatientSex')}: {inputs.patient_sex or 'absent'})")
    weight = weight if weight is not None else header_weight
    height = height if height is not None else header_height
    use_sex = use_sex if use_sex is not None else header_sex

    def need_weight(why: str) -> float:
        if weight is None:
            raise DicomError(f"{tag_label('PatientWeight')} is missing (or zero); {why}: give the body weight "
                             "(weight_kg / --weight KG)", where)
        return weight

    # --- SUVbw factors (or the decayed dose) per units --------------------------------------------------
    n = len(inputs.instance_sources)
    decay: dict[str, Any] = {}
    activity_scale: tuple[float, ...] | None = None  # pixel -> Bq/mL multiplier when the dose path is used
    bw_factors: tuple[float, ...] | None = None  # SUVbw factors from the vendor (GML, Philips SUV factor)

    if units == "GML":
        if weight_kg is not None or dose_bq is not None:
            raise InputError("the series is in GML (already SUVbw, normalised by the scanner with its own weight "
                             "and dose); weight and dose overrides cannot be applied to it")
        bw_factors = (1.0,) * n
        method = "Units GML: the image is already SUVbw (factor 1, QIBA)"
    elif units == "CNTS":
        suv_sf = inputs.philips_suv_scale_factors or (None,) * n
        acsf = inputs.philips_activity_concentration_scale_factors or (None,) * n
        has_suv_sf = all(v not in (None, 0.0) for v in suv_sf)
        has_acsf = all(v not in (None, 0.0) for v in acsf)
        if has_suv_sf and weight_kg is None and dose_bq is None:
            bw_factors = tuple(float(v) for v in suv_sf)  # type: ignore[arg-type]
            method = (f"Units CNTS: Philips private {tag_label('SUVScaleFactor')} (QIBA); the vendor factor already "
                      "includes the header weight and the decayed dose")
            extra["philips_suv_scale_factor"] = sorted(set(bw_factors))
        elif has_acsf:
            activity_scale = tuple(float(v) for v in acsf)  # type: ignore[arg-type]
            method = (f"Units CNTS: Philips private {tag_label('ActivityConcentrationScaleFactor')} x the BQML "
                      "factor (QIBA)")
            if has_suv_sf:
                notes.append("the Philips SUVScaleFactor embeds the header weight and dose, so with an override the "
                             "ActivityConcentrationScaleFactor path was used")
            extra["philips_activity_concentration_scale_factor"] = sorted(set(activity_scale))
        else:
            why = (" (the Philips SUVScaleFactor embeds the header weight and dose and cannot take an override)"
                   if has_suv_sf else "")
            raise DicomError(f"{tag_label('Units')} is CNTS but no usable Philips private "
                             f"{tag_label('SUVScaleFactor')} or {tag_label('ActivityConcentrationScaleFactor')} is "
                             f"present (absent or zero){why}; counts cannot be converted to SUV", where)
    else:  # BQML: Philips private tags are deliberately ignored
        activity_scale = (1.0,) * n
        method = "Units BQML: normaliser / decayed dose (QIBA)"

    if activity_scale is not None:
        dose = _override(dose_bq, "dose_bq")
        header_dose = _positive(inputs.total_dose_bq, "RadionuclideTotalDose", where, unit=" Bq")
        if dose is not None:
            overrides.append(f"injected dose {dose / 1e6:.6g} MBq (header {tag_label('RadionuclideTotalDose')}: "
                             f"{'absent' if header_dose is None else f'{header_dose / 1e6:.6g} MBq'})")
        else:
            if header_dose is None:
                raise DicomError(f"{tag_label('RadionuclideTotalDose')} is missing (or zero); give the injected "
                                 "activity at the radiopharmaceutical start time (dose_bq / --dose MBQ)", where)
            if header_dose < min_plausible_dose_bq:
                raise DicomError(f"{tag_label('RadionuclideTotalDose')} = {header_dose:g} Bq is implausibly small "
                                 f"(below {min_plausible_dose_bq:g} Bq; DICOM stores Bq — was it written in MBq?); "
                                 "give the dose explicitly (dose_bq / --dose MBQ)", where)
            dose = header_dose
        decay["injected_dose_bq"] = dose
        decay["decay_correction"] = decay_corr
        if decay_corr == "ADMIN":
            decayed = dose
            decay.update(decay_time_s=0.0, scan_time_rule="DecayCorrection ADMIN: the image is decay-corrected "
                                                          "to the administration time, so the dose is not decayed")
        else:
            half_life = _positive(inputs.half_life_s, "RadionuclideHalfLife", where, unit=" s")
            if half_life is None:
                raise DicomError(f"{tag_label('RadionuclideHalfLife')} is missing (or zero); it is needed to decay "
                                 "the injected dose to the scan time", where)
            code = (inputs.radionuclide or "").upper()
            if (code in _F18_CODES or "18^FLUORINE" in code) and abs(half_life / F18_HALF_LIFE_S - 1) > 0.01:
                raise DicomError(f"{tag_label('RadionuclideHalfLife')} = {half_life:g} s contradicts the radionuclide "
                                 f"F-18 (half-life {F18_HALF_LIFE_S:g} s) of "
                                 f"{tag_label('RadionuclideCodeSequence')}", where)
            scan, scan_rule = _scan_datetime(inputs)
            start, start_rule = _injection_datetime(inputs, scan)
            elapsed = (scan - start).total_seconds()
            if elapsed < 0:
                raise DicomError(f"negative decay time: the injection ({start.isoformat()}, {start_rule}) is "
                                 f"{-elapsed:.0f} s after the scan reference time ({scan.isoformat()}, {scan_rule})",
                                 where)
            if elapsed > max_decay_half_lives * half_life:
                raise DicomError(f"implausible decay time of {elapsed / 3600:.2f} h ({elapsed / half_life:.1f} "
                                 f"half-lives) between the injection ({start.isoformat()}, {start_rule}) and the "
                                 f"scan ({scan.isoformat()}, {scan_rule}); check the date and time tags", where)
            decayed = dose * decay_factor(elapsed, half_life)
            decay.update(decay_time_s=elapsed, half_life_s=half_life, scan_datetime=scan.isoformat(),
                         scan_time_rule=scan_rule, injection_datetime=start.isoformat(),
                         injection_time_rule=start_rule)
        decay["decayed_dose_bq"] = decayed

    # --- normaliser --------------------------------------------------------------------------------------
    lbm = bsa_m2 = None
    if kind == "bw":
        w = need_weight("SUVbw is normalised to it") if (activity_scale is not None or weight is not None) else None
        normaliser, norm_value, norm_unit = "body weight", None if w is None else w * 1000.0, "g"
    else:
        w = need_weight(f"SUV{kind} needs it")
        if height is None:
            raise DicomError(f"{tag_label('PatientSize')} is missing (or zero); SUV{kind} needs the height: give it "
                             "in metres (height_m / --height M)", where)
        if kind == "bsa":
            norm_value = bsa_dubois_cm2(w, height)
            bsa_m2 = norm_value / 1e4
            normaliser, norm_unit = "body surface area (DuBois 1916)", "cm2"
        else:
            if use_sex is None:
                raise DicomError(f"{tag_label('PatientSex')} is {inputs.patient_sex or 'missing'!r}; the lean-body-"
                                 "mass formulas need M or F: give it (sex / --sex M|F)", where)
            if kind == "lbm":
                lbm = lbm_james_kg(w, height, use_sex, male=james_male, female=james_female)
                a, b = james_male if use_sex == "M" else james_female
                normaliser = f"lean body mass (James, coefficients {a:g}, {b:g})"
                peak_kg = a * (height * 100.0) ** 2 / (2.0 * b)
                if w > peak_kg:
                    notes.append(f"the James formula decreases with weight above {peak_kg:.0f} kg at this height "
                                 f"(obesity); its SUVlbm is unreliable here — consider lbm-janma")
            else:
                lbm = lbm_janmahasatian_kg(w, height, use_sex)
                normaliser = "lean body mass (Janmahasatian 2005)"
            norm_value, norm_unit = lbm * 1000.0, "g"

    if activity_scale is not None:
        if norm_value is None:  # pragma: no cover - need_weight raised above
            raise ProcessingError("internal: no normaliser for the dose path")
        factors = tuple(s * norm_value / decay["decayed_dose_bq"] for s in activity_scale)
    else:
        assert bw_factors is not None
        if kind == "bw":
            factors = bw_factors
        else:
            factors = tuple(f * norm_value / (w * 1000.0) for f in bw_factors)
            notes.append(f"SUV{kind} = vendor SUVbw x {norm_unit} normaliser / body weight")
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ProcessingError(f"the SUV factor is not a positive finite number ({factors[:3]}...)")

    return SuvResult(
        kind=kind, units=SUV_KINDS[kind], factors=factors, input_units=units, method=method,
        source=inputs.source, weight_kg=weight, height_m=height, sex=use_sex,
        injected_dose_bq=decay.get("injected_dose_bq"), injection_datetime=decay.get("injection_datetime"),
        injection_time_rule=decay.get("injection_time_rule"), scan_datetime=decay.get("scan_datetime"),
        scan_time_rule=decay.get("scan_time_rule"), decay_correction=decay_corr,
        decay_time_s=decay.get("decay_time_s"), half_life_s=decay.get("half_life_s"),
        decayed_dose_bq=decay.get("decayed_dose_bq"), normaliser=normaliser, normaliser_value=norm_value,
        normaliser_unit=norm_unit, lean_body_mass_kg=lbm, body_surface_area_m2=bsa_m2,
        overrides=tuple(overrides), notes=tuple(notes), extra=extra,
    )
