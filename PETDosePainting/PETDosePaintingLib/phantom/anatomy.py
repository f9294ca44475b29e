"""Analytic head-and-neck anatomy on a fine grid (the baseline of the digital patient).

The anatomy is a label map (:class:`~.tissues.Tissue`) built from analytic shapes whose parameters vary
smoothly along z: every structure is, slice by slice, an ellipse (possibly rotated) whose centre and
semi-axes are smooth functions of z (monotone cubic interpolation through a few control points), an
ellipsoid, or a band around a parabolic arch (mandible, maxilla). The shapes follow the recipe of
``pet_segmentation.md`` §10.2 A.1 (elliptical neck about 12 x 14 cm; soft tissue, bone, airway 1.5-2 cm)
with proportions of an adult neck taken from general anatomy; every size and position below is a
**design choice**, not a measurement.

Coordinates are LPS millimetres: x = patient left (+), y = posterior (+), z = superior (+). z = 0 is at
about the level of C3 and the hyoid; the default field of view (200 x 200 x 150 mm) runs from the base of
the neck (z = -75, about C7) to the skull base (z = +75), where the posterior cranial fossa (brain) shows.
The mandible and parotid glands occupy the upper part, the larynx, thyroid and trachea the lower part.

Patient-to-patient variability (``AnatomyConfig.variability``, seeded) is a global anisotropic scaling
of the template about the origin (left-right, antero-posterior, cranio-caudal), drawn once per seed;
left and right stay mirror images, so the anatomy is exactly symmetric about x = 0 on a symmetric grid.

The grid has an identity direction (axis-aligned LPS), which lets every shape be evaluated on separable
1D coordinate axes (broadcasting) inside its own bounding box instead of on full 3D coordinate arrays:
this is why :func:`~PETDosePaintingLib.imaging.image.physical_grid` is not used here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy.interpolate import PchipInterpolator

from ..errors import InputError
from ..imaging.image import Units, image_from_array
from .tissues import Tissue

# --------------------------------------------------------------------------------------------------
# Template (canonical coordinates, mm). All values are design choices (adult proportions).
# --------------------------------------------------------------------------------------------------

#: Body outline: z -> half width (x), anterior and posterior skin (y). Neck at z = -15: 13.4 x 11.9 cm.
_BODY_Z = (-75.0, -45.0, -15.0, 5.0, 15.0, 35.0, 55.0, 75.0)
_BODY_HALF_WIDTH = (84.0, 70.0, 67.0, 68.0, 70.0, 72.0, 73.0, 74.0)
_BODY_ANTERIOR = (-52.0, -49.0, -49.0, -66.0, -76.0, -80.0, -78.0, -76.0)
_BODY_POSTERIOR = (72.0, 70.0, 70.0, 69.0, 70.0, 72.0, 74.0, 76.0)
_FAT_THICKNESS = 6.0  #: subcutaneous fat (mm)

#: Airway (pharynx, larynx, trachea): z -> centre y, semi-axes x and y; closed at the nasopharynx roof.
_AIRWAY_Z = (-75.0, -45.0, -20.0, -5.0, 10.0, 25.0, 45.0, 62.0)
_AIRWAY_Y = (-30.0, -29.0, -24.0, -16.0, -4.0, 0.0, 2.0, 6.0)
_AIRWAY_AX = (9.0, 9.0, 7.0, 10.0, 12.0, 12.0, 11.0, 10.0)
_AIRWAY_AY = (8.0, 8.0, 5.0, 8.0, 7.0, 7.0, 7.0, 6.0)
_AIRWAY_TOP = 63.0
_LARYNX_Z = (-40.0, 0.0)  #: laryngeal ring (muscles and cartilage), 8 mm around the airway
_LARYNX_RING = 8.0
_PHARYNX_WALL = 4.0  #: pharyngeal constrictor muscle ring (mm) above the oesophagus

#: Cervical spine: vertebral body centre y(z) with a mild lordosis, top at C1.
_SPINE_TOP = 58.0
_VERTEBRAL_BODY_SEMI = (10.0, 8.0)
_CANAL_SEMI = (11.0, 7.0)
_CORD_SEMI = (6.0, 4.5)
_ARCH_SEMI = (15.0, 11.0)

#: Vessels (centre-line x, y and radius against z), left side (the right side is mirrored).
_VESSEL_Z = (-75.0, -40.0, 0.0, 20.0, 60.0, 75.0)
_CAROTID_X = (19.0, 21.0, 22.5, 24.0, 28.0, 28.0)
_CAROTID_Y = (2.0, 4.0, 7.0, 10.0, 16.0, 18.0)
_CAROTID_R = (3.5, 3.5, 3.5, 3.0, 2.8, 2.8)
_JUGULAR_X = (27.0, 30.0, 32.0, 34.0, 36.0, 36.0)
_JUGULAR_Y = (6.0, 10.0, 12.5, 16.0, 22.0, 24.0)
_JUGULAR_R = (5.5, 5.5, 5.5, 5.5, 5.0, 5.0)

#: Sternocleidomastoid muscle centre line (left), band cross-section 11 x 5 mm, long axis at 65 degrees.
_SCM_Z = (-75.0, -40.0, 0.0, 30.0, 55.0)
_SCM_X = (20.0, 34.0, 46.0, 52.0, 55.0)
_SCM_Y = (-38.0, -22.0, 6.0, 36.0, 46.0)
_SCM_SEMI = (11.0, 5.0)
_SCM_ANGLE_DEG = 65.0
_SCM_TOP = 58.0

#: Mandible: parabolic arch y = apex + k x^2 (|x| <= 44), 10 mm thick, plus the two rami.
_MANDIBLE_APEX_Y = -62.0
_MANDIBLE_HALF_SPAN = 44.0
_MANDIBLE_ANGLE_Y = 5.0
_MANDIBLE_THICKNESS = 10.0
_RAMUS_X, _RAMUS_Y, _RAMUS_SEMI, _RAMUS_Z = 45.0, 4.0, (3.5, 13.0), (16.0, 62.0)
#: Maxilla (alveolar arch) and hard palate, labelled as skull bone.
_MAXILLA_APEX_Y = -64.0
_MAXILLA_Z = (40.0, 52.0)
_PALATE_Z = (47.0, 51.0)
_PALATE_POSTERIOR_Y = -14.0

#: Ellipsoids: name -> (centre (left side for pairs), semi-axes), all mm.
_PAROTID = ((54.0, 22.0, 42.0), (11.0, 18.0, 24.0))  # about 20 mL each
_SUBMANDIBULAR = ((30.0, -28.0, 8.0), (11.0, 14.0, 10.0))  # about 6.5 mL each
_TONSIL = ((17.0, -1.0, 30.0), (6.0, 9.0, 11.0))  # palatine tonsils, about 2.5 mL each
_LINGUAL_TONSIL = ((0.0, -12.0, 16.0), (13.0, 5.0, 7.0))
_TONGUE = ((0.0, -36.0, 24.0), (26.0, 26.0, 17.0))
_THYROID = ((16.0, -26.0, -55.0), (7.0, 9.0, 18.0))
_BRAIN = ((0.0, 32.0, 100.0), (55.0, 36.0, 42.0))  # posterior fossa; bottom at z = 58
_SKULL_SHELL = 6.0

#: Landmarks (canonical, left side; ``_r`` names are mirrored). Tumour sites and nodal levels.
_LANDMARKS = {
    "oropharynx_l": (17.0, -1.0, 30.0),  # tonsillar fossa (palatine tonsil)
    "tonsil_l": (17.0, -1.0, 30.0),
    "base_of_tongue": (0.0, -14.0, 16.0),
    "larynx_l": (12.0, -20.0, -10.0),  # supraglottic, left laryngeal wall
    "hypopharynx_l": (14.0, -10.0, -15.0),  # pyriform sinus region
    "nasopharynx": (0.0, 12.0, 55.0),
    "level_II_l": (38.0, -4.0, 14.0),  # upper jugular nodes
    "level_III_l": (33.0, -3.0, -22.0),  # mid jugular nodes
    "parotid_l": _PAROTID[0],
    "submandibular_l": _SUBMANDIBULAR[0],
}


def _smooth(zs: tuple[float, ...], values: tuple[float, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """Monotone cubic (PCHIP) interpolation through control points, held constant beyond the ends."""
    interp = PchipInterpolator(np.asarray(zs), np.asarray(values), extrapolate=False)
    lo, hi = float(zs[0]), float(zs[-1])

    def f(z: np.ndarray) -> np.ndarray:
        return interp(np.clip(np.asarray(z, dtype=float), lo, hi))

    return f


_body_a = _smooth(_BODY_Z, _BODY_HALF_WIDTH)
_body_ant = _smooth(_BODY_Z, _BODY_ANTERIOR)
_body_post = _smooth(_BODY_Z, _BODY_POSTERIOR)
_airway_y = _smooth(_AIRWAY_Z, _AIRWAY_Y)
_airway_ax = _smooth(_AIRWAY_Z, _AIRWAY_AX)
_airway_ay = _smooth(_AIRWAY_Z, _AIRWAY_AY)


def _vertebra_y(z: np.ndarray) -> np.ndarray:
    """Vertebral body centre y (canonical mm): 20 mm at z = 0, 24 mm at z = +-75 (mild lordosis)."""
    z = np.asarray(z, dtype=float)
    return 24.0 - 4.0 * (1.0 - np.clip(z / 75.0, -1.0, 1.0) ** 2)


def _canal_y(z: np.ndarray) -> np.ndarray:
    return _vertebra_y(z) + _VERTEBRAL_BODY_SEMI[1] + _CANAL_SEMI[1]


# --------------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnatomyConfig:
    """Parameters of :func:`build_anatomy` (lengths in mm).

    ``voxel_mm``: isotropic fine-grid spacing (1 mm default, as ``pet_segmentation.md`` §10.2 A asks).
    ``field_of_view_mm``: extent in x, y, z; ``fov_centre_lps``: centre of the field of view.
    ``variability``: relative standard deviation of the patient's global scale factors (left-right,
    antero-posterior, cranio-caudal), drawn from ``seed`` and clipped to +-15 % (design default 0.04).
    ``include_brain``: paint the posterior cranial fossa and skull at the top slices.
    """

    voxel_mm: float = 1.0
    field_of_view_mm: tuple[float, float, float] = (200.0, 200.0, 150.0)
    fov_centre_lps: tuple[float, float, float] = (0.0, -3.0, 0.0)
    variability: float = 0.04
    include_brain: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0, variability: float = 0.04) -> AnatomyConfig:
        """2 mm voxels over 180 x 180 x 80 mm (z from -30 to +50: larynx to parotids), for tests."""
        return cls(voxel_mm=2.0, field_of_view_mm=(180.0, 180.0, 80.0), fov_centre_lps=(0.0, -3.0, 10.0),
                   variability=variability, seed=seed)


#: Names of the structure masks of :attr:`Anatomy.structures` and their labels.
STRUCTURE_LABELS: dict[str, tuple[Tissue, ...]] = {
    "parotid_l": (Tissue.PAROTID_L,),
    "parotid_r": (Tissue.PAROTID_R,),
    "submandibular_l": (Tissue.SUBMANDIBULAR_L,),
    "submandibular_r": (Tissue.SUBMANDIBULAR_R,),
    "spinal_cord": (Tissue.SPINAL_CORD,),
    "mandible": (Tissue.MANDIBLE,),
    "larynx": (Tissue.LARYNX,),
    "thyroid": (Tissue.THYROID,),
    "brain": (Tissue.BRAIN,),
    "airway": (Tissue.AIRWAY,),
    "vertebrae": (Tissue.VERTEBRA,),
    "spinal_canal": (Tissue.SPINAL_CORD, Tissue.CSF),
}


@dataclass
class Anatomy:
    """The baseline anatomy on the fine grid.

    ``labels`` is the uint8 ``[k, j, i]`` label map and ``label_image`` the same values as a SimpleITK
    image (units ``label``; identity direction; its geometry is the fine grid every truth map of the
    digital patient lives on). ``structures`` holds boolean ``[k, j, i]`` masks: ``body`` (inside the
    skin, airway included) and the entries of :data:`STRUCTURE_LABELS`. ``landmarks`` are LPS mm points
    for placing lesions (``*_l`` / ``*_r`` pairs). ``scale`` is the patient's (x, y, z) scale factors.
    """

    config: AnatomyConfig
    labels: np.ndarray
    label_image: sitk.Image
    structures: dict[str, np.ndarray]
    landmarks: dict[str, tuple[float, float, float]]
    scale: tuple[float, float, float]
    cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in mm."""
        return tuple(self.label_image.GetSpacing())  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D LPS coordinates (mm) of the voxel centres along x (i), y (j) and z (k)."""
        return _axes(self.label_image)

    def body_ellipse(self, z_mm: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body outline at height ``z_mm`` (LPS): (centre y, semi-axis x, semi-axis y), centre x = 0."""
        sx, sy, sz = self.scale
        zc = np.asarray(z_mm, dtype=float) / sz
        ant, post = _body_ant(zc), _body_post(zc)
        return sy * 0.5 * (ant + post), sx * _body_a(zc), sy * 0.5 * (post - ant)

    def vertebral_body_centre(self, z_mm: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the vertebral body centre at height ``z_mm`` (LPS mm)."""
        sy, sz = self.scale[1], self.scale[2]
        y = sy * _vertebra_y(np.asarray(z_mm, dtype=float) / sz)
        return np.zeros_like(y), y

    def structure_image(self, name: str) -> sitk.Image:
        """One structure mask as a uint8 0/1 image (units ``label``) on the fine grid."""
        if name not in self.structures:
            raise InputError(f"unknown structure {name!r}; available: {', '.join(sorted(self.structures))}")
        return image_from_array(self.structures[name], self.label_image)

    def parameters(self) -> dict[str, object]:
        """JSON-ready description (configuration, scale, grid, landmarks, structure volumes in mL)."""
        return {
            "config": asdict(self.config),
            "scale": list(self.scale),
            "size_ijk": list(self.label_image.GetSize()),
            "spacing_mm": list(self.spacing),
            "origin_lps_mm": list(self.label_image.GetOrigin()),
            "landmarks_lps_mm": {k: list(v) for k, v in self.landmarks.items()},
            "structure_volumes_ml": {k: float(np.count_nonzero(v)) * self.voxel_volume_ml
                                     for k, v in self.structures.items()},
        }


def _axes(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not np.allclose(image.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1)):
        raise InputError("the digital patient needs an identity-direction (axis-aligned LPS) grid")
    o, s, n = image.GetOrigin(), image.GetSpacing(), image.GetSize()
    return tuple(o[d] + s[d] * np.arange(n[d]) for d in range(3))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Painting helpers (vectorised, inside bounding boxes)
# --------------------------------------------------------------------------------------------------


_ZFun = Callable[[np.ndarray], np.ndarray] | float


class _Painter:
    """Paints shapes given in canonical coordinates into a label array, inside their bounding boxes."""

    def __init__(self, labels: np.ndarray, xc: np.ndarray, yc: np.ndarray, zc: np.ndarray):
        self.labels, self.x, self.y, self.z = labels, xc, yc, zc

    def _range(self, axis: np.ndarray, lo: float, hi: float) -> slice:
        return slice(int(np.searchsorted(axis, lo, side="left")), int(np.searchsorted(axis, hi, side="right")))

    def apply(self, box: tuple[slice, slice, slice], inside: np.ndarray, value: Tissue,
              over: frozenset[int] | None) -> None:
        block = self.labels[box]
        if over is not None:
            inside = inside & np.isin(block, np.fromiter(over, dtype=np.uint8))
        block[inside] = np.uint8(value)

    def ellipses(self, value: Tissue, z_range: tuple[float, float], centre: tuple[_ZFun, _ZFun],
                 semi: tuple[_ZFun, _ZFun], *, angle_deg: float = 0.0, over: frozenset[int] | None = None,
                 outside: bool = False, outer: tuple[_ZFun, _ZFun] | None = None) -> None:
        """Paint, for each slice z in ``z_range``, the ellipse of ``centre`` (cx, cy)(z) and ``semi``
        (ax, ay)(z) (functions of z or constants) rotated by ``angle_deg``.

        ``outside=True`` paints the ring between the ellipse and ``outer`` = (ax_outer, ay_outer)(z)
        (same centre), used for shells.
        """
        ks = self._range(self.z, *z_range)
        z = self.z[ks]
        if z.size == 0:
            return

        def ev(f: Callable | float) -> np.ndarray:
            return np.broadcast_to(f(z) if callable(f) else np.asarray(f, dtype=float), z.shape).astype(float)

        cxs, cys, axs, ays = ev(centre[0]), ev(centre[1]), ev(semi[0]), ev(semi[1])
        oas = (ev(outer[0]), ev(outer[1])) if outer is not None else (axs, ays)
        reach = np.maximum(oas[0], oas[1]) if angle_deg else None
        rx = reach if reach is not None else oas[0]
        ry = reach if reach is not None else oas[1]
        valid = (axs > 0) & (ays > 0) if not outside else (oas[0] > 0) & (oas[1] > 0)
        if not valid.any():
            return
        js = self._range(self.y, float(np.min((cys - ry)[valid])), float(np.max((cys + ry)[valid])))
        is_ = self._range(self.x, float(np.min((cxs - rx)[valid])), float(np.max((cxs + rx)[valid])))
        dx = self.x[is_][None, None, :] - cxs[:, None, None]
        dy = self.y[js][None, :, None] - cys[:, None, None]
        if angle_deg:
            c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
            dx, dy = dx * c + dy * s, -dx * s + dy * c
        with np.errstate(divide="ignore", invalid="ignore"):
            inner = (dx / axs[:, None, None]) ** 2 + (dy / ays[:, None, None]) ** 2 <= 1.0
            inner &= (axs > 0)[:, None, None] & (ays > 0)[:, None, None]
            if outside:
                shell = (dx / oas[0][:, None, None]) ** 2 + (dy / oas[1][:, None, None]) ** 2 <= 1.0
                inside = shell & ~inner & valid[:, None, None]
            else:
                inside = inner
        self.apply((ks, js, is_), inside, value, over)

    def ellipsoid(self, value: Tissue, centre: tuple[float, float, float], semi: tuple[float, float, float], *,
                  over: frozenset[int] | None = None) -> None:
        cz, c = centre[2], semi[2]

        def cap(z: np.ndarray) -> np.ndarray:
            return np.sqrt(np.clip(1.0 - ((z - cz) / c) ** 2, 0.0, None))

        self.ellipses(value, (cz - c, cz + c), (centre[0], centre[1]),
                      (lambda z: semi[0] * cap(z), lambda z: semi[1] * cap(z)), over=over)

    def arch(self, value: Tissue, z_range: tuple[float, float], *, apex_y: float, half_span: float,
             end_y: float, thickness: float, z_low: Callable[[np.ndarray], np.ndarray],
             z_high: Callable[[np.ndarray], np.ndarray], over: frozenset[int] | None = None,
             fill_to_y: float | None = None) -> None:
        """A band of ``thickness`` around the parabola y = apex + k x^2 (|x| <= half_span), between
        ``z_low(x)`` and ``z_high(x)``; with ``fill_to_y`` the region inside the arch up to that y (a plate).
        """
        k = (end_y - apex_y) / half_span**2
        ks = self._range(self.z, *z_range)
        is_ = self._range(self.x, -half_span - thickness, half_span + thickness)
        js = self._range(self.y, apex_y - thickness, max(end_y, fill_to_y or end_y) + thickness)
        x, y, z = self.x[is_], self.y[js], self.z[ks]
        arch_y = apex_y + k * x**2
        if fill_to_y is None:
            # First-order distance to the parabola (exact at the apex, good where the slope is moderate).
            dist = np.abs(y[:, None] - arch_y[None, :]) / np.sqrt(1.0 + (2.0 * k * x[None, :]) ** 2)
            in_plane = (dist <= thickness / 2.0) & (np.abs(x) <= half_span)[None, :]
        else:
            in_plane = (y[:, None] >= arch_y[None, :]) & (y[:, None] <= fill_to_y) & \
                (np.abs(x) <= half_span)[None, :]
        in_z = (z[:, None] >= z_low(x)[None, :]) & (z[:, None] <= z_high(x)[None, :])
        self.apply((ks, js, is_), in_plane[None, :, :] & in_z[:, None, :], value, over)


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------

_SOFT = frozenset({int(Tissue.SOFT_TISSUE)})
_SOFT_MUSCLE = frozenset({int(Tissue.SOFT_TISSUE), int(Tissue.MUSCLE)})
_SOFT_MUSCLE_FAT = _SOFT_MUSCLE | {int(Tissue.FAT)}
_INSIDE = frozenset(int(t) for t in Tissue if t != Tissue.OUTSIDE)


def build_anatomy(config: AnatomyConfig | None = None) -> Anatomy:
    """Build the baseline head-and-neck anatomy (deterministic for a given ``config``).

    Painting order (later wins, each step only over the labels listed): body (soft tissue) -> muscles
    (posterior neck mass, sternocleidomastoids, prevertebral, pharyngeal constrictors, oesophagus,
    tongue, strap muscles) -> subcutaneous fat -> thyroid, parotid and submandibular glands -> vessels
    (carotids, jugulars) -> tonsils (palatine, lingual) -> larynx -> airway -> vertebrae -> spinal
    canal (CSF) and cord -> mandible, maxilla and hard palate -> brain and skull (top slices).

    Returns an :class:`Anatomy`. The full default (1 mm, 200 x 200 x 150 mm) builds in well under a second.
    """
    cfg = config or AnatomyConfig()
    if cfg.voxel_mm <= 0 or min(cfg.field_of_view_mm) <= 0:
        raise InputError("AnatomyConfig.voxel_mm and field_of_view_mm must be positive")
    if not 0.0 <= cfg.variability <= 0.2:
        raise InputError(f"AnatomyConfig.variability must be in [0, 0.2], got {cfg.variability}")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(0xA7,)))
    scale = tuple(float(v) for v in np.clip(1.0 + cfg.variability * rng.standard_normal(3), 0.85, 1.15))
    sx, sy, sz = scale

    fov = np.asarray(cfg.field_of_view_mm, dtype=float)
    size = np.maximum(np.round(fov / cfg.voxel_mm).astype(int), 1)
    origin = np.asarray(cfg.fov_centre_lps, dtype=float) - size * cfg.voxel_mm / 2.0 + cfg.voxel_mm / 2.0
    axes = [origin[d] + cfg.voxel_mm * np.arange(size[d]) for d in range(3)]
    labels = np.zeros(tuple(size[::-1]), dtype=np.uint8)
    p = _Painter(labels, axes[0] / sx, axes[1] / sy, axes[2] / sz)
    zmin, zmax = float(p.z[0]) - 1.0, float(p.z[-1]) + 1.0
    full = (zmin, zmax)

    def body_cy(z):
        return 0.5 * (_body_ant(z) + _body_post(z))

    def body_ay(z):
        return 0.5 * (_body_post(z) - _body_ant(z))

    # Body and muscles.
    p.ellipses(Tissue.SOFT_TISSUE, full, (0.0, body_cy), (_body_a, body_ay))
    p.ellipses(Tissue.MUSCLE, full, (0.0, lambda z: _body_post(z) - 30.0), (lambda z: 0.78 * _body_a(z), 30.0),
               over=_SOFT)  # posterior neck muscles (paraspinal, trapezius)
    scm_x, scm_y = _smooth(_SCM_Z, _SCM_X), _smooth(_SCM_Z, _SCM_Y)

    def scm_cap(z):
        return np.sqrt(np.clip(1.0 - (np.clip(z - 45.0, 0.0, None) / (_SCM_TOP - 45.0)) ** 2, 0.0, None))

    for sign in (1.0, -1.0):
        angle = _SCM_ANGLE_DEG if sign > 0 else 180.0 - _SCM_ANGLE_DEG
        p.ellipses(Tissue.MUSCLE, (zmin, _SCM_TOP), (lambda z, s=sign: s * scm_x(z), scm_y),
                   (lambda z: _SCM_SEMI[0] * scm_cap(z), lambda z: _SCM_SEMI[1] * scm_cap(z)),
                   angle_deg=angle, over=_SOFT)
    p.ellipses(Tissue.MUSCLE, (zmin, _SPINE_TOP), (0.0, lambda z: _vertebra_y(z) - _VERTEBRAL_BODY_SEMI[1] - 3.5),
               (15.0, 3.5), over=_SOFT)  # prevertebral (longus colli)
    p.ellipses(Tissue.MUSCLE, (-35.0, _AIRWAY_TOP), (0.0, _airway_y),
               (lambda z: _airway_ax(z) + _PHARYNX_WALL, lambda z: _airway_ay(z) + _PHARYNX_WALL),
               over=_SOFT)  # pharyngeal constrictors
    p.ellipses(Tissue.MUSCLE, (zmin, -30.0), (-4.0, -14.0), (8.0, 5.0), over=_SOFT)  # oesophagus
    p.ellipsoid(Tissue.MUSCLE, *_TONGUE, over=_SOFT)
    p.ellipses(Tissue.MUSCLE, (zmin, 2.0), (0.0, lambda z: _body_ant(z) + _FAT_THICKNESS + 5.0), (22.0, 5.0),
               over=_SOFT)  # strap muscles
    # Subcutaneous fat: the shell between the skin and the skin moved in by the fat thickness.
    p.ellipses(Tissue.FAT, full, (0.0, body_cy), (lambda z: _body_a(z) - _FAT_THICKNESS,
                                                  lambda z: body_ay(z) - _FAT_THICKNESS),
               outside=True, outer=(_body_a, body_ay), over=_SOFT_MUSCLE)

    # Glands.
    for sign, par, sub in ((1.0, Tissue.PAROTID_L, Tissue.SUBMANDIBULAR_L),
                           (-1.0, Tissue.PAROTID_R, Tissue.SUBMANDIBULAR_R)):
        p.ellipsoid(par, _mirror(_PAROTID[0], sign), _PAROTID[1], over=_SOFT_MUSCLE)
        p.ellipsoid(sub, _mirror(_SUBMANDIBULAR[0], sign), _SUBMANDIBULAR[1], over=_SOFT_MUSCLE)
        p.ellipsoid(Tissue.THYROID, _mirror(_THYROID[0], sign), _THYROID[1], over=_SOFT_MUSCLE)

    # Vessels: carotid arteries and internal jugular veins.
    vessel_over = _SOFT_MUSCLE_FAT | {int(Tissue.THYROID)}
    for xs, ys, rs in ((_CAROTID_X, _CAROTID_Y, _CAROTID_R), (_JUGULAR_X, _JUGULAR_Y, _JUGULAR_R)):
        fx, fy, fr = _smooth(_VESSEL_Z, xs), _smooth(_VESSEL_Z, ys), _smooth(_VESSEL_Z, rs)
        for sign in (1.0, -1.0):
            p.ellipses(Tissue.VESSEL, full, (lambda z, s=sign, f=fx: s * f(z), fy), (fr, fr), over=vessel_over)

    # Lymphoid tissue: palatine tonsils and lingual tonsil.
    for sign in (1.0, -1.0):
        p.ellipsoid(Tissue.LYMPHOID, _mirror(_TONSIL[0], sign), _TONSIL[1], over=_SOFT_MUSCLE)
    p.ellipsoid(Tissue.LYMPHOID, *_LINGUAL_TONSIL, over=_SOFT_MUSCLE)

    # Larynx ring, then the airway (closed with a rounded roof at the nasopharynx).
    p.ellipses(Tissue.LARYNX, _LARYNX_Z, (0.0, _airway_y),
               (lambda z: _airway_ax(z) + _LARYNX_RING, lambda z: _airway_ay(z) + _LARYNX_RING),
               over=_SOFT_MUSCLE_FAT | {int(Tissue.THYROID)})

    def airway_cap(z):
        return np.sqrt(np.clip(1.0 - (np.clip(z - 55.0, 0.0, None) / (_AIRWAY_TOP - 55.0)) ** 2, 0.0, None))

    p.ellipses(Tissue.AIRWAY, (zmin, _AIRWAY_TOP), (0.0, _airway_y),
               (lambda z: _airway_ax(z) * airway_cap(z), lambda z: _airway_ay(z) * airway_cap(z)), over=_INSIDE)

    # Cervical spine: body, neural arch, spinous and transverse processes; canal (CSF) and cord.
    spine = (zmin, _SPINE_TOP)
    p.ellipses(Tissue.VERTEBRA, spine, (0.0, _vertebra_y), _VERTEBRAL_BODY_SEMI, over=_INSIDE)
    p.ellipses(Tissue.VERTEBRA, spine, (0.0, _canal_y), _ARCH_SEMI, over=_INSIDE)
    p.ellipses(Tissue.VERTEBRA, spine, (0.0, lambda z: _canal_y(z) + _ARCH_SEMI[1] + 5.0), (3.5, 7.0),
               over=_INSIDE)  # spinous process
    for sign in (1.0, -1.0):
        p.ellipses(Tissue.VERTEBRA, spine, (sign * 19.0, lambda z: _vertebra_y(z) + 3.0), (6.0, 4.5),
                   over=_INSIDE)  # transverse processes
    p.ellipses(Tissue.CSF, full, (0.0, _canal_y), _CANAL_SEMI, over=_INSIDE)
    p.ellipses(Tissue.SPINAL_CORD, full, (0.0, _canal_y), _CORD_SEMI, over=_INSIDE)

    # Mandible (arch and rami), maxilla and hard palate.
    not_canal = _INSIDE - {int(Tissue.CSF), int(Tissue.SPINAL_CORD), int(Tissue.AIRWAY)}
    h = _MANDIBLE_HALF_SPAN
    p.arch(Tissue.MANDIBLE, (10.0, 40.0), apex_y=_MANDIBLE_APEX_Y, half_span=h, end_y=_MANDIBLE_ANGLE_Y,
           thickness=_MANDIBLE_THICKNESS, z_low=lambda x: 14.0 + 6.0 * (x / h) ** 2,
           z_high=lambda x: 38.0 - 4.0 * (x / h) ** 2, over=not_canal)
    for sign in (1.0, -1.0):
        p.ellipses(Tissue.MANDIBLE, _RAMUS_Z, (sign * _RAMUS_X, _RAMUS_Y), _RAMUS_SEMI, over=not_canal)
    for z_range, fill in ((_MAXILLA_Z, None), (_PALATE_Z, _PALATE_POSTERIOR_Y)):
        p.arch(Tissue.SKULL, z_range, apex_y=_MAXILLA_APEX_Y, half_span=h - 4.0, end_y=_MANDIBLE_ANGLE_Y - 6.0,
               thickness=9.0, z_low=lambda x, z0=z_range[0]: np.full_like(x, z0),
               z_high=lambda x, z1=z_range[1]: np.full_like(x, z1), over=not_canal, fill_to_y=fill)

    # Posterior cranial fossa at the top slices: skull shell, then brain (the canal stays open).
    if cfg.include_brain:
        (bc, bs), t = _BRAIN, _SKULL_SHELL
        p.ellipsoid(Tissue.SKULL, bc, (bs[0] + t, bs[1] + t, bs[2] + t), over=not_canal)
        p.ellipsoid(Tissue.BRAIN, bc, bs, over=_INSIDE)

    structures = {"body": labels != Tissue.OUTSIDE}
    structures.update({name: np.isin(labels, np.asarray(values, dtype=np.uint8))
                       for name, values in STRUCTURE_LABELS.items()})
    landmarks = {}
    for name, (x, y, z) in _LANDMARKS.items():
        point = (sx * x, sy * y, sz * z)
        if name.endswith("_l"):
            landmarks[name] = point
            landmarks[name[:-2] + "_r"] = (-point[0], point[1], point[2])
        else:
            landmarks[name] = point
    image = image_from_array(labels, spacing=(cfg.voxel_mm,) * 3, origin=origin, units=Units.LABEL)
    return Anatomy(config=cfg, labels=labels, label_image=image, structures=structures, landmarks=landmarks,
                   scale=scale)


def _mirror(point: tuple[float, float, float], sign: float) -> tuple[float, float, float]:
    return (sign * point[0], point[1], point[2])
