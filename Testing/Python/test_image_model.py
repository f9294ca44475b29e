"""The image model: units in metadata, geometry checks, point lookup, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import GeometryError, InputError, OutputError, UnitsError
from PETDosePaintingLib.imaging.image import (
    Units,
    check_same_geometry,
    get_units,
    image_from_array,
    make_grid,
    mask_volume_ml,
    point_to_index,
    require_units,
)
from PETDosePaintingLib.imaging.io import ensure_not_input, read_image, write_image, write_json
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml


def test_units_survive_nrrd_and_mha_round_trip(tmp_path):
    image = image_from_array(np.ones((3, 4, 5), np.float32), spacing=(2, 2, 3), units=Units.SUV_BW)
    for name in ("pet.nrrd", "pet.mha"):
        back = read_image(write_image(image, tmp_path / name))
        assert get_units(back) == "SUVbw"
        assert back.GetSpacing() == (2.0, 2.0, 3.0)


def test_require_units_names_what_is_missing():
    image = image_from_array(np.ones((2, 2, 2), np.float32))
    with pytest.raises(UnitsError, match="no units recorded"):
        require_units(image, {Units.SUV_BW}, "PET image")
    assert require_units(set_units_copy(image, Units.HU), {Units.HU}) == "HU"


def set_units_copy(image, units):
    out = sitk.Image(image)
    out.SetMetaData("PETDP_Units", units)
    return out


def test_geometry_mismatch_is_refused_with_both_names():
    a = make_grid((10, 10, 10), (2, 2, 2))
    b = make_grid((10, 10, 10), (2, 2, 2), origin=(0.5, 0, 0))
    check_same_geometry(a, make_grid((10, 10, 10), (2, 2, 2)))
    with pytest.raises(GeometryError, match="PET.*GTV"):
        check_same_geometry(a, b, "PET", "GTV")


def test_point_to_index_and_outside_point():
    grid = make_grid((10, 20, 30), (2, 3, 4), origin=(-10, -20, -30))
    assert point_to_index(grid, (-10 + 2 * 3, -20 + 3 * 5, -30 + 4 * 7)) == (3, 5, 7)
    with pytest.raises(InputError, match="outside the image"):
        point_to_index(grid, (500, 0, 0), "seed")
    with pytest.raises(InputError, match="finite"):
        point_to_index(grid, (np.nan, 0, 0))


def test_sphere_fraction_volume_matches_analytic():
    grid = make_grid((40, 40, 40), (2.0, 2.0, 2.0), origin=(-39, -39, -39))
    fraction = sphere_fraction(grid, (0.3, -0.7, 1.1), 15.0)
    volume = fraction.sum() * 8.0 / 1000.0
    assert volume == pytest.approx(sphere_volume_ml(15.0), rel=2e-3)
    mask = image_from_array(fraction >= 0.5, grid)
    assert mask_volume_ml(mask) == pytest.approx(sphere_volume_ml(15.0), rel=0.03)


def test_write_is_atomic_and_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json({"a": 1}, target)
    with pytest.raises(ValueError):
        write_json({"a": float("nan")}, target)  # NaN is refused
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_output_over_input_is_refused(tmp_path):
    src = tmp_path / "pet.nrrd"
    src.write_text("x")
    with pytest.raises(OutputError, match="overwrite the input"):
        ensure_not_input(src, [src])
    with pytest.raises(OutputError):
        ensure_not_input(tmp_path / "sub" / "y.nrrd", [tmp_path])
    ensure_not_input(tmp_path / "other.nrrd", [src, None])


def test_unreadable_and_unknown_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage")
    with pytest.raises(InputError, match="broken.nrrd"):
        read_image(bad)
    with pytest.raises(InputError, match="unknown image format"):
        read_image(_touch(tmp_path / "x.txt"))
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.nrrd")


def _touch(path):
    path.write_text("")
    return path
