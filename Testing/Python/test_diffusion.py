"""ADC from diffusion-weighted images: exact on noise-free mono-exponential signals, WLS vs OLS, noise-floor
mask, clamp, b-value inputs (metadata, DICOM standard and vendor tags), refusals, and ``petdp adc``."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from PETDosePaintingLib.cli.main import COMMAND_MODULES, main
from PETDosePaintingLib.comparison.diffusion import (
    BVALUE_KEY,
    METHODS,
    DiffusionImage,
    compute_adc,
    dicom_b_value,
    diffusion_images,
    estimate_noise_sd,
    read_dwi,
    read_dwi_dicom,
)
from PETDosePaintingLib.errors import GeometryError, InputError
from PETDosePaintingLib.imaging.image import Units, get_units, image_from_array

B_VALUES = (0.0, 50.0, 500.0, 800.0, 1000.0)
SPACING, ORIGIN = (2.0, 2.0, 4.0), (-10.0, -20.0, 30.0)


def _truth(shape=(3, 4, 5)):
    """A known ADC field (0.4e-3 to 2.9e-3 mm2/s) and S0 field (200 to ~1300 a.u.) on a small grid."""
    k, j, i = np.indices(shape)
    adc = 0.4e-3 + 2.5e-3 * (i + shape[2] * (j + shape[1] * k)) / (np.prod(shape) - 1)
    s0 = 200.0 + 50.0 * i + 120.0 * j + 300.0 * k
    return adc, s0


def _dwi(adc, s0, b_values=B_VALUES, **kw):
    """Noise-free mono-exponential images S(b) = S0 exp(-b ADC) with the b-value in metadata."""
    out = []
    for b in b_values:
        image = image_from_array(s0 * np.exp(-b * adc), spacing=SPACING, origin=ORIGIN, units=Units.ARBITRARY, **kw)
        image.SetMetaData(BVALUE_KEY, f"{b:g}")
        out.append(image)
    return out


def _array(image):
    return sitk.GetArrayFromImage(image).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_noise_free_mono_exponential_gives_the_adc_and_s0_exactly(method):
    adc, s0 = _truth()
    dwi = diffusion_images(_dwi(adc, s0))  # b-values from the PETDP_BValue metadata
    assert [d.b_value for d in dwi] == list(B_VALUES)
    result = compute_adc(dwi, method=method, noise_sd=1.0)
    assert result.method == method and get_units(result.adc) == Units.ADC == "mm2/s"
    assert result.n_valid == adc.size and _array(result.mask).all()
    # float32 images: relative precision ~1e-7 on S, so ~1e-7 / (1000 s/mm2) on the ADC.
    np.testing.assert_allclose(_array(result.adc), adc, rtol=0, atol=2e-9)
    np.testing.assert_allclose(_array(result.s0), s0, rtol=1e-5)
    assert result.b_values == ((0.0, 1000.0) if method == "two-point" else B_VALUES)
    assert result.adc.GetSpacing() == SPACING and result.adc.GetOrigin() == ORIGIN
    if method == "two-point":
        assert any("ignored 50, 500, 800" in note for note in result.notes)
    assert any("perfusion" in note for note in result.notes)  # b = 0 and 50 were used


@pytest.mark.parametrize("method", METHODS)
def test_b_value_selection_drops_perfusion_weighted_b_values(method):
    adc, s0 = _truth()
    dwi = diffusion_images(_dwi(adc, s0))
    result = compute_adc(dwi, method=method, b_min=150, noise_sd=1.0)
    assert result.b_values == ((500.0, 1000.0) if method == "two-point" else (500.0, 800.0, 1000.0))
    assert not any("perfusion" in note for note in result.notes)
    np.testing.assert_allclose(_array(result.adc), adc, rtol=0, atol=5e-9)
    # S0 is the extrapolation to b = 0 of the mono-exponential through the selected points: exact here too.
    np.testing.assert_allclose(_array(result.s0), s0, rtol=2e-5)
    explicit = compute_adc(dwi, method=method, select=[0, 800], noise_sd=1.0)
    assert explicit.b_values == (0.0, 800.0)
    np.testing.assert_allclose(_array(explicit.adc), adc, rtol=0, atol=5e-9)


def test_with_two_b_values_all_fits_are_the_two_point_formula():
    # Through two points the (weighted) least-squares line is the line through them, whatever the weights.
    rng = np.random.default_rng(5)
    s_low = rng.uniform(300, 900, (2, 3, 4))
    s_high = s_low * rng.uniform(0.2, 0.9, s_low.shape)
    dwi = [DiffusionImage(100.0, image_from_array(s_low)), DiffusionImage(900.0, image_from_array(s_high))]
    expected = np.log(s_low.astype(np.float32) / s_high.astype(np.float32)) / 800.0
    for method in METHODS:
        result = compute_adc(dwi, method=method, noise_factor=0, adc_range=None)
        np.testing.assert_allclose(_array(result.adc), expected, rtol=1e-5)


def test_repeated_b_values_are_averaged_by_two_point_and_used_by_least_squares():
    adc, s0 = _truth()
    images = _dwi(adc, s0, (0.0, 1000.0, 1000.0))
    dwi = [DiffusionImage(b, img) for b, img in zip((0.0, 1000.0, 1000.0), images, strict=True)]
    for method in METHODS:
        result = compute_adc(dwi, method=method, noise_sd=1.0)
        assert result.b_values == (0.0, 1000.0)
        np.testing.assert_allclose(_array(result.adc), adc, rtol=0, atol=2e-9)


def test_wls_beats_ols_on_noisy_low_signal_voxels():
    """Monte Carlo (fixed seed): Rician noise, S0 = 12 sigma, ADC 1e-3, b = 0..1000. The log transform gives the
    low-signal high-b points a larger variance (sigma^2 / S^2); weighting by S^2 lowers the estimator's error."""
    rng = np.random.default_rng(20240611)
    b_values = (0.0, 200.0, 400.0, 600.0, 800.0, 1000.0)
    adc_true, s0, sd, shape = 1.0e-3, 12.0, 1.0, (8, 50, 50)
    dwi = []
    for b in b_values:
        s = s0 * np.exp(-b * adc_true)
        magnitude = np.hypot(s + sd * rng.standard_normal(shape), sd * rng.standard_normal(shape))
        dwi.append(DiffusionImage(b, image_from_array(magnitude)))
    rmse = {}
    for method in ("ols", "wls"):
        result = compute_adc(dwi, method=method, noise_factor=0, adc_range=None)
        assert result.n_valid == np.prod(shape)
        rmse[method] = float(np.sqrt(np.mean((_array(result.adc) - adc_true) ** 2)))
    assert rmse["wls"] < 0.9 * rmse["ols"]
    measured = compute_adc(dwi, method="wls", wls_weights="measured", noise_factor=0, adc_range=None)
    assert float(np.sqrt(np.mean((_array(measured.adc) - adc_true) ** 2))) < rmse["ols"]


# --------------------------------------------------------------------------------------------------
# Noise floor, clamp, invalid voxels
# --------------------------------------------------------------------------------------------------


def _phantom_with_air(rng, sd=10.0, shape=(12, 40, 40)):
    """A tissue block (S0 1000, ADC 1e-3) in air; Rician noise of SD ``sd`` per channel everywhere."""
    tissue = np.zeros(shape, dtype=bool)
    tissue[3:9, 12:28, 12:28] = True
    images = []
    for b in (0.0, 500.0, 1000.0):
        s = np.where(tissue, 1000.0 * np.exp(-b * 1.0e-3), 0.0)
        images.append(image_from_array(np.hypot(s + sd * rng.standard_normal(shape), sd * rng.standard_normal(shape)),
                                       units=Units.ARBITRARY))
    return diffusion_images(images, (0.0, 500.0, 1000.0)), tissue


def test_noise_floor_mask_excludes_background_and_keeps_tissue():
    rng = np.random.default_rng(7)
    sd = 10.0
    dwi, tissue = _phantom_with_air(rng, sd)
    # The background estimate: Rayleigh median / sqrt(2 ln 2) over ~17,000 air voxels (SE ~0.5 %).
    estimate = estimate_noise_sd(dwi[0].image)
    assert estimate.sd == pytest.approx(sd, rel=0.03)
    for noise_sd in (None, sd):
        result = compute_adc(dwi, noise_sd=noise_sd)
        valid = _array(result.mask).astype(bool)
        assert valid[tissue].all()  # tissue: S(1000) = 368 = 37 SD, far above 3 SD
        # Air is Rayleigh: P(M >= k sigma) = exp(-k^2 / 2) = 1.1 % at k = 3.
        kept = valid[~tissue].mean()
        assert kept < 2 * np.exp(-3.0**2 / 2)
        assert result.n_below_noise_floor + result.n_nonpositive == np.count_nonzero(~valid)
        assert np.all(_array(result.adc)[~valid] == 0) and np.all(_array(result.s0)[~valid] == 0)
        np.testing.assert_allclose(_array(result.adc)[tissue].mean(), 1.0e-3, rtol=0.01)
    assert compute_adc(dwi, noise_sd=sd).noise_sd_source == "given"
    off = compute_adc(dwi, noise_factor=0)
    assert off.noise_sd is None and off.n_below_noise_floor == 0


def test_noise_estimate_refuses_a_masked_background():
    image = np.zeros((6, 30, 30))
    image[2:4, 10:20, 10:20] = 500.0
    with pytest.raises(InputError, match="zero"):
        estimate_noise_sd(image_from_array(image))


def test_clamp_and_non_positive_signals():
    s_low = np.array([[[100.0, 100.0, 100.0, 100.0]]])
    s_high = np.array([[[120.0, 100.0 * np.exp(-1.0 * 5e-3 * 1000 / 1), 50.0, 0.0]]])
    # voxel 0: signal rises with b (ADC < 0) -> clamped to 0; voxel 1: ADC 5e-3 -> clamped to 3.5e-3;
    # voxel 2: ADC ln 2 / 1000; voxel 3: zero signal -> invalid (ln undefined).
    dwi = [DiffusionImage(0.0, image_from_array(s_low)), DiffusionImage(1000.0, image_from_array(s_high))]
    result = compute_adc(dwi, method="ols", noise_factor=0)
    adc = _array(result.adc).ravel()
    np.testing.assert_allclose(adc, [0.0, 3.5e-3, np.log(2) / 1000, 0.0], rtol=1e-6, atol=1e-12)
    assert _array(result.mask).ravel().tolist() == [1, 1, 1, 0]
    assert (result.n_clamped_low, result.n_clamped_high, result.n_nonpositive) == (1, 1, 1)
    free = compute_adc(dwi, method="ols", noise_factor=0, adc_range=None)
    np.testing.assert_allclose(_array(free.adc).ravel()[:2], [-np.log(1.2) / 1000, 5e-3], rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_with_clear_errors():
    adc, s0 = _truth()
    images = _dwi(adc, s0, (0.0, 800.0))
    with pytest.raises(InputError, match="at least two distinct b-values"):
        compute_adc(diffusion_images(images[:1]))
    with pytest.raises(InputError, match="b_min=150"):
        compute_adc(diffusion_images(images), b_min=150)
    with pytest.raises(InputError, match=">= 0"):
        compute_adc([DiffusionImage(-5.0, images[0]), DiffusionImage(800.0, images[1])])
    with pytest.raises(InputError, match=">= 0"):
        diffusion_images(images, [-5.0, 800.0])
    with pytest.raises(InputError, match="method"):
        compute_adc(diffusion_images(images), method="nls")
    with pytest.raises(InputError, match="not among"):
        compute_adc(diffusion_images(images), select=[0, 500])
    shifted = sitk.Image(images[1])
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="one grid"):
        compute_adc([DiffusionImage(0.0, images[0]), DiffusionImage(800.0, shifted)])
    adc_map = image_from_array(adc, spacing=SPACING, origin=ORIGIN, units=Units.ADC)
    with pytest.raises(InputError, match="derived map"):
        compute_adc([DiffusionImage(0.0, images[0]), DiffusionImage(800.0, adc_map)])
    with pytest.raises(InputError, match="records PETDP_BValue = 800"):
        diffusion_images(images, [0.0, 1000.0])
    bare = image_from_array(s0)
    with pytest.raises(InputError, match="no b-value"):
        diffusion_images([bare, bare])


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------

_STUDY, _FRAME = generate_uid(), generate_uid()


def _write_mr_slice(path, values, k, series_uid, *, b_tag=None, implicit=False, instance=1):
    """One single-frame MR Image Storage file with pydicom: axial, 1.5 x 1.5 mm pixels, 5 mm slices."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "MR", "DWI-TEST", _STUDY
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.InstanceNumber = series_uid, _FRAME, instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-30.0, -40.0, 100.0 + 5.0 * k]
    ds.PixelSpacing = [1.5, 1.5]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = "0.05", "0"
    ds.PixelData = np.round(values / 0.05).astype(np.uint16).tobytes()
    if b_tag is not None:
        b_tag(ds)
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)


def _dicom_truth(shape=(4, 6, 5)):
    k, j, i = np.indices(shape)
    return 0.6e-3 + 1.5e-4 * i + 1.0e-4 * j + 0.5e-4 * k, 1500.0 + 100.0 * i - 80.0 * j + 60.0 * k


def _quantisation_bound(s0, adc, b_values):
    """Largest ADC error from storing S in steps of 0.05 (rounding error <= 0.025) for a two-point fit."""
    s = [s0 * np.exp(-b * adc) for b in b_values]
    return float(np.max(0.025 / s[0] + 0.025 / s[-1]) / (b_values[-1] - b_values[0]))


def test_dicom_one_series_with_several_b_values_in_diffusion_b_value(tmp_path):
    adc, s0 = _dicom_truth()
    uid = generate_uid()
    b_values = (0.0, 500.0, 1000.0)
    n = 0
    for b in b_values:  # interleave files so the order on disk says nothing
        for k in range(adc.shape[0]):
            def tag(ds, b=b):
                ds.DiffusionBValue = b
            n += 1
            _write_mr_slice(tmp_path / f"IM{(n * 7) % 13:03d}_{n}.dcm", s0[k] * np.exp(-b * adc[k]), k, uid, b_tag=tag,
                            instance=n)
    dwi = read_dwi_dicom(tmp_path)
    assert [d.b_value for d in dwi] == list(b_values)
    assert all(d.b_value_source == "DiffusionBValue (0018,9087)" for d in dwi)
    image = dwi[0].image
    assert image.GetSpacing() == (1.5, 1.5, 5.0) and image.GetOrigin() == (-30.0, -40.0, 100.0)
    result = compute_adc(dwi, method="two-point", noise_sd=1.0)
    np.testing.assert_allclose(_array(result.adc), adc, rtol=0, atol=_quantisation_bound(s0, adc, b_values))
    assert result.adc.GetMetaData("0020|0052") == _FRAME
    for method in ("wls", "ols"):  # least squares through three quantised points: within the same bound
        fitted = compute_adc(dwi, method=method, noise_sd=1.0)
        np.testing.assert_allclose(_array(fitted.adc), adc, rtol=0, atol=_quantisation_bound(s0, adc, b_values))


def test_dicom_siemens_private_tag_one_series_per_b_value_implicit_vr(tmp_path):
    adc, s0 = _dicom_truth()
    b_values = (50.0, 800.0)
    for b in b_values:
        uid = generate_uid()
        folder = tmp_path / f"series_b{b:g}"
        folder.mkdir()

        def tag(ds, b=b):
            block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
            block.add_new(0x0C, "IS", str(int(b)))
        for k in range(adc.shape[0]):
            _write_mr_slice(folder / f"{k}.dcm", s0[k] * np.exp(-b * adc[k]), k, uid, b_tag=tag, implicit=True,
                            instance=k + 1)
    dwi = read_dwi([tmp_path])  # a folder holding one sub-folder per b-value series
    assert [d.b_value for d in dwi] == list(b_values)
    assert all(d.b_value_source == "Siemens (0019,100C)" for d in dwi)
    result = compute_adc(dwi, noise_sd=1.0)
    np.testing.assert_allclose(_array(result.adc), adc, rtol=0, atol=_quantisation_bound(s0, adc, b_values))


def test_vendor_b_value_tags_are_read_by_private_creator():
    ge = Dataset()
    ge.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", ["1000000800", "8", "0", "0"])
    assert dicom_b_value(ge) == (800.0, "GE (0043,1039)")  # GE's 10^9 bias of multi-b scans removed
    ge_single = Dataset()
    ge_single.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", ["1000", "8", "0", "0"])
    assert dicom_b_value(ge_single)[0] == 1000.0
    philips = Dataset()
    philips.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "UN", struct.pack("<f", 600.0))
    assert dicom_b_value(philips) == (600.0, "Philips (2001,1003)")
    # The Siemens block reserved at (0019,0011) puts B_value at (0019,110C).
    moved = Dataset()
    moved.add_new(0x00190010, "LO", "SOME OTHER VENDOR")
    moved.add_new(0x0019100C, "IS", "999")  # belongs to the other creator: never read as a b-value
    assert dicom_b_value(moved) is None
    moved.add_new(0x00190011, "LO", "SIEMENS MR HEADER")
    moved.add_new(0x0019110C, "IS", "700")
    assert dicom_b_value(moved) == (700.0, "Siemens (0019,100C)")
    standard = Dataset()
    standard.DiffusionBValue = 400.0
    standard.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "999")
    assert dicom_b_value(standard) == (400.0, "DiffusionBValue (0018,9087)")  # the standard tag comes first
    assert dicom_b_value(Dataset()) is None


def test_dicom_refusals(tmp_path):
    _, s0 = _dicom_truth((2, 4, 4))
    uid = generate_uid()
    (tmp_path / "dup").mkdir()

    def tag(ds):
        ds.DiffusionBValue = 1000.0
    for n, k in enumerate((0, 1, 1)):  # two images at one position and one b-value: diffusion directions
        _write_mr_slice(tmp_path / "dup" / f"{n}.dcm", s0[k], k, uid, b_tag=tag, instance=n + 1)
    with pytest.raises(InputError, match="same position"):
        read_dwi_dicom(tmp_path / "dup")
    (tmp_path / "nob").mkdir()
    for k in range(2):
        _write_mr_slice(tmp_path / "nob" / f"{k}.dcm", s0[k], k, generate_uid(), instance=k + 1)
    with pytest.raises(InputError, match="records a b-value"):
        read_dwi_dicom(tmp_path / "nob")


# --------------------------------------------------------------------------------------------------
# The digital patient and the command line
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patient_dwi(tmp_path_factory):
    """Noise-free DWI of the quick digital-patient anatomy, written as the patient writer does (dwi_b<b-value>.nrrd
    with PETDP_BValue), and its ADC truth."""
    from PETDosePaintingLib.phantom.anatomy import AnatomyConfig, build_anatomy
    from PETDosePaintingLib.phantom.modalities import DWIConfig, simulate_dwi

    anatomy = build_anatomy(AnatomyConfig.quick())
    labels = image_from_array(anatomy.labels, anatomy.label_image, units=Units.LABEL)
    result = simulate_dwi(labels, DWIConfig(snr_b0=None))
    folder = tmp_path_factory.mktemp("dwi")
    files = []
    for b, image in sorted(result.images.items()):
        tagged = sitk.Image(image)
        tagged.SetMetaData(BVALUE_KEY, f"{b:g}")
        files.append(folder / f"dwi_b{round(b):04d}.nrrd")
        sitk.WriteImage(tagged, str(files[-1]))
    return files, result


def test_digital_patient_adc_from_files_equals_the_truth(patient_dwi, tmp_path):
    files, truth = patient_dwi
    assert "adc" in COMMAND_MODULES
    out, s0_out, mask_out, js = (tmp_path / n for n in ("adc.nrrd", "s0.nrrd", "valid.nrrd", "adc.json"))
    code = main(["adc", *map(str, files), "--out", str(out), "--s0", str(s0_out), "--mask", str(mask_out),
                 "--json", str(js), "--noise-sd", "1e-3"])
    assert code == 0
    adc = sitk.ReadImage(str(out))
    assert get_units(adc) == "mm2/s"
    s0 = _array(truth.images[0.0])
    # Where a DWI voxel holds one tissue the noise-free signal is exactly mono-exponential with the truth ADC.
    pure = _array(truth.homogeneous).astype(bool) & (s0 > 1.0)
    assert pure.sum() > 1000
    np.testing.assert_allclose(_array(adc)[pure], _array(truth.adc_truth)[pure], rtol=1e-4, atol=1e-9)
    assert sitk.ReadImage(str(mask_out)).GetPixelID() == sitk.sitkUInt8
    summary = json.loads(js.read_text())
    assert summary["b_values_s_per_mm2"] == list(B_VALUES) and summary["units"] == "mm2/s"
    assert summary["method"] == "wls" and summary["noise_sd"] == 1e-3


def test_adc_command_refuses_bad_input_and_writes_nothing(patient_dwi, tmp_path, capsys):
    files, _ = patient_dwi
    out = tmp_path / "adc.nrrd"
    cases = [
        ([str(files[3])], "at least two distinct b-values"),  # one b-value
        ([str(files[0]), str(files[3]), "--bvalues", "0", "-800"], ">= 0"),  # negative b-value
        ([str(files[0]), str(files[3]), "--bmin", "150"], "at least two distinct"),
    ]
    moved = sitk.ReadImage(str(files[4]))
    moved.SetOrigin((5.0, 5.0, 5.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nrrd"))
    cases.append(([str(files[0]), str(tmp_path / "moved.nrrd")], "one grid"))  # different grids
    bare = sitk.ReadImage(str(files[0]))
    bare.EraseMetaData(BVALUE_KEY)
    sitk.WriteImage(bare, str(tmp_path / "bare.nrrd"))
    cases.append(([str(tmp_path / "bare.nrrd"), str(files[4])], "no b-value"))
    for args, message in cases:
        code = main(["adc", *args, "--out", str(out), "--mask", str(tmp_path / "m.nrrd")])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert message in err, err
        assert not out.exists() and not (tmp_path / "m.nrrd").exists()
    assert main(["adc", str(files[0]), str(files[4]), "--out", str(files[0])]) == 2  # would overwrite an input
