"""SUV scale factors (QIBA vendor-neutral pseudo-code): published vendor cases and hand-computed cases.

Expected numbers are either the published factors of Testing/Data/suv_reference/README.md (real scanner
headers, from cornerstonejs/calculate-suv) or arithmetic written out here from the definitions
(SUVbw = weight_g / (dose x 2^(-t/T))), never values produced by the code under test.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import TEST_DATA
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from PETDosePaintingLib.errors import DicomError, InputError
from PETDosePaintingLib.imaging.suv import (
    bsa_dubois_cm2,
    compute_suv,
    lbm_james_kg,
    lbm_janmahasatian_kg,
    suv_inputs_from_datasets,
    suv_inputs_from_mapping,
)

REFERENCE = TEST_DATA / "suv_reference"

# case -> (published SUVbw factor, absolute tolerance). 1e-6 relative unless the README says otherwise;
# "3 digits" means within half a unit of the third significant digit.
PUBLISHED = {
    "SIEMENS": (4.2748316187197236e-4, 1e-6 * 4.2748316187197236e-4),
    "GE_MEDICAL_AND_BQML": (5.367387681819742e-4, 1e-6 * 5.367387681819742e-4),
    "PHILIPS_BQML": (7.463747013889488e-4, 1e-6 * 7.463747013889488e-4),
    "PHILIPS_CNTS_AND_BQML_SUV": (5.51e-4, 0.5e-6),
    "PHILIPS_CNTS_AND_SUV": (7.28e-4, 0.5e-6),
    "BQML_AC_DT_lessThan_S_DT_SIEMENS": (4.069156854009332e-4, 1e-6 * 4.069156854009332e-4),
    "CPS_AND_BQML_AC_DT_-_S_DT": (2.6503312764157046e-4, 1e-6 * 2.6503312764157046e-4),
    "RADIOPHARM_DATETIME_UNDEFINED": (3.721089202818729e-4, 1e-6 * 3.721089202818729e-4),
}


def load_case(name: str) -> list[dict]:
    return json.loads((REFERENCE / f"{name}-instances.json").read_text())


def test_reference_data_is_shipped_with_its_licence():
    assert (REFERENCE / "README.md").is_file()
    assert "MIT License" in (REFERENCE / "LICENSE-cornerstone-calculate-suv.txt").read_text()
    assert {p.name.removesuffix("-instances.json") for p in REFERENCE.glob("*-instances.json")} == set(PUBLISHED)


@pytest.mark.parametrize("case", sorted(PUBLISHED))
def test_vendor_reference_case_reproduces_the_published_factor(case):
    expected, tolerance = PUBLISHED[case]
    instances = load_case(case)
    result = compute_suv(suv_inputs_from_mapping(instances, case))
    assert len(result.factors) == len(instances)
    assert result.factor == pytest.approx(expected, abs=tolerance, rel=0)
    assert result.units == "SUVbw"


def test_vendor_cases_take_the_documented_rule():
    philips_bqml = compute_suv(suv_inputs_from_mapping(load_case("PHILIPS_BQML")))
    assert "BQML" in philips_bqml.method and "Philips" not in philips_bqml.method
    assert philips_bqml.factor != pytest.approx(0.003515736, rel=0.5)  # the private SUVScaleFactor is ignored
    assert "SUVScaleFactor" in compute_suv(suv_inputs_from_mapping(load_case("PHILIPS_CNTS_AND_SUV"))).method
    late_series = compute_suv(suv_inputs_from_mapping(load_case("BQML_AC_DT_lessThan_S_DT_SIEMENS")))
    assert "earliest AcquisitionDate" in late_series.scan_time_rule
    assert late_series.scan_datetime == "2020-12-17T12:35:14.999995"
    only_time = compute_suv(suv_inputs_from_mapping(load_case("CPS_AND_BQML_AC_DT_-_S_DT")))
    assert only_time.injection_datetime == "2020-12-17T12:00:37"
    assert only_time.scan_datetime == "2020-12-17T13:03:48.234000"
    # 13:03:48.234 - 12:00:37 = 3791.234 s
    assert only_time.decay_time_s == pytest.approx(3791.234, abs=1e-6)


def test_philips_cnts_activity_concentration_scale_factor_path():
    instances = load_case("PHILIPS_CNTS_AND_BQML_SUV")
    for value in (None, "0"):  # absent, or zero: fall back to ActivityConcentrationScaleFactor x BQML factor
        for inst in instances:
            if value is None:
                inst["PhilipsPETPrivateGroup"].pop("SUVScaleFactor", None)
            else:
                inst["PhilipsPETPrivateGroup"]["SUVScaleFactor"] = value
        result = compute_suv(suv_inputs_from_mapping(instances))
        # series 09:35:56 is before the acquisition 09:54:39 -> decay from 08:30:00 to 09:35:56 = 3956 s
        hand = 1.602563 * 54_000 / (238e6 * 2 ** (-3956 / 6588))
        assert result.factor == pytest.approx(hand, rel=1e-12)
        assert result.factor == pytest.approx(5.51e-4, abs=0.5e-6)  # agrees with the vendor's own SUV factor
        assert "ActivityConcentrationScaleFactor" in result.method


def test_cnts_without_philips_factors_is_refused():
    instances = load_case("PHILIPS_CNTS_AND_SUV")
    for inst in instances:
        inst["PhilipsPETPrivateGroup"] = {}
    with pytest.raises(DicomError, match=r"Units \(0054,1001\) is CNTS.*SUVScaleFactor \(7053,1000\)"):
        compute_suv(suv_inputs_from_mapping(instances, "philips.json"))


def test_philips_suv_factor_with_weight_override_uses_the_activity_path_or_refuses():
    instances = load_case("PHILIPS_CNTS_AND_BQML_SUV")
    result = compute_suv(suv_inputs_from_mapping(instances), weight_kg=60)
    assert result.factor == pytest.approx(1.602563 * 60_000 / (238e6 * 2 ** (-3956 / 6588)), rel=1e-12)
    with pytest.raises(DicomError, match="cannot take an override"):
        compute_suv(suv_inputs_from_mapping(load_case("PHILIPS_CNTS_AND_SUV")), weight_kg=60)


def test_qin_headneck_case_from_slicer_pet_dicom_extension():
    inputs = suv_inputs_from_mapping([{
        "Units": "BQML", "CorrectedImage": ["ATTN", "DECY"], "DecayCorrection": "START",
        "SeriesDate": "20000101", "SeriesTime": "102731.687", "AcquisitionDate": "20000101",
        "AcquisitionTime": "103339.953", "PatientWeight": 123.6, "RadionuclideTotalDose": 587929992.67578,
        "RadionuclideHalfLife": 6586.2, "RadiopharmaceuticalStartTime": "084500",
    }])
    # published 0.000401664: within half a unit of its last digit
    assert compute_suv(inputs).factor == pytest.approx(0.000401664, abs=0.5e-9, rel=0)


# --- formula level (README: 75 kg, 1.85 m, male, 100 Bq, no decay) -----------------------------------------

def formula_inputs(**changes) -> list[dict]:
    base = {"Units": "BQML", "CorrectedImage": "ATTN\\DECY", "DecayCorrection": "ADMIN", "PatientWeight": 75,
            "PatientSize": 1.85, "PatientSex": "M"}
    base.update(changes)
    return [base]


@pytest.mark.parametrize(("kind", "expected", "units"), [
    ("bw", 750.0, "SUVbw"),
    ("bsa", 198.13758427117767, "SUVbsa"),
    ("lbm", 627.7757487216948, "SUVlbm"),
    ("lbm-janma", 609.1533588651974, "SUVlbmJanma"),
])
def test_formula_level_reference_values(kind, expected, units):
    result = compute_suv(suv_inputs_from_mapping(formula_inputs()), kind, dose_bq=100.0)
    assert result.factor == pytest.approx(expected, rel=1e-12)
    assert result.units == units
    assert result.decay_time_s == 0.0 and result.decayed_dose_bq == 100.0
    assert result.overrides == ("injected dose 0.0001 MBq (header RadionuclideTotalDose (0018,1074): absent)",)


def test_body_size_formulas_by_hand():
    w, h = 75.0, 1.85
    assert lbm_james_kg(w, h, "M") == pytest.approx(1.10 * 75 - 120 * (75 / 185) ** 2, rel=1e-14)
    # James' original male constant 128 is a parameter away
    assert lbm_james_kg(w, h, "M", male=(1.10, 128.0)) == pytest.approx(1.10 * 75 - 128 * (75 / 185) ** 2, rel=1e-14)
    assert lbm_james_kg(60, 1.65, "F") == pytest.approx(1.07 * 60 - 148 * (60 / 165) ** 2, rel=1e-14)
    bmi = 60 / 1.65**2
    assert lbm_janmahasatian_kg(60, 1.65, "F") == pytest.approx(9270 * 60 / (8780 + 244 * bmi), rel=1e-14)
    assert bsa_dubois_cm2(w, h) == pytest.approx(71.84 * 75**0.425 * 185**0.725, rel=1e-14)
    with pytest.raises(InputError, match="non-positive lean body mass"):
        lbm_james_kg(200, 1.50, "F")  # 214 - 148 * (200/150)^2 = -49 kg: the formula's known failure
    with pytest.raises(InputError, match="'M' or 'F'"):
        lbm_janmahasatian_kg(70, 1.7, "O")


def test_james_coefficients_reach_compute_suv_and_obesity_is_flagged():
    result = compute_suv(suv_inputs_from_mapping(formula_inputs()), "lbm", dose_bq=100.0, james_male=(1.10, 128.0))
    assert result.factor == pytest.approx((1.10 * 75 - 128 * (75 / 185) ** 2) * 1000 / 100, rel=1e-12)
    heavy = compute_suv(suv_inputs_from_mapping(formula_inputs(PatientWeight=140, PatientSize=1.6)), "lbm",
                        dose_bq=100.0)
    # the James formula peaks at W = 1.10 * 160^2 / (2 * 120) = 117 kg, below 140 kg
    assert any("decreases with weight above 117 kg" in n for n in heavy.notes)


# --- decay correction, times and dates (hand numbers: T = 3600 s, 1 h uptake -> half the dose) ------------

def timed(**changes) -> list[dict]:
    base = {"Units": "BQML", "CorrectedImage": ["DECY", "ATTN"], "DecayCorrection": "START",
            "SeriesDate": "20240101", "SeriesTime": "100000", "AcquisitionDate": "20240101",
            "AcquisitionTime": "100000", "PatientWeight": 80, "PatientSex": "M", "PatientSize": 1.8,
            "RadionuclideTotalDose": 400e6, "RadionuclideHalfLife": 3600,
            "RadiopharmaceuticalStartDateTime": "20240101090000"}
    base.update(changes)
    return [{k: v for k, v in base.items() if v is not None}]


def test_decay_start_halves_the_dose_after_one_half_life():
    result = compute_suv(suv_inputs_from_mapping(timed()))
    assert result.factor == pytest.approx(80_000 / 200e6, rel=1e-12)  # 4e-4 g/Bq
    assert result.decayed_dose_bq == pytest.approx(200e6, rel=1e-12)
    assert result.decay_time_s == 3600.0


def test_decay_admin_does_not_decay():
    result = compute_suv(suv_inputs_from_mapping(timed(DecayCorrection="ADMIN")))
    assert result.factor == pytest.approx(80_000 / 400e6, rel=1e-12)
    assert result.decay_time_s == 0.0


def test_acquisition_after_midnight_with_start_time_only():
    inst = timed(RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="233000",
                 SeriesDate="20240102", SeriesTime="003000", AcquisitionDate="20240102", AcquisitionTime="003000")
    result = compute_suv(suv_inputs_from_mapping(inst))
    assert result.injection_datetime == "2024-01-01T23:30:00"
    assert "day before" in result.injection_time_rule
    assert result.factor == pytest.approx(4e-4, rel=1e-12)


def test_injection_after_scan_with_explicit_date_is_a_negative_decay_error():
    inst = timed(RadiopharmaceuticalStartDateTime="20240101103000")
    with pytest.raises(DicomError, match=r"negative decay time.*1800 s after"):
        compute_suv(suv_inputs_from_mapping(inst, "pet"))


def test_series_time_after_acquisition_uses_earliest_acquisition_or_ge_private_time():
    instances = timed(SeriesTime="110000", AcquisitionTime="100500") + timed(SeriesTime="110000",
                                                                             AcquisitionTime="100000")
    result = compute_suv(suv_inputs_from_mapping(instances))
    assert result.scan_datetime == "2024-01-01T10:00:00"
    assert result.factor == pytest.approx(4e-4, rel=1e-12)
    for inst in instances:
        inst["GEPrivatePostInjectionDateTime"] = "20240101093000"
    ge = compute_suv(suv_inputs_from_mapping(instances))
    assert "GE private" in ge.scan_time_rule
    assert ge.factor == pytest.approx(80_000 / (400e6 * 2**-0.5), rel=1e-12)  # 30 min = half a half-life
    # series not after the acquisition: the series time is used even if a GE private time is present
    instances = timed(SeriesTime="100000", AcquisitionTime="101500", GEPrivatePostInjectionDateTime="20240101093000")
    assert compute_suv(suv_inputs_from_mapping(instances)).factor == pytest.approx(4e-4, rel=1e-12)


def test_lbm_and_bsa_scale_the_bw_factor_by_normaliser_over_weight():
    bw = compute_suv(suv_inputs_from_mapping(timed())).factor
    lbm = compute_suv(suv_inputs_from_mapping(timed()), "lbm").factor
    bsa = compute_suv(suv_inputs_from_mapping(timed()), "bsa").factor
    assert lbm / bw == pytest.approx((1.10 * 80 - 120 * (80 / 180) ** 2) / 80, rel=1e-12)
    assert bsa == pytest.approx(71.84 * 80**0.425 * 180**0.725 / 200e6, rel=1e-12)


def test_gml_is_already_suvbw():
    gml = compute_suv(suv_inputs_from_mapping(timed(Units="GML")))
    assert gml.factors == (1.0,)
    lbm = compute_suv(suv_inputs_from_mapping(timed(Units="GML")), "lbm")
    assert lbm.factor == pytest.approx((1.10 * 80 - 120 * (80 / 180) ** 2) / 80, rel=1e-12)
    with pytest.raises(InputError, match="GML"):
        compute_suv(suv_inputs_from_mapping(timed(Units="GML")), weight_kg=70)


# --- refusals: every one names the tag and the instance -------------------------------------------------

@pytest.mark.parametrize(("changes", "kind", "pattern"), [
    ({"PatientWeight": None}, "bw", r"PatientWeight \(0010,1030\) is missing"),
    ({"PatientWeight": 0}, "bw", r"PatientWeight \(0010,1030\) is missing \(or zero\)"),
    ({"RadionuclideTotalDose": None}, "bw", r"RadionuclideTotalDose \(0018,1074\) is missing"),
    ({"RadionuclideTotalDose": 370}, "bw", r"RadionuclideTotalDose \(0018,1074\) = 370 Bq is implausibly small"),
    ({"Units": "PROPCNTS"}, "bw", r"Units \(0054,1001\) is 'PROPCNTS'"),
    ({"Units": None}, "bw", r"Units \(0054,1001\) is missing"),
    ({"CorrectedImage": ["DECY", "SCAT"]}, "bw", r"CorrectedImage \(0028,0051\).*lacks ATTN"),
    ({"CorrectedImage": None}, "bw", r"CorrectedImage \(0028,0051\) is missing"),
    ({"CorrectedImage": ["ATTN"], "DecayCorrection": "NONE"}, "bw", r"lacks DECY"),
    ({"DecayCorrection": "NONE"}, "bw", r"DecayCorrection \(0054,1102\) is NONE but .*DECY"),
    ({"DecayCorrection": "LATER"}, "bw", r"DecayCorrection \(0054,1102\) is 'LATER'"),
    ({"RadionuclideHalfLife": None}, "bw", r"RadionuclideHalfLife \(0018,1075\) is missing"),
    ({"RadionuclideHalfLife": 109.77, "RadionuclideCode": "77004003"}, "bw", r"contradicts the radionuclide F-18"),
    ({"RadiopharmaceuticalStartDateTime": None}, "bw", r"injection time is missing"),
    ({"RadiopharmaceuticalStartTime": "083000"}, "bw", r"StartDateTime.*and .*StartTime.*disagree by 1800 s"),
    ({"RadiopharmaceuticalStartDateTime": "20231230090000"}, "bw", r"implausible decay time of 49\.00 h"),
    ({"SeriesTime": None}, "bw", r"SeriesTime \(0008,0031\) is missing"),
    ({"AcquisitionTime": None}, "bw", r"AcquisitionDate \(0008,0022\)/AcquisitionTime \(0008,0032\) is missing"),
    ({"SeriesTime": "25:61"}, "bw", r"SeriesTime \(0008,0031\) has the malformed value '25:61'"),
    ({"PatientSize": 180}, "bsa", r"PatientSize \(0010,1020\) = 180 m is implausible"),
    ({"PatientSize": None}, "bsa", r"PatientSize \(0010,1020\) is missing"),
    ({"PatientSex": "O"}, "lbm", r"PatientSex \(0010,0040\) is 'O'"),
    ({"PatientWeight": 75000}, "bw", r"PatientWeight \(0010,1030\) = 75000 kg is implausible"),
])
def test_missing_or_contradictory_tags_are_refused_naming_tag_and_instance(changes, kind, pattern):
    with pytest.raises(DicomError, match=pattern) as info:  # (malformed values fail while parsing)
        compute_suv(suv_inputs_from_mapping(timed(**changes), "scan", ["scan/IM0001.dcm"]), kind)
    assert str(info.value).startswith("scan/IM0001.dcm: ")


def test_overrides_fill_missing_values_and_are_recorded():
    inputs = suv_inputs_from_mapping(timed(PatientWeight=None, RadionuclideTotalDose=None, PatientSize=None,
                                           PatientSex=None))
    result = compute_suv(inputs, "lbm", weight_kg=80, dose_bq=400e6, height_m=1.8, sex="M")
    assert result.factor == pytest.approx((1.10 * 80 - 120 * (80 / 180) ** 2) * 1000 / 200e6, rel=1e-12)
    assert len(result.overrides) == 4
    assert any("weight 80 kg (header PatientWeight (0010,1030): absent)" in o for o in result.overrides)
    implausible = suv_inputs_from_mapping(timed(RadionuclideTotalDose=370))
    assert compute_suv(implausible, dose_bq=400e6).factor == pytest.approx(4e-4, rel=1e-12)
    with pytest.raises(InputError, match="weight_kg must be a positive number"):
        compute_suv(inputs, weight_kg=-1, dose_bq=400e6)


def test_uncorrected_images_need_the_explicit_flag_and_are_flagged():
    inputs = suv_inputs_from_mapping(timed(CorrectedImage=["DECY"]))
    result = compute_suv(inputs, allow_uncorrected=True)
    assert result.factor == pytest.approx(4e-4, rel=1e-12)
    assert any("NOT quantitative" in n for n in result.notes)
    none = suv_inputs_from_mapping(timed(CorrectedImage=["ATTN"], DecayCorrection="NONE"))
    assert compute_suv(none, allow_uncorrected=True).factor == pytest.approx(4e-4, rel=1e-12)


def test_mixed_series_values_name_both_instances():
    instances = timed() + timed(PatientWeight=81)
    with pytest.raises(DicomError, match=r"mixed series: PatientWeight \(0010,1030\) is 80.0 in a.dcm but 81.0 in "
                                         r"b.dcm"):
        suv_inputs_from_mapping(instances, "dir", ["a.dcm", "b.dcm"])


def test_unknown_kind_is_refused():
    with pytest.raises(InputError, match="unknown SUV kind 'lean'"):
        compute_suv(suv_inputs_from_mapping(timed()), "lean")


# --- pydicom datasets: nested sequence and vendor private tags ------------------------------------------

def pet_dataset(units="BQML", **changes) -> Dataset:
    ds = Dataset()
    ds.Units = units
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.DecayCorrection = "START"
    ds.SeriesDate, ds.SeriesTime = "20240101", "100000"
    ds.AcquisitionDate, ds.AcquisitionTime = "20240101", "100000"
    ds.PatientWeight, ds.PatientSex, ds.PatientSize = "80", "M", "1.8"
    item = Dataset()
    item.RadionuclideTotalDose = "400000000"
    item.RadionuclideHalfLife = "3600"
    item.RadiopharmaceuticalStartDateTime = "20240101090000"
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_datasets_read_nested_radiopharmaceutical_values():
    result = compute_suv(suv_inputs_from_datasets([pet_dataset(), pet_dataset()], "dir", ["a.dcm", "b.dcm"]))
    assert result.factors == pytest.approx((4e-4, 4e-4), rel=1e-12)


def test_datasets_read_philips_and_ge_private_tags_by_creator():
    ds = pet_dataset("CNTS")
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)  # lands in (7053,10xx)
    block.add_new(0x00, "DS", "0.000728")
    block.add_new(0x09, "DS", "1.5")
    assert compute_suv(suv_inputs_from_datasets([ds], "dir")).factor == pytest.approx(7.28e-4, rel=1e-12)
    bqml = pet_dataset()
    bqml.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "0.5")
    assert compute_suv(suv_inputs_from_datasets([bqml], "dir")).factor == pytest.approx(4e-4, rel=1e-12)
    ge = pet_dataset(SeriesTime="110000")  # series after acquisition: GE private scan date-time decides
    ge.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", "20240101093000")
    result = compute_suv(suv_inputs_from_datasets([ge], "dir"))
    assert result.factor == pytest.approx(80_000 / (400e6 * 2**-0.5), rel=1e-12)


def test_datasets_with_several_radiopharmaceuticals_are_refused():
    ds = pet_dataset()
    ds.RadiopharmaceuticalInformationSequence.append(Dataset())
    with pytest.raises(DicomError, match=r"RadiopharmaceuticalInformationSequence \(0054,0016\) holds 2 items"):
        suv_inputs_from_datasets([ds], "dir", ["x.dcm"])


def test_utc_offset_is_reported_not_silently_applied():
    inputs = suv_inputs_from_mapping(timed(RadiopharmaceuticalStartDateTime="20240101090000+0100"))
    result = compute_suv(inputs)
    assert result.factor == pytest.approx(4e-4, rel=1e-12)
    assert any("UTC offset +0100" in n for n in result.notes)
    assert math.isfinite(result.decay_time_s)
