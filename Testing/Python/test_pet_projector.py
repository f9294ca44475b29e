"""The strip-integral parallel-beam projector: analytic chords, an independent radon, exact adjoint."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import radon

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import make_grid
from PETDosePaintingLib.phantom.projector import PlaneGrid, SinogramGeometry, get_projector, system_matrix
from PETDosePaintingLib.phantom.shapes import ellipsoid_fraction


def _disk(grid: PlaneGrid, radius: float, centre=(0.0, 0.0)) -> np.ndarray:
    """Area fraction of each pixel inside a disk (the library's supersampled partial-volume model)."""
    ref = make_grid((grid.nx, grid.ny, 1), (grid.dx_mm, grid.dy_mm, 1.0), (grid.x0_mm, grid.y0_mm, 0.0))
    return ellipsoid_fraction(ref, (*centre, 0.0), (radius, radius, 1e6), supersample=9)[0]


def _bin_averaged_chord(s: np.ndarray, w: float, radius: float) -> np.ndarray:
    """Mean over [s - w/2, s + w/2] of the chord 2 sqrt(R^2 - s^2): F(s) = s sqrt(R^2-s^2) + R^2 asin(s/R)."""
    def primitive(t):
        t = np.clip(t, -radius, radius)
        return t * np.sqrt(radius**2 - t**2) + radius**2 * np.arcsin(t / radius)
    return (primitive(s + w / 2) - primitive(s - w / 2)) / w


def test_uniform_disk_projects_to_the_analytic_chord_length():
    grid = PlaneGrid.centred(101, 101, 1.0)
    geometry = SinogramGeometry(n_angles=36, n_bins=75, bin_width_mm=2.0)
    radius = 40.0
    sino = get_projector(grid, geometry).forward(_disk(grid, radius))
    s = geometry.bin_centres_mm
    expected = _bin_averaged_chord(s, geometry.bin_width_mm, radius)
    # Every angle sees the same profile: the bin mean of 2 sqrt(R^2 - s^2) (mm), up to the pixelation.
    assert np.abs(sino - expected).max() < 0.01 * 2 * radius
    # Away from the rim, the plain chord length at the bin centre within 0.5 %.
    inner = np.abs(s) < radius - 5
    chord = 2 * np.sqrt(radius**2 - s[inner] ** 2)
    assert np.abs(sino[:, inner] / chord - 1).max() < 0.005


def test_each_view_conserves_the_object_area_and_pixels_project_to_their_footprint():
    grid = PlaneGrid.centred(31, 21, 2.0, 3.0)  # rectangular pixels, rectangular grid
    geometry = SinogramGeometry.covering(62, 63, n_angles=12, bin_width_mm=1.5)
    matrix = system_matrix(grid, geometry)
    # Sum over the bins of one view x bin width = the pixel area (dx dy), for every pixel and view.
    per_view = np.asarray(matrix.sum(axis=0)).ravel() * geometry.bin_width_mm / geometry.n_angles
    assert np.allclose(per_view, 2.0 * 3.0, rtol=1e-5)
    # At 0 degrees a pixel centred on the axis (x in [-1, 1] mm) covers bins by overlap length x dy / w.
    centre_pixel = (grid.ny // 2) * grid.nx + grid.nx // 2
    view0 = matrix[: geometry.n_bins, centre_pixel].toarray().ravel()
    edges = geometry.bin_centres_mm[:, None] + np.array([-0.75, 0.75])[None, :]
    overlap = np.clip(np.minimum(edges[:, 1], 1.0) - np.maximum(edges[:, 0], -1.0), 0, None)
    assert np.allclose(view0, overlap * 3.0 / 1.5, atol=1e-6)


def test_off_axis_disk_on_anisotropic_pixels_is_shifted_by_its_projected_centre():
    grid = PlaneGrid(nx=180, ny=480, dx_mm=0.5, dy_mm=0.25, x0_mm=-44.75, y0_mm=-59.875)
    geometry = SinogramGeometry(n_angles=8, n_bins=90, bin_width_mm=2.0)
    cx, cy, radius = 10.0, -6.0, 25.0
    sino = get_projector(grid, geometry).forward(_disk(grid, radius, (cx, cy)))
    for a, theta in enumerate(geometry.angles_rad):
        s0 = cx * np.cos(theta) + cy * np.sin(theta)  # s = x cos(theta) + y sin(theta)
        expected = _bin_averaged_chord(geometry.bin_centres_mm - s0, geometry.bin_width_mm, radius)
        assert np.abs(sino[a] - expected).max() < 0.005 * 2 * radius


def test_strip_integrals_are_exact_for_pixelated_images():
    # A piecewise-constant image and the same image split into 4 x 8 sub-pixels have the same integral
    # over every strip: the projections agree to rounding, whatever the angle.
    grid = PlaneGrid(nx=30, ny=20, dx_mm=1.0, dy_mm=2.0, x0_mm=-14.5, y0_mm=-19.0)
    fine = PlaneGrid(nx=120, ny=160, dx_mm=0.25, dy_mm=0.25, x0_mm=-14.875, y0_mm=-19.875)
    geometry = SinogramGeometry(n_angles=17, n_bins=40, bin_width_mm=1.3)
    image = np.random.default_rng(7).random((20, 30))
    coarse = get_projector(grid, geometry).forward(image)
    split = get_projector(fine, geometry).forward(np.kron(image, np.ones((8, 4))))
    assert np.abs(coarse - split).max() < 1e-4 * np.abs(coarse).max()


def test_agrees_with_skimage_radon_on_an_asymmetric_image():
    n = 65  # odd: skimage's rotation centre (n // 2) is the grid centre
    grid = PlaneGrid.centred(n, n, 1.0)
    geometry = SinogramGeometry(n_angles=60, n_bins=n, bin_width_mm=1.0)
    x, y = grid.pixel_centres_mm()
    image = (((x - 8) / 14) ** 2 + ((y + 5) / 7) ** 2 <= 1).astype(float)
    image += 0.5 * ((np.abs(x + 10) < 5) & (np.abs(y - 12) < 4))
    ours = get_projector(grid, geometry).forward(image)
    # skimage projects onto s = x cos(phi) - y sin(phi) with rows pointing down: our theta is its -phi.
    reference = radon(image, theta=-np.degrees(geometry.angles_rad), circle=True).T
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.999
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 0.02


def test_uniform_mu_disk_attenuates_as_exp_of_mu_times_chord():
    grid = PlaneGrid.centred(161, 161, 1.0)
    geometry = SinogramGeometry(n_angles=24, n_bins=80, bin_width_mm=2.0)
    mu_per_mm, radius = 0.0096, 75.0  # water at 511 keV, 0.096 /cm
    attenuation = np.exp(-get_projector(grid, geometry).forward(mu_per_mm * _disk(grid, radius)))
    s = geometry.bin_centres_mm
    inner = np.abs(s) < radius - 5
    expected = np.exp(-mu_per_mm * 2 * np.sqrt(radius**2 - s[inner] ** 2))
    assert np.abs(attenuation[:, inner] / expected - 1).max() < 0.005
    assert attenuation[:, np.argmin(np.abs(s))].mean() == pytest.approx(np.exp(-0.0096 * 150), rel=0.005)


def test_backprojection_is_the_exact_adjoint_and_stacks_match_single_slices():
    grid = PlaneGrid.centred(40, 30, 2.0)
    geometry = SinogramGeometry.covering(80, 60, n_angles=30, bin_width_mm=2.5)
    projector = get_projector(grid, geometry)
    rng = np.random.default_rng(3)
    images = rng.random((3, 30, 40))
    sinos = rng.random((3, 30, geometry.n_bins))
    forward = projector.forward(images)
    back = projector.back(sinos)
    assert np.sum(forward * sinos) == pytest.approx(np.sum(images * back), rel=1e-5)
    assert np.allclose(forward[1], projector.forward(images[1]), rtol=1e-5, atol=1e-5)
    assert np.allclose(back[2], projector.back(sinos[2]), rtol=1e-5, atol=1e-5)


def test_subsets_partition_the_views_and_reject_uneven_splits():
    grid = PlaneGrid.centred(20, 20, 2.0)
    geometry = SinogramGeometry(n_angles=24, n_bins=30, bin_width_mm=2.0)
    projector = get_projector(grid, geometry)
    blocks = projector.subsets(6)
    rows = np.sort(np.concatenate([r for r, _, _ in blocks]))
    assert np.array_equal(rows, np.arange(geometry.n_rows))
    # Subset 1 holds views 1, 7, 13, 19 (interleaved) and its block is those rows of A.
    r1, a1, at1 = blocks[1]
    assert np.array_equal(np.unique(r1 // geometry.n_bins), [1, 7, 13, 19])
    assert (a1 != projector.matrix[r1]).nnz == 0
    assert (at1 != a1.T).nnz == 0
    with pytest.raises(InputError, match="divisible"):
        projector.subsets(5)


def test_projector_cache_returns_the_same_instance_and_checks_shapes():
    grid = PlaneGrid.centred(16, 16, 2.0)
    geometry = SinogramGeometry(n_angles=8, n_bins=24, bin_width_mm=2.0)
    assert get_projector(grid, geometry) is get_projector(PlaneGrid.centred(16, 16, 2.0), SinogramGeometry(8, 24, 2.0))
    with pytest.raises(InputError, match="do not match"):
        get_projector(grid, geometry).forward(np.zeros((15, 16)))
    with pytest.raises(InputError, match="n_bins"):
        SinogramGeometry(n_angles=8, n_bins=0)
