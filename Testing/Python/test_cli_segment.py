"""``petdp segment`` and ``petdp calibrate``: the command-line contract of the segmentation suite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.cli.main import main
from PETDosePaintingLib.imaging.filters import gaussian_blur
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.segmentation.registry import method_names

RADIUS = 14.0
GRID = make_grid((40, 40, 32), (3.0, 3.0, 3.0), origin=(-58.5, -58.5, -46.5))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A blurred, noisy sphere (SUV 8 on 1) with its CT, as files."""
    folder = tmp_path_factory.mktemp("segment_case")
    fraction = sphere_fraction(GRID, (2.0, -1.0, 0.5), RADIUS)
    blurred = sitk.GetArrayFromImage(gaussian_blur(image_from_array((1 + 7 * fraction).astype(np.float32), GRID), 6.0))
    rng = np.random.default_rng(4)
    noisy = np.clip(blurred * (1 + 0.05 * rng.standard_normal(blurred.shape)), 0, None).astype(np.float32)
    pet = folder / "pet.nrrd"
    sitk.WriteImage(image_from_array(noisy, GRID, units=Units.SUV_BW), str(pet))
    unitless = folder / "pet_no_units.nrrd"
    sitk.WriteImage(image_from_array(noisy, GRID), str(unitless))
    ct = folder / "ct.nrrd"
    sitk.WriteImage(image_from_array(np.where(fraction > 0.5, 60, 40).astype(np.int16), GRID, units=Units.HU), str(ct))
    return {"dir": folder, "pet": pet, "unitless": unitless, "ct": ct}


@pytest.mark.parametrize("method", method_names())
def test_every_method_runs_from_the_command_line_with_only_a_seed(case, method, tmp_path, capsys):
    out = tmp_path / f"{method}.nrrd"
    args = ["segment", str(case["pet"]), "--method", method, "--seed", "2", "-1", "0.5", "--out", str(out),
            "--fwhm", "6", "--json", str(tmp_path / "r.json")]
    if method == "randomwalker":
        args += ["--ct", str(case["ct"])]
    code = main(args)
    err = capsys.readouterr().err
    if code == 2:  # a method may refuse a case, but only with one clear line saying why
        assert err.count("\n") == 1 and "error" in err
        pytest.skip(f"{method} refused: {err.strip()}")
    assert code == 0, err
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == GRID.GetSize() and np.allclose(mask.GetOrigin(), GRID.GetOrigin())
    assert np.allclose(mask.GetSpacing(), GRID.GetSpacing()) and mask.GetDirection() == GRID.GetDirection()
    volume = np.count_nonzero(sitk.GetArrayFromImage(mask)) * 27 / 1000
    # Every method finds this lesion: within a factor of two of 4/3 pi r^3 (their accuracy is tested per method).
    assert 0.5 < volume / sphere_volume_ml(RADIUS) < 2.0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["method"] == method and result["volume_ml"] == pytest.approx(volume)


def test_bad_requests_give_one_clear_line_and_exit_2(case, tmp_path, capsys):
    out = tmp_path / "m.nrrd"
    cases = [
        (["--method", "threshold", "--seed", "500", "0", "0"], "outside the image"),
        (["--method", "no_such_method", "--seed", "2", "-1", "0.5"], "unknown segmentation method"),
        (["--method", "randomwalker", "--seed", "2", "-1", "0.5"], "needs a CT"),
        (["--method", "threshold", "--fraction", "0.4", "--absolute", "2.5", "--seed", "2", "-1", "0.5"],
         "either a fraction"),
        (["--method", "threshold"], "seed"),
    ]
    for extra, message in cases:
        assert main(["segment", str(case["pet"]), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not out.exists()
    # An absolute SUV threshold needs SUV units; a unit-less file is refused until the units are declared.
    args = ["segment", str(case["unitless"]), "--method", "threshold", "--absolute", "2.5", "--seed", "2", "-1",
            "0.5", "--out", str(out)]
    assert main(args) == 2
    assert "units" in capsys.readouterr().err
    assert main([*args, "--units", "SUVbw"]) == 0
    # Never overwrite the input.
    assert main(["segment", str(case["pet"]), "--method", "threshold", "--seed", "2", "-1", "0.5",
                 "--out", str(case["pet"])]) == 2
    assert "overwrite the input" in capsys.readouterr().err


def test_calibration_feeds_segment(case, tmp_path, capsys):
    cal = tmp_path / "cal.json"
    assert main(["calibrate", "--gaussian-fwhm", "6", "--noise-cov", "0.05", "--voxel", "3", "--volumes", "2", "10",
                 "30", "--sbrs", "4", "8", "--out", str(cal)]) == 0
    data = json.loads(cal.read_text())
    assert {"nestle", "schaefer", "daisne", "iterative"} <= set(data["methods"])
    out = tmp_path / "m.nrrd"
    assert main(["segment", str(case["pet"]), "--method", "daisne", "--calibration", str(cal), "--seed", "2", "-1",
                 "0.5", "--out", str(out)]) == 0
    volume = np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))) * 27 / 1000
    # Calibrated on the same imaging model (Gaussian 6 mm): Daisne's curve now recovers the sphere volume.
    assert volume / sphere_volume_ml(RADIUS) == pytest.approx(1.0, abs=0.15)
