"""The one image model used everywhere: SimpleITK images in LPS millimetres with units in metadata.

* Geometry is the SimpleITK/ITK geometry: ``origin`` (LPS mm, centre of voxel 0,0,0), ``spacing`` (mm),
  ``direction`` (3x3 row-major, columns are the i, j, k axes in LPS). Files (NRRD, NIfTI, MHA, DICOM)
  are read and written in this convention; conversion to Slicer's RAS happens only in
  :mod:`PETDosePaintingLib.mrml`.
* numpy arrays taken from images are indexed ``[k, j, i]`` (slice, row, column), as
  ``sitk.GetArrayFromImage`` returns them.
* The physical unit of the voxel values is stored in the metadata key :data:`UNITS_KEY`
  (``"PETDP_Units"``), one of the :class:`Units` strings. NRRD and MHA files keep it in their header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError, UnitsError

UNITS_KEY = "PETDP_Units"
DESCRIPTION_KEY = "PETDP_Description"
#: Metadata key of the DICOM Frame of Reference UID (the key SimpleITK/GDCM use for (0020,0052)).
FRAME_OF_REFERENCE_KEY = "0020|0052"
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class Units:
    """Physical units of voxel values, as written in :data:`UNITS_KEY`."""

    SUV_BW = "SUVbw"  #: SUV normalised to body weight (g/mL)
    SUV_LBM = "SUVlbm"  #: SUV normalised to lean body mass, James formula as in QIBA (g/mL)
    SUV_LBM_JANMA = "SUVlbmJanma"  #: SUV normalised to lean body mass, Janmahasatian 2005 (g/mL)
    SUV_BSA = "SUVbsa"  #: SUV normalised to body surface area, DuBois (cm2/mL)
    BQML = "Bq/mL"  #: activity concentration
    HU = "HU"  #: CT Hounsfield units
    GY = "Gy"  #: absorbed dose
    ADC = "mm2/s"  #: apparent diffusion coefficient
    RATIO = "ratio"  #: dimensionless uptake ratio (tumour-to-muscle, tumour-to-blood)
    LABEL = "label"  #: binary or integer label mask
    FRACTION = "fraction"  #: tissue fraction in [0, 1]
    MM = "mm"  #: lengths, e.g. displacement vectors
    MMHG = "mmHg"  #: oxygen partial pressure
    MU = "1/cm"  #: linear attenuation coefficient (511 keV for PET attenuation maps)
    ARBITRARY = "a.u."  #: MR signal and other uncalibrated intensities


SUV_UNITS = frozenset({Units.SUV_BW, Units.SUV_LBM, Units.SUV_LBM_JANMA, Units.SUV_BSA})


def set_units(image: sitk.Image, units: str) -> sitk.Image:
    """Record ``units`` in the image metadata; returns the same image for chaining."""
    image.SetMetaData(UNITS_KEY, units)
    return image


def get_units(image: sitk.Image) -> str | None:
    """The units recorded in the image metadata, or ``None`` if none were recorded."""
    return image.GetMetaData(UNITS_KEY) if image.HasMetaDataKey(UNITS_KEY) else None


def require_units(image: sitk.Image, allowed: Iterable[str], what: str = "image") -> str:
    """Return the image's units, or raise :class:`UnitsError` if they are not among ``allowed``."""
    allowed = sorted(set(allowed))
    units = get_units(image)
    if units not in allowed:
        found = "no units recorded" if units is None else f"units {units!r}"
        raise UnitsError(f"{what} has {found}; this needs one of {', '.join(allowed)}")
    return units


def get_frame_of_reference(image: sitk.Image) -> str | None:
    """The DICOM Frame of Reference UID recorded in the image metadata, or ``None``."""
    if image.HasMetaDataKey(FRAME_OF_REFERENCE_KEY):
        value = image.GetMetaData(FRAME_OF_REFERENCE_KEY).strip()
        return value or None
    return None


def set_frame_of_reference(image: sitk.Image, uid: str | None) -> sitk.Image:
    """Record ``uid`` as the image's Frame of Reference UID; returns the same image. ``None`` or "" does nothing.

    Tag an image only when you know it is in that frame (read from, computed on, or registered and
    resampled into the grid of a series of that frame of reference). Malformed UIDs raise :class:`InputError`.
    """
    if not uid:
        return image
    uid = str(uid).strip()
    if len(uid) > 64 or not _UID_PATTERN.match(uid):
        raise InputError(f"{uid!r} is not a valid DICOM Frame of Reference UID")
    image.SetMetaData(FRAME_OF_REFERENCE_KEY, uid)
    return image


def image_from_array(
    array: np.ndarray,
    reference: sitk.Image | None = None,
    *,
    spacing: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    units: str | None = None,
) -> sitk.Image:
    """Make an image from a ``[k, j, i]`` numpy array.

    Geometry comes from ``reference`` (if given), then from the explicit keyword arguments.
    Boolean arrays become ``uint8`` masks with units :attr:`Units.LABEL` unless ``units`` says otherwise.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
        units = units or Units.LABEL
    image = sitk.GetImageFromArray(array)
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(image.GetSize()):
            raise GeometryError(
                f"array of shape {array.shape} (size {image.GetSize()}) does not match the "
                f"reference grid of size {reference.GetSize()}"
            )
        image.SetOrigin(reference.GetOrigin())
        image.SetSpacing(reference.GetSpacing())
        image.SetDirection(reference.GetDirection())
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in spacing))
    if origin is not None:
        image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in direction))
    if units is not None:
        set_units(image, units)
    return image


def array_from_image(image: sitk.Image) -> np.ndarray:
    """A ``[k, j, i]`` numpy copy of the voxel values."""
    return sitk.GetArrayFromImage(image)


def make_grid(
    size: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """An all-zero image with the given geometry (size in i, j, k order)."""
    image = sitk.Image([int(s) for s in size], pixel_type)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def sampling_grid(reference: sitk.Image, spacing_mm: float | None = None) -> sitk.Image:
    """An empty (uint8) grid over ``reference``'s field of view: its own grid, or isotropic ``spacing_mm`` voxels.

    The coarse grid has the reference's direction and outer corners (size ``max(2, round(extent / spacing))``
    per axis), so it covers the same volume; used to sample transforms and Jacobians cheaply.
    """
    if spacing_mm is None:
        grid = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(reference)
        return grid
    spacing = float(spacing_mm)
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"spacing_mm must be positive, got {spacing_mm!r}")
    extent = np.asarray(reference.GetSize()) * np.asarray(reference.GetSpacing())
    size = [max(2, int(np.rint(e / spacing))) for e in extent]
    direction = np.reshape(reference.GetDirection(), (3, 3))
    corner = np.asarray(reference.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    return make_grid(size, [spacing] * 3, corner + direction @ np.full(3, spacing / 2.0), reference.GetDirection(),
                     sitk.sitkUInt8)


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-4) -> bool:
    """True when both images have the same size and, within ``tolerance_mm``, the same voxel centres."""
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return False
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm, rtol=0):
        return False
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm, rtol=0):
        return False
    # Direction error times the extent gives the worst voxel-centre displacement in mm.
    extent = np.asarray(a.GetSize()) * np.asarray(a.GetSpacing())
    d_err = np.abs(np.reshape(a.GetDirection(), (3, 3)) - np.reshape(b.GetDirection(), (3, 3)))
    return bool(np.all(d_err @ extent <= tolerance_mm * 10))


def check_same_geometry(a: sitk.Image, b: sitk.Image, a_name: str = "first image", b_name: str = "second image",
                        tolerance_mm: float = 1e-4) -> None:
    """Raise :class:`GeometryError` naming both images if their grids differ."""
    if not same_geometry(a, b, tolerance_mm):
        raise GeometryError(
            f"{a_name} and {b_name} are not on the same grid "
            f"(size {a.GetSize()} vs {b.GetSize()}, spacing {_fmt(a.GetSpacing())} vs {_fmt(b.GetSpacing())} mm, "
            f"origin {_fmt(a.GetOrigin())} vs {_fmt(b.GetOrigin())} mm); resample one onto the other explicitly"
        )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in mL (cm3)."""
    return float(np.prod(image.GetSpacing())) / 1000.0


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of a binary mask in mL: count of non-zero voxels times the voxel volume.

    This is the canonical volume definition of the project (a binary labelmap on its own grid).
    """
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * voxel_volume_ml(mask)


def point_to_index(image: sitk.Image, point_lps: Sequence[float], what: str = "point") -> tuple[int, int, int]:
    """Index (i, j, k) of the voxel containing an LPS point; :class:`InputError` if it lies outside."""
    point = tuple(float(p) for p in point_lps)
    if len(point) != 3 or not np.all(np.isfinite(point)):
        raise InputError(f"{what} must be three finite LPS coordinates in mm, got {point_lps!r}")
    cont = image.TransformPhysicalPointToContinuousIndex(point)
    index = tuple(int(np.floor(c + 0.5)) for c in cont)
    if any(i < 0 or i >= s for i, s in zip(index, image.GetSize(), strict=True)):
        lo = image.TransformIndexToPhysicalPoint((0, 0, 0))
        hi = image.TransformIndexToPhysicalPoint(tuple(s - 1 for s in image.GetSize()))
        raise InputError(
            f"{what} {_fmt(point)} mm (LPS) lies outside the image, whose voxel centres span "
            f"{_fmt(lo)} to {_fmt(hi)} mm"
        )
    return index  # type: ignore[return-value]


def index_to_point(image: sitk.Image, index: Sequence[float]) -> tuple[float, float, float]:
    """LPS coordinates (mm) of a (possibly fractional) voxel index (i, j, k)."""
    return tuple(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))  # type: ignore[return-value]


def physical_grid(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (x, y, z) of every voxel centre, each an array shaped like the ``[k, j, i]`` array."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    mat = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())[None, :]
    origin = np.asarray(image.GetOrigin())
    x = origin[0] + mat[0, 0] * i + mat[0, 1] * j + mat[0, 2] * k
    y = origin[1] + mat[1, 0] * i + mat[1, 1] * j + mat[1, 2] * k
    z = origin[2] + mat[2, 0] * i + mat[2, 1] * j + mat[2, 2] * k
    return x, y, z


def require_finite(image: sitk.Image, what: str = "image") -> None:
    """Raise :class:`InputError` if the image holds NaN or infinite values."""
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"{what} holds {bad} NaN or infinite voxel(s); fix or mask them first")


def require_binary_mask(mask: sitk.Image, what: str = "mask", allow_empty: bool = False) -> np.ndarray:
    """Return the mask as a boolean ``[k, j, i]`` array; raise if it holds values other than 0 and 1."""
    values = sitk.GetArrayViewFromImage(mask)
    unique = np.unique(values)
    if not np.all(np.isin(unique, (0, 1))):
        raise InputError(f"{what} is not a binary mask (values {unique[:6].tolist()}...)")
    out = values.astype(bool)
    if not allow_empty and not out.any():
        raise InputError(f"{what} is empty (no voxel set)")
    return out
