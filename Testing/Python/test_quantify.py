"""GTV quantification: SUVmax, SUVpeak, SUVmean, MTV, TLG against analytic values."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.errors import GeometryError, InputError, UnitsError
from PETDosePaintingLib.imaging.image import Units, image_from_array, make_grid
from PETDosePaintingLib.phantom.shapes import sphere_fraction, sphere_volume_ml
from PETDosePaintingLib.segmentation.common import SegmentationResult
from PETDosePaintingLib.segmentation.quantify import peak_kernel, quantify_gtv, quantify_result

GRID = make_grid((40, 40, 40), (2.0, 2.0, 2.0), origin=(-39.0, -39.0, -39.0))
CENTRE = (0.3, -0.2, 0.5)
UPTAKE = 5.0
RADIUS = 15.0


def uniform_sphere() -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """A binary (voxelised at half coverage) sphere of SUV 5 on SUV 1, and its mask."""
    inside = sphere_fraction(GRID, CENTRE, RADIUS) >= 0.5
    suv = image_from_array(np.where(inside, UPTAKE, 1.0).astype(np.float32), GRID, units=Units.SUV_BW)
    return suv, image_from_array(inside, GRID), inside


def test_uniform_sphere_quantities_are_the_analytic_ones():
    suv, gtv, inside = uniform_sphere()
    q = quantify_gtv(suv, gtv, background=1.0, background_definition="known")
    assert q.suv_max == UPTAKE and q.suv_mean == pytest.approx(UPTAKE) and q.suv_sd == pytest.approx(0.0)
    # SUVpeak: a 12 mm sphere fits entirely inside a 15 mm sphere, so its mean is the uptake itself.
    assert q.suv_peak == pytest.approx(UPTAKE, rel=1e-9)
    assert np.linalg.norm(np.subtract(q.suv_peak_lps, CENTRE)) <= RADIUS - 6.0
    # MTV: voxel count x 8 mm3; a sphere voxelised at half coverage keeps its volume to within a few %.
    assert q.mtv_ml == pytest.approx(inside.sum() * 0.008)
    assert q.mtv_ml == pytest.approx(sphere_volume_ml(RADIUS), rel=0.03)
    assert q.tlg == pytest.approx(UPTAKE * q.mtv_ml)
    assert q.n_voxels == int(inside.sum())
    assert q.background == 1.0 and q.suv_max_to_background == 5.0 and q.background_definition == "known"
    assert q.units == Units.SUV_BW
    assert set(q.as_dict()) >= {"suv_max", "suv_peak", "suv_mean", "mtv_ml", "tlg", "background"}


def test_suvpeak_of_a_point_source_is_its_activity_spread_over_the_sphere():
    # A single voxel of value A: the best 12 mm sphere average is A x (voxel volume / sphere volume),
    # the kernel weights being exact partial-voxel fractions that sum to the sphere's volume.
    values = np.zeros(GRID.GetSize()[::-1], np.float32)
    values[20, 20, 20] = 100.0
    suv = image_from_array(values, GRID, units=Units.SUV_BW)
    gtv = image_from_array(values > 0, GRID)
    q = quantify_gtv(suv, gtv)
    assert q.suv_peak == pytest.approx(100.0 * 8.0 / (np.pi / 6.0 * 12.0**3), rel=0.01)
    assert q.suv_peak_lps == pytest.approx(GRID.TransformIndexToPhysicalPoint((20, 20, 20)))
    assert q.suv_max_lps == pytest.approx(GRID.TransformIndexToPhysicalPoint((20, 20, 20)))


def test_peak_kernel_is_normalised_and_symmetric():
    kernel = peak_kernel((3.0, 2.0, 2.0), 12.0)
    assert kernel.sum() == pytest.approx(1.0)
    assert np.allclose(kernel, kernel[::-1, ::-1, ::-1])
    assert kernel.shape[0] < kernel.shape[1]  # fewer slices along the coarser axis


def test_suvpeak_may_be_off_the_hottest_voxel():
    # A hot single voxel (10) next to a broad plateau (6): the plateau's 12 mm mean wins.
    values = np.ones(GRID.GetSize()[::-1], np.float32)
    plateau = sphere_fraction(GRID, (10.0, 0.0, 0.0), 9.0) >= 0.5
    values[plateau] = 6.0
    values[20, 20, 5] = 10.0
    gtv = plateau.copy()
    gtv[20, 20, 5] = True
    q = quantify_gtv(image_from_array(values, GRID, units=Units.SUV_BW), image_from_array(gtv, GRID))
    assert q.suv_max == 10.0
    assert q.suv_peak == pytest.approx(6.0)


def test_background_from_a_reference_voi_and_from_a_segmentation_result():
    suv, gtv, _ = uniform_sphere()
    voi = np.zeros(GRID.GetSize()[::-1], bool)
    voi[:5, :5, :5] = True
    q = quantify_gtv(suv, gtv, background=image_from_array(voi, GRID))
    assert q.background == pytest.approx(1.0) and "reference VOI of 125 voxels" in q.background_definition
    result = SegmentationResult("a50p", gtv, background=1.0,
                                details={"background": {"definition": "median of a shell"}})
    q2 = quantify_result(suv, result)
    assert q2.background == 1.0 and q2.background_definition == "median of a shell"
    assert quantify_result(suv, SegmentationResult("threshold", gtv)).background is None


def test_bad_input():
    suv, gtv, inside = uniform_sphere()
    bq = sitk.Image(suv)
    bq.SetMetaData("PETDP_Units", Units.BQML)
    with pytest.raises(UnitsError):
        quantify_gtv(bq, gtv)
    assert quantify_gtv(bq, gtv, require_suv=False).units == Units.BQML
    with pytest.raises(InputError, match="empty"):
        quantify_gtv(suv, image_from_array(np.zeros_like(inside), GRID))
    with pytest.raises(GeometryError):
        quantify_gtv(suv, image_from_array(np.ones((5, 5, 5), bool), make_grid((5, 5, 5), (2.0, 2.0, 2.0))))
    array = sitk.GetArrayFromImage(suv)
    array[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        quantify_gtv(image_from_array(array, GRID, units=Units.SUV_BW), gtv)
    with pytest.raises(InputError, match="peak_diameter_mm"):
        quantify_gtv(suv, gtv, peak_diameter_mm=0.0)
    with pytest.raises(InputError, match="background"):
        quantify_gtv(suv, gtv, background=float("nan"))
