"""Lesions of the digital head-and-neck patient with exact fine-grid truth, and their evolution under RT.

Recipe: ``pet_segmentation.md`` §10.2 A.3 (shape, tumour-to-background ratio, heterogeneity, necrosis,
inflammation rim, adjacent avid structures) and A.4 (tissue-fraction truth, separate necrosis and
inflammation labels); hypoxia after ``dose_painting.md`` §2.1, §2.2 and §2.6.

Shape
    An ellipsoid (axis ratios ``axis_ratios``, normalised to a product of 1, random orientation) whose
    radius is perturbed by real spherical harmonics of degree 2-4:
    ``r(θ, φ) = r0 (1 + Σ a_lm Y_lm(θ, φ))`` in the ellipsoid's normalised frame, ``a_lm ~ N(0, s_l²)``
    with ``s_l = irregularity * 2 / l`` (the reference gives |a| about 0.05-0.2; the 2/l decay is a design
    choice). The shape is star-shaped about its centre, so its volume is exact by quadrature:
    ``V = r0³/3 ∫ (1 + f)³ dΩ`` (Gauss-Legendre x uniform φ, exact for these band-limited functions), and
    ``r0`` is solved from the requested volume. Where ``1 + f`` would drop below 0.35 the perturbation is
    scaled down (design choice, keeps the shape compact).
Fine-grid truth
    Tissue fractions are measured by supersampling (``supersample``³ points) the voxels near the surface
    (a one-voxel morphological band), exactly as :func:`.shapes.ellipsoid_fraction` does for ellipsoids.
    The lesion is then clipped to tissue that can hold tumour (inside the body, not air, bone, vessels,
    spinal canal or brain); when clipping removes volume, ``r0`` is rescaled and the lesion re-rendered
    until the clipped volume matches the request (to 0.2 %).
Heterogeneity
    Multiplicative log-normal field ``exp(σ g − σ²/2)`` with ``g`` a unit-variance Gaussian random field of
    Gaussian correlation ``exp(−r²/(2 ℓ²))`` (:func:`gaussian_random_field`). Inside the lesion it is
    normalised to a mean of exactly 1 over the viable tumour, so the viable-tumour mean uptake is exactly
    ``tbr`` x background (design choice: makes the tumour-to-background ratio part of the truth).
Necrosis
    The region ``|q̂ − c_n| <= f_n (1 + ε clip(g_n, −2, 2))`` where ``q̂`` is the point mapped into the
    lesion's unit ball (so the core follows the lesion's shape and always stays inside it), ``f_n`` the
    radius fraction (0.3-0.6), ``c_n`` an optional eccentric offset and ``g_n`` a Gaussian random field
    (irregular outline, as the reference suggests thresholding a GRF). Uptake ``necrosis_ratio`` x
    background (0.3-1.0 in the reference).
Inflammation rim
    Outside the GTV, a weight ``w(d) = (1 + cos(π d / T)) / 2`` of the distance ``d`` to the GTV surface
    (up to the thickness ``T``), multiplying the background uptake by ``1 + (peak − 1) w``. It is **not**
    tumour: it has its own mask and label.
Hypoxia
    A smooth score ``h = −|q̂ − c_h| + β g_h`` (``c_h`` = the necrotic core's centre when there is one, so
    hypoxia surrounds necrosis, else a random eccentric point; ``g_h`` a Gaussian random field). The
    hypoxic sub-volume is the top ``hypoxic_fraction`` of the viable tumour voxels by score. FMISO/FAZA
    tumour-to-muscle ratios rise with the score: ``hypoxic_tmr`` range in hypoxic voxels,
    ``normoxic_tmr`` range elsewhere in the tumour (defaults 1.4-2.2 and 1.0-1.2: any threshold between
    1.2 and 1.4 -- e.g. the MSKCC T/M > 1.2 or Rasey T/B >= 1.4 of §2.1 -- recovers the truth on the
    noise-free fine grid). Necrosis gets ``necrosis_tmr`` (0.7, design default: no trapping without
    viable cells, ``dose_painting.md`` §2.4).
Timepoints
    :func:`evolve_tumour` renders the same lesions at later fractions in baseline coordinates: ``r0`` is
    scaled to the requested volume with the same shape and centre (so the later GTV lies inside the
    baseline GTV), the random fields are carried along (material coordinates ``c + (x − c)/s``), the
    FDG excess over background shrinks, and the hypoxia score gains an independent random component, so
    part of the hypoxia resolves and some new hypoxic voxels appear (truth of persistent / resolved /
    newborn sub-volumes after ``dose_painting.md`` §5.3).

Every random component has its own deterministic stream (a :class:`numpy.random.SeedSequence` spawn key
per component), so switching necrosis, a rim or a node on or off does not change the primary's shape or
texture, and one seed gives one patient.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imaging.image import Units, image_from_array, point_to_index
from .anatomy import Anatomy
from .tissues import Tissue

RngLike = int | np.random.Generator | np.random.SeedSequence | None

#: Labels a lesion may not occupy (it is clipped away from them).
FORBIDDEN_FOR_LESIONS = frozenset({Tissue.OUTSIDE, Tissue.AIRWAY, Tissue.VERTEBRA, Tissue.MANDIBLE, Tissue.SKULL,
                                   Tissue.SPINAL_CORD, Tissue.CSF, Tissue.BRAIN, Tissue.VESSEL})
#: Tissues an inflammation rim may occupy (not air, bone, vessels, nervous tissue).
RIM_TISSUES = frozenset({Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.MUSCLE, Tissue.PAROTID_L, Tissue.PAROTID_R,
                         Tissue.SUBMANDIBULAR_L, Tissue.SUBMANDIBULAR_R, Tissue.LYMPHOID, Tissue.LARYNX,
                         Tissue.THYROID})
_MIN_RADIUS_FACTOR = 0.35


# ==================================================================================================
# Random streams and Gaussian random fields
# ==================================================================================================


def seed_sequence(rng: RngLike) -> np.random.SeedSequence:
    """A :class:`~numpy.random.SeedSequence` from an int seed, a Generator (one draw) or a SeedSequence."""
    if isinstance(rng, np.random.SeedSequence):
        return rng
    if isinstance(rng, np.random.Generator):
        return np.random.SeedSequence(int(rng.integers(0, 2**63 - 1)))
    return np.random.SeedSequence(0 if rng is None else int(rng))


def stream(seq: np.random.SeedSequence, *key: int | str) -> np.random.Generator:
    """An independent Generator for a named component (deterministic: names are CRC32-hashed into the
    spawn key, so the stream depends only on the seed and the key path, not on the order of calls)."""
    words = tuple(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in key)
    return np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, *words)))


def json_ready(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with non-finite floats replaced by ``None`` (the project's JSON
    writer refuses NaN), numpy scalars and arrays turned into Python values, enum keys into their names."""
    if isinstance(obj, dict):
        return {(k.name if isinstance(k, Tissue) else k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _kernel_energy(sigma_vox: float) -> float:
    """Sum of squares of the normalised 1D Gaussian kernel that ``ndimage.gaussian_filter`` applies."""
    if sigma_vox <= 0:
        return 1.0
    radius = int(4.0 * sigma_vox + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma_vox) ** 2)
    w /= w.sum()
    return float(np.sum(w**2))


def gaussian_random_field(shape: Sequence[int], spacing_mm: Sequence[float], correlation_length_mm: float,
                          rng: np.random.Generator) -> np.ndarray:
    """A stationary Gaussian random field of zero mean and unit variance on a ``[k, j, i]`` grid.

    White noise is filtered by a Gaussian of standard deviation ``ℓ/√2`` (mm), which gives the Gaussian
    correlation function ``exp(−r²/(2 ℓ²))`` (``ℓ`` = ``correlation_length_mm``). The noise is drawn on a
    box padded by the kernel radius and cropped (no boundary effect), and divided by the exact energy of
    the sampled kernel, so every voxel is exactly N(0, 1). ``spacing_mm`` is (x, y, z).
    """
    shape = tuple(int(s) for s in shape)
    sig = np.asarray(correlation_length_mm / np.sqrt(2.0) / np.asarray(spacing_mm, dtype=float))[::-1]  # k, j, i
    pad = [int(4.0 * s + 0.5) if s > 0 else 0 for s in sig]
    noise = rng.standard_normal(tuple(n + 2 * p for n, p in zip(shape, pad, strict=True)))
    if np.any(sig > 0):
        noise = ndimage.gaussian_filter(noise, sigma=[float(s) for s in sig], truncate=4.0, mode="constant")
    crop = tuple(slice(p, p + n) for p, n in zip(pad, shape, strict=True))
    energy = float(np.prod([_kernel_energy(float(s)) for s in sig]))
    return noise[crop] / np.sqrt(energy)


def lognormal_field(shape: Sequence[int], spacing_mm: Sequence[float], sigma: float, correlation_length_mm: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Multiplicative heterogeneity ``exp(σ g − σ²/2)`` (mean 1; ``pet_segmentation.md`` §10.2 A.3).

    ``g`` from :func:`gaussian_random_field`; σ 0.1-0.35 and ℓ 2-6 mm in the reference.
    """
    g = gaussian_random_field(shape, spacing_mm, correlation_length_mm, rng)
    return np.exp(sigma * g - 0.5 * sigma**2)


# ==================================================================================================
# Configuration
# ==================================================================================================


@dataclass(frozen=True)
class LesionConfig:
    """One lesion (primary tumour or involved node). Lengths in mm, volumes in mL, uptake x background.

    Position: ``centre_lps`` if given, else the anatomy landmark ``site`` (see ``Anatomy.landmarks``),
    plus ``offset_mm``; with ``fit`` the centre moves to the nearest point (within ``fit_search_mm``)
    where a sphere of the lesion's equivalent radius fits in tissue that can hold tumour.
    Shape: ``volume_ml`` (exact after clipping), ``axis_ratios`` (ellipsoid, normalised to product 1),
    ``orientation_deg`` (rotations about z, y, x; ``None`` = random about z with +-20 degree tilts),
    ``irregularity`` (s.d. of the degree-2 harmonic coefficients; 0.05-0.2 in the reference).
    Uptake: ``tbr`` (viable-tumour mean / background, 2-10 in the reference), ``heterogeneity_sigma``
    (0.1-0.35) with ``correlation_length_mm`` (2-6).
    Necrosis: ``necrosis_radius_fraction`` (0 = none; 0.3-0.6), ``necrosis_offset`` (eccentricity as a
    fraction of the lesion radius), ``necrosis_ratio`` (0.3-1.0 x background), ``necrosis_irregularity``
    (ε of the outline, design default 0.2), ``necrosis_correlation_mm`` (design default 4).
    Hypoxia: ``hypoxic_fraction`` of the viable volume (design default 0.3; Bollineni et al. report a
    median FAZA hypoxic fraction of 38 % at baseline, ``dose_painting.md`` §2.2), ``hypoxic_tmr`` and
    ``normoxic_tmr`` tumour-to-muscle ranges, ``necrosis_tmr``, ``hypoxia_irregularity`` (β, design
    default 0.3) and ``hypoxia_correlation_mm`` (design default 6).
    """

    site: str | None = "oropharynx_l"
    centre_lps: tuple[float, float, float] | None = None
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fit: bool = True
    fit_search_mm: float = 25.0
    volume_ml: float = 15.0
    axis_ratios: tuple[float, float, float] = (1.0, 0.85, 1.3)
    orientation_deg: tuple[float, float, float] | None = None
    irregularity: float = 0.12
    tbr: float = 5.0
    heterogeneity_sigma: float = 0.25
    correlation_length_mm: float = 4.0
    necrosis_radius_fraction: float = 0.0
    necrosis_offset: float = 0.0
    necrosis_ratio: float = 0.6
    necrosis_irregularity: float = 0.2
    necrosis_correlation_mm: float = 4.0
    hypoxic_fraction: float = 0.3
    hypoxic_tmr: tuple[float, float] = (1.4, 2.2)
    normoxic_tmr: tuple[float, float] = (1.0, 1.2)
    necrosis_tmr: float = 0.7
    hypoxia_irregularity: float = 0.3
    hypoxia_correlation_mm: float = 6.0


@dataclass(frozen=True)
class RimConfig:
    """Peritumoral inflammation rim: ``thickness_mm`` (2-6) at ``peak_ratio`` x background (1.3-2) at the
    GTV surface, cosine fall-off to 1 at the thickness (``pet_segmentation.md`` §10.2 A.3)."""

    thickness_mm: float = 4.0
    peak_ratio: float = 1.6


@dataclass(frozen=True)
class AdjacentConfig:
    """An avid non-tumour structure (tonsil-like lymphoid tissue or a reactive node) near the primary.

    Its surface lies ``gap_mm`` (2-10 in the reference) from the GTV surface, along ``direction`` (LPS
    unit vector; ``None`` = the direction with most room among 26 candidates). ``volume_ml`` and
    ``uptake_ratio`` (x background; tonsils 2-5 SUV in the reference, design default 3) are design
    defaults; it is a slightly irregular ellipsoid of uniform uptake, labelled lymphoid.
    """

    gap_mm: float = 5.0
    volume_ml: float = 2.0
    uptake_ratio: float = 3.0
    direction: tuple[float, float, float] | None = None
    tmr: float = 1.0


@dataclass(frozen=True)
class TumourConfig:
    """The lesions of one patient: a primary, an optional involved node, optional rim and adjacent avid
    structure. ``background_suv`` is the FDG background the ratios refer to (muscle, 1.0 SUVbw, from
    :mod:`.tissues`); ``supersample`` is the per-axis sub-sampling of surface voxels (design default 4)."""

    primary: LesionConfig = field(default_factory=LesionConfig)
    node: LesionConfig | None = None
    inflammation: RimConfig | None = None
    adjacent: AdjacentConfig | None = None
    background_suv: float = 1.0
    supersample: int = 4

    @classmethod
    def example(cls) -> TumourConfig:
        """A demonstration patient: 20 mL oropharyngeal primary with an eccentric necrotic core, a 3 mL
        level II node, no rim, no adjacent structure."""
        return cls(primary=LesionConfig(volume_ml=20.0, necrosis_radius_fraction=0.4, necrosis_offset=0.15),
                   node=LesionConfig(site="level_II_l", volume_ml=3.0, tbr=4.0, axis_ratios=(1.0, 1.0, 1.2),
                                     irregularity=0.06, hypoxic_fraction=0.0))


@dataclass(frozen=True)
class TimepointSpec:
    """How the lesions look at a later fraction, relative to baseline (design defaults, see
    :data:`DEFAULT_TIMEPOINTS`).

    ``volume_factor``: GTV volume / baseline; ``fdg_excess_factor``: (TBR − 1) / baseline (TBR − 1);
    ``hypoxic_fraction_factor``: hypoxic fraction / baseline hypoxic fraction; ``hypoxia_renewal``: weight
    of a new random component in the hypoxia score (0 = the same score, hypoxia only shrinks; larger =
    more resolved and newborn voxels); ``inflammation``: rim at this timepoint (``None`` = as baseline).
    """

    name: str
    fraction: int
    volume_factor: float
    fdg_excess_factor: float
    hypoxic_fraction_factor: float
    hypoxia_renewal: float = 0.6
    inflammation: RimConfig | None = None


#: Fraction 7 and 17 (``dose_painting.md`` §5.1). Shrinkage to 75 % and 45 % and the fall of FDG
#: excess are design defaults; the hypoxic fraction halving by week 1-2 and falling further by week 3-4
#: follows the FAZA trend of Bollineni et al. (38 % -> 15 % -> 1.5 %, §2.2); RT-induced inflammation
#: appears after about 3 weeks (§2.6), so fraction 17 gets a mild rim.
DEFAULT_TIMEPOINTS: tuple[TimepointSpec, ...] = (
    TimepointSpec("fx7", 7, volume_factor=0.75, fdg_excess_factor=0.7, hypoxic_fraction_factor=0.5),
    TimepointSpec("fx17", 17, volume_factor=0.45, fdg_excess_factor=0.45, hypoxic_fraction_factor=0.25,
                  inflammation=RimConfig(thickness_mm=4.0, peak_ratio=1.4)),
)


# ==================================================================================================
# Truth
# ==================================================================================================


@dataclass
class LesionTruth:
    """Scalar truth of one lesion (volumes in mL on the fine grid, from tissue fractions)."""

    name: str
    centre_lps: tuple[float, float, float]
    requested_volume_ml: float
    volume_ml: float  #: fine-grid tissue-fraction volume after clipping (includes necrosis)
    analytic_volume_ml: float  #: quadrature volume of the unclipped shape
    clipped_volume_ml: float  #: removed by clipping to tissue that can hold tumour
    r0_mm: float
    axis_ratios: tuple[float, float, float]
    rotation: list[list[float]]  #: columns: the lesion's axes in LPS
    sh_coefficients: dict[str, float]  #: "l,m" -> a_lm
    necrosis_volume_ml: float = 0.0
    viable_volume_ml: float = 0.0
    hypoxic_volume_ml: float = 0.0  #: binary hypoxic sub-volume (fine grid)
    hypoxic_fraction: float = 0.0  #: hypoxic / viable binary voxels
    hypoxia_threshold_score: float = float("nan")
    tbr: float = 0.0  #: viable-tumour mean uptake / background (exact)
    uptake_ratio: float = 0.0  #: adjacent structure: uptake / background
    gap_mm: float = float("nan")  #: adjacent structure: measured gap to the GTV surface

    def parameters(self) -> dict[str, object]:
        """JSON-ready scalars (non-finite values as ``None``)."""
        return json_ready(asdict(self))


@dataclass
class TumourTruth:
    """Exact fine-grid truth of the lesions of one patient at one timepoint (baseline coordinates).

    All arrays are ``[k, j, i]`` on the anatomy's fine grid (``reference``):

    * ``gtv_fraction``: primary GTV tissue fraction, necrosis included; ``node_fraction``: involved node
      (GTVn), necrosis included; ``necrosis_fraction``: necrotic part of both; ``avid_fraction``: the
      adjacent avid non-tumour structure.
    * ``inflammation``: rim weight in [0, 1]; ``inflammation_mask``: rim voxels (outside the GTV, within
      the rim thickness, in soft tissue).
    * ``hypoxic_mask``: binary hypoxic sub-volume (viable tumour voxels); ``tmr``: tumour-to-muscle ratio
      of the hypoxia tracer in lesion voxels (0 elsewhere).
    * ``fdg_lesion`` (SUVbw) and ``hypoxia_lesion`` (x muscle): the lesions' uptake, already weighted by
      their tissue fractions; ``fdg_background_factor``: multiplies the background uptake (rim), 1 elsewhere.

    Compose a tracer map with :func:`apply_lesion_uptake`, the label map with :func:`paint_lesion_labels`.
    """

    reference: sitk.Image
    gtv_fraction: np.ndarray
    node_fraction: np.ndarray
    necrosis_fraction: np.ndarray
    avid_fraction: np.ndarray
    inflammation: np.ndarray
    inflammation_mask: np.ndarray
    hypoxic_mask: np.ndarray
    tmr: np.ndarray
    fdg_lesion: np.ndarray
    hypoxia_lesion: np.ndarray
    fdg_background_factor: np.ndarray
    lesions: dict[str, LesionTruth]
    config: TumourConfig
    timepoint: TimepointSpec | None = None

    @property
    def lesion_fraction(self) -> np.ndarray:
        """Fraction of each voxel occupied by lesions (GTV + node + adjacent structure), <= 1."""
        return self.gtv_fraction + self.node_fraction + self.avid_fraction

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.reference.GetSpacing())) / 1000.0

    def gtv_mask(self, include_node: bool = False, threshold: float = 0.5) -> np.ndarray:
        """Binary GTV (fraction >= ``threshold``, the reference's binary GT), optionally with the node."""
        frac = self.gtv_fraction + self.node_fraction if include_node else self.gtv_fraction
        return frac >= threshold

    def image(self, name: str) -> sitk.Image:
        """One truth array as a SimpleITK image on the fine grid, with its units."""
        units = {"gtv_fraction": Units.FRACTION, "node_fraction": Units.FRACTION, "necrosis_fraction": Units.FRACTION,
                 "avid_fraction": Units.FRACTION, "inflammation": Units.FRACTION, "inflammation_mask": Units.LABEL,
                 "hypoxic_mask": Units.LABEL, "tmr": Units.RATIO, "fdg_lesion": Units.SUV_BW,
                 "hypoxia_lesion": Units.RATIO, "fdg_background_factor": Units.RATIO}
        if name not in units:
            raise InputError(f"unknown truth array {name!r}; use one of {', '.join(units)}")
        array = getattr(self, name)
        array = array.astype(np.uint8) if array.dtype == bool else array.astype(np.float32)
        return image_from_array(array, self.reference, units=units[name])

    def parameters(self) -> dict[str, object]:
        """JSON-ready truth: configuration, timepoint and per-lesion scalars."""
        return json_ready({
            "config": asdict(self.config),
            "timepoint": None if self.timepoint is None else asdict(self.timepoint),
            "lesions": {k: v.parameters() for k, v in self.lesions.items()},
            "inflammation_volume_ml": float(np.count_nonzero(self.inflammation_mask)) * self.voxel_volume_ml,
            "hypoxic_volume_ml": float(np.count_nonzero(self.hypoxic_mask)) * self.voxel_volume_ml,
        })


@dataclass
class HypoxiaChange:
    """Hypoxia at timepoint k against all earlier timepoints (``dose_painting.md`` §5.3), baseline grid."""

    name: str
    persistent: np.ndarray  #: hypoxic now and at some earlier timepoint
    resolved: np.ndarray  #: hypoxic earlier, not now
    newborn: np.ndarray  #: hypoxic now, never before
    persistent_ml: float
    resolved_ml: float
    newborn_ml: float


@dataclass
class TumourSeries:
    """Baseline and later timepoints of the same lesions (all in baseline coordinates)."""

    timepoints: list[TumourTruth]  #: baseline first
    hypoxia_changes: list[HypoxiaChange]  #: one per later timepoint

    def parameters(self) -> dict[str, object]:
        return {
            "timepoints": [t.parameters() for t in self.timepoints],
            "hypoxia_changes": [{"name": c.name, "persistent_ml": c.persistent_ml, "resolved_ml": c.resolved_ml,
                                 "newborn_ml": c.newborn_ml} for c in self.hypoxia_changes],
        }


# ==================================================================================================
# Geometry helpers
# ==================================================================================================


class _Box:
    """A sub-box of the fine grid: index slices (k, j, i) and 1D LPS coordinates."""

    def __init__(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray):
        sl = []
        for d in range(3):
            a = axes[d]
            i0 = int(np.clip(np.searchsorted(a, lo[d], side="left"), 0, a.size))
            i1 = int(np.clip(np.searchsorted(a, hi[d], side="right"), i0, a.size))
            sl.append(slice(i0, i1))
        self.slices = (sl[2], sl[1], sl[0])
        self.x, self.y, self.z = axes[0][sl[0]], axes[1][sl[1]], axes[2][sl[2]]
        self.shape = (self.z.size, self.y.size, self.x.size)
        self.spacing = tuple(float(a[1] - a[0]) if a.size > 1 else 1.0 for a in axes)

    @property
    def empty(self) -> bool:
        return min(self.shape) == 0

    def points(self, mask: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) LPS points of the voxel centres (all, or where ``mask``)."""
        zz, yy, xx = np.meshgrid(self.z, self.y, self.x, indexing="ij")
        if mask is not None:
            return np.stack([xx[mask], yy[mask], zz[mask]], axis=1)
        return np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)


class _FieldBox:
    """A random field sampled on a box of the fine grid, interpolated (trilinear) at any LPS point."""

    def __init__(self, values: np.ndarray, box: _Box):
        self.values = values
        self.origin = np.array([box.x[0], box.y[0], box.z[0]])
        self.spacing = np.asarray(box.spacing)

    def at(self, points: np.ndarray) -> np.ndarray:
        idx = (points - self.origin) / self.spacing
        return ndimage.map_coordinates(self.values, [idx[:, 2], idx[:, 1], idx[:, 0]], order=1, mode="nearest")


def _sh_terms(degrees: Sequence[int]) -> list[tuple[int, int]]:
    return [(deg, m) for deg in degrees for m in range(-deg, deg + 1)]


def _real_sph_harm(terms: Sequence[tuple[int, int]], n: np.ndarray,
                   coefficients: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal real spherical harmonics (degree 0-4, no Condon-Shortley phase) at unit vectors ``n``
    (N, 3), as an array (len(terms), N), or their sum weighted by ``coefficients`` (N,). Closed-form
    Cartesian polynomials (the standard table of real harmonics): much faster than associated Legendre
    functions and exactly orthonormal on the sphere."""
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    pi = np.pi
    xx, yy, zz = x * x, y * y, z * z
    table: dict[tuple[int, int], Callable[[], np.ndarray]] = {
        (0, 0): lambda: np.full_like(x, 0.5 / np.sqrt(pi)),
        (1, -1): lambda: np.sqrt(3 / (4 * pi)) * y,
        (1, 0): lambda: np.sqrt(3 / (4 * pi)) * z,
        (1, 1): lambda: np.sqrt(3 / (4 * pi)) * x,
        (2, -2): lambda: 0.5 * np.sqrt(15 / pi) * x * y,
        (2, -1): lambda: 0.5 * np.sqrt(15 / pi) * y * z,
        (2, 0): lambda: 0.25 * np.sqrt(5 / pi) * (3 * zz - 1),
        (2, 1): lambda: 0.5 * np.sqrt(15 / pi) * x * z,
        (2, 2): lambda: 0.25 * np.sqrt(15 / pi) * (xx - yy),
        (3, -3): lambda: 0.25 * np.sqrt(35 / (2 * pi)) * y * (3 * xx - yy),
        (3, -2): lambda: 0.5 * np.sqrt(105 / pi) * x * y * z,
        (3, -1): lambda: 0.25 * np.sqrt(21 / (2 * pi)) * y * (5 * zz - 1),
        (3, 0): lambda: 0.25 * np.sqrt(7 / pi) * z * (5 * zz - 3),
        (3, 1): lambda: 0.25 * np.sqrt(21 / (2 * pi)) * x * (5 * zz - 1),
        (3, 2): lambda: 0.25 * np.sqrt(105 / pi) * (xx - yy) * z,
        (3, 3): lambda: 0.25 * np.sqrt(35 / (2 * pi)) * x * (xx - 3 * yy),
        (4, -4): lambda: 0.75 * np.sqrt(35 / pi) * x * y * (xx - yy),
        (4, -3): lambda: 0.75 * np.sqrt(35 / (2 * pi)) * y * z * (3 * xx - yy),
        (4, -2): lambda: 0.75 * np.sqrt(5 / pi) * x * y * (7 * zz - 1),
        (4, -1): lambda: 0.75 * np.sqrt(5 / (2 * pi)) * y * z * (7 * zz - 3),
        (4, 0): lambda: 3 / 16 * np.sqrt(1 / pi) * (35 * zz * zz - 30 * zz + 3),
        (4, 1): lambda: 0.75 * np.sqrt(5 / (2 * pi)) * x * z * (7 * zz - 3),
        (4, 2): lambda: 3 / 8 * np.sqrt(5 / pi) * (xx - yy) * (7 * zz - 1),
        (4, 3): lambda: 0.75 * np.sqrt(35 / (2 * pi)) * x * z * (xx - 3 * yy),
        (4, 4): lambda: 3 / 16 * np.sqrt(35 / pi) * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
    }
    unknown = [t for t in terms if t not in table]
    if unknown:
        raise InputError(f"spherical harmonics {unknown} are not available (degrees 0-4 only)")
    if coefficients is not None:
        total = np.zeros(n.shape[0])
        for term, a in zip(terms, coefficients, strict=True):
            total += a * table[term]()
        return total
    out = np.empty((len(terms), n.shape[0]))
    for row, term in enumerate(terms):
        out[row] = table[term]()
    return out


def _sphere_quadrature(n_theta: int = 32, n_phi: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors and weights (sum 4π) exact for band-limited functions of degree < 2 n_theta."""
    mu, w_mu = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    mm, pp = np.meshgrid(mu, phi, indexing="ij")
    s = np.sqrt(1 - mm**2)
    n = np.stack([s * np.cos(pp), s * np.sin(pp), mm], axis=-1).reshape(-1, 3)
    w = (w_mu[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).ravel()
    return n, w


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix R = Rz(a) Ry(b) Rx(c) (columns: the rotated axes in LPS)."""
    a, b, c = np.radians(angles_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class LesionShape:
    """A star-shaped lesion: ``x = c + R diag(s) q`` with ``|q| <= r0 (1 + Σ a_lm Y_lm(q/|q|))``."""

    centre: np.ndarray
    rotation: np.ndarray
    axis_ratios: np.ndarray
    terms: list[tuple[int, int]]
    coefficients: np.ndarray
    r0: float

    def perturbation(self, n: np.ndarray) -> np.ndarray:
        """f(n) = Σ a_lm Y_lm(n) at unit vectors (N, 3) (accumulated term by term: no BLAS, low memory)."""
        return _real_sph_harm(self.terms, n, self.coefficients)

    def local(self, points: np.ndarray, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius ``u`` (<= 1 inside) and the point ``q̂`` mapped into the unit ball."""
        c = self.centre if centre is None else centre
        dx, dy, dz = points[:, 0] - c[0], points[:, 1] - c[1], points[:, 2] - c[2]
        r, s = self.rotation, self.axis_ratios
        q = [(dx * r[0, a] + dy * r[1, a] + dz * r[2, a]) / s[a] for a in range(3)]
        rho = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        inv = 1.0 / np.where(rho > 0, rho, 1.0)
        n = np.stack([q[0] * inv, q[1] * inv, np.where(rho > 0, q[2] * inv, 1.0)], axis=1)
        u = rho / (self.r0 * (1.0 + self.perturbation(n)))
        return u, n * u[:, None]

    def volume_factor(self) -> float:
        """``V / r0³`` = (1/3) ∫ (1 + f)³ dΩ (exact quadrature; the axis ratios have product 1)."""
        n, w = _sphere_quadrature()
        return float(np.sum(w * (1.0 + self.perturbation(n)) ** 3) / 3.0)

    def volume_mm3(self) -> float:
        return self.r0**3 * self.volume_factor()

    def max_radius_mm(self) -> float:
        n, _ = _sphere_quadrature(48, 96)
        return float(self.r0 * np.max(1.0 + self.perturbation(n)) * np.max(self.axis_ratios) * 1.02)

    def surface_distance(self, direction: np.ndarray) -> float:
        """Distance from the centre to the surface along an LPS unit vector (exact for a star shape)."""
        q = (direction @ self.rotation) / self.axis_ratios
        qn = np.linalg.norm(q)
        return float(self.r0 * (1.0 + self.perturbation((q / qn)[None, :])[0]) / qn)

    def sh_dict(self) -> dict[str, float]:
        return {f"{deg},{m}": float(a) for (deg, m), a in zip(self.terms, self.coefficients, strict=True)}


def _supersample_offsets(spacing: Sequence[float], n: int) -> np.ndarray:
    o = (np.arange(n) + 0.5) / n - 0.5
    ox, oy, oz = np.meshgrid(o * spacing[0], o * spacing[1], o * spacing[2], indexing="ij")
    return np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)


def _fraction(box: _Box, inside_fn: Callable[[np.ndarray], np.ndarray], centre_inside: np.ndarray,
              supersample: int, extra_band: np.ndarray | None = None) -> np.ndarray:
    """Tissue fraction on ``box``: 1/0 from voxel centres, supersampled in a one-voxel band at the surface."""
    frac = centre_inside.astype(np.float32)
    if supersample <= 1 or (not centre_inside.any() and extra_band is None):
        return frac
    cube = np.ones((3, 3, 3), bool)
    band = ndimage.binary_dilation(centre_inside, cube) & ~ndimage.binary_erosion(centre_inside, cube,
                                                                                    border_value=0)
    if extra_band is not None:
        band |= extra_band
    if not band.any():
        return frac
    centres = box.points(band)
    offsets = _supersample_offsets(box.spacing, supersample)
    out = np.empty(centres.shape[0], np.float32)
    chunk = max(1, 400_000 // offsets.shape[0])
    for start in range(0, centres.shape[0], chunk):
        c = centres[start:start + chunk]
        pts = (c[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
        out[start:start + chunk] = inside_fn(pts).reshape(c.shape[0], -1).mean(axis=1)
    frac[band] = out
    return frac


# ==================================================================================================
# The lesion model
# ==================================================================================================


def _allowed(anatomy: Anatomy) -> np.ndarray:
    key = "lesion_allowed"
    if key not in anatomy.cache:
        anatomy.cache[key] = ~np.isin(anatomy.labels, np.fromiter(FORBIDDEN_FOR_LESIONS, dtype=np.uint8))
    return anatomy.cache[key]


def _clearance(anatomy: Anatomy) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest voxel that cannot hold tumour (cached per anatomy)."""
    key = "lesion_clearance_mm"
    if key not in anatomy.cache:
        anatomy.cache[key] = ndimage.distance_transform_edt(_allowed(anatomy),
                                                            sampling=anatomy.spacing[::-1]).astype(np.float32)
    return anatomy.cache[key]


def _tuple3(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _equivalent_radius(volume_ml: float) -> float:
    return float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def fit_centre(anatomy: Anatomy, centre_lps: Sequence[float], radius_mm: float, search_mm: float = 25.0
               ) -> tuple[float, float, float]:
    """The voxel centre nearest to ``centre_lps`` (within ``search_mm``) where a sphere of ``radius_mm``
    lies in tissue that can hold tumour; if there is none, the point of largest clearance in that range."""
    axes = anatomy.axes()
    c = np.asarray(centre_lps, dtype=float)
    box = _Box(axes, c - search_mm, c + search_mm)
    if box.empty:
        raise InputError(f"lesion centre {tuple(c)} mm (LPS) lies outside the anatomy's field of view")
    clear = _clearance(anatomy)[box.slices]
    zz, yy, xx = np.meshgrid(box.z, box.y, box.x, indexing="ij")
    dist = np.sqrt((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2)
    within = dist <= search_mm
    ok = within & (clear >= radius_mm)
    if ok.any():
        idx = np.unravel_index(np.argmin(np.where(ok, dist, np.inf)), dist.shape)
    else:
        idx = np.unravel_index(np.argmax(np.where(within, clear - 1e-3 * dist, -np.inf)), dist.shape)
    return float(xx[idx]), float(yy[idx]), float(zz[idx])


def _check_lesion(cfg: LesionConfig, what: str) -> None:
    def bad(msg: str) -> InputError:
        return InputError(f"{what}: {msg}")

    if not cfg.volume_ml > 0:
        raise bad(f"volume_ml must be positive, got {cfg.volume_ml}")
    if min(cfg.axis_ratios) <= 0:
        raise bad(f"axis_ratios must be positive, got {cfg.axis_ratios}")
    if not 0 <= cfg.irregularity <= 0.4:
        raise bad(f"irregularity must be in [0, 0.4], got {cfg.irregularity}")
    if cfg.tbr <= 0 or cfg.heterogeneity_sigma < 0 or cfg.correlation_length_mm <= 0:
        raise bad("tbr and correlation_length_mm must be positive and heterogeneity_sigma >= 0")
    fn, eps = cfg.necrosis_radius_fraction, cfg.necrosis_irregularity
    if fn < 0 or fn * (1 + 2 * eps) > 0.95:
        raise bad(f"necrosis_radius_fraction x (1 + 2 necrosis_irregularity) must be in [0, 0.95], got "
                  f"{fn} x {1 + 2 * eps:.2f}")
    if not 0 <= cfg.hypoxic_fraction < 1:
        raise bad(f"hypoxic_fraction must be in [0, 1), got {cfg.hypoxic_fraction}")
    if cfg.site is None and cfg.centre_lps is None:
        raise bad("give a site (landmark name) or centre_lps")


class _LesionModel:
    """All random draws of one lesion (shape, orientation, fields), rendered at any scale and timepoint."""

    def __init__(self, anatomy: Anatomy, cfg: LesionConfig, seq: np.random.SeedSequence, name: str):
        _check_lesion(cfg, f"{name} lesion")
        self.anatomy, self.cfg, self.name = anatomy, cfg, name
        self.axes = anatomy.axes()
        rng = stream(seq, name, "shape")
        # Centre.
        if cfg.centre_lps is not None:
            centre = np.asarray(cfg.centre_lps, dtype=float)
        else:
            if cfg.site not in anatomy.landmarks:
                raise InputError(f"{name} lesion: unknown site {cfg.site!r}; use one of "
                                 f"{', '.join(sorted(anatomy.landmarks))} or give centre_lps")
            centre = np.asarray(anatomy.landmarks[cfg.site], dtype=float)
        centre = centre + np.asarray(cfg.offset_mm, dtype=float)
        if cfg.fit:
            centre = np.asarray(fit_centre(anatomy, centre, _equivalent_radius(cfg.volume_ml), cfg.fit_search_mm))
        # Orientation and shape coefficients.
        angles = cfg.orientation_deg
        if angles is None:
            angles = (rng.uniform(0, 360), rng.uniform(-20, 20), rng.uniform(-20, 20))
        else:
            rng.uniform(size=3)  # keep the stream aligned whether or not the orientation is given
        ratios = np.asarray(cfg.axis_ratios, dtype=float)
        ratios = ratios / np.prod(ratios) ** (1.0 / 3.0)
        terms = _sh_terms((2, 3, 4))
        sd = np.array([cfg.irregularity * 2.0 / deg for deg, _ in terms])
        coefficients = sd * rng.standard_normal(len(terms))
        shape = LesionShape(centre, _rotation(angles), ratios, terms, coefficients, 1.0)
        n, _ = _sphere_quadrature(48, 96)
        fmin = float(np.min(shape.perturbation(n)))
        if 1.0 + fmin < _MIN_RADIUS_FACTOR:
            shape.coefficients = coefficients * (1.0 - _MIN_RADIUS_FACTOR) / (-fmin)
        shape.r0 = (cfg.volume_ml * 1000.0 / shape.volume_factor()) ** (1.0 / 3.0)
        self.shape = shape
        self.angles = tuple(float(a) for a in angles)
        # Necrosis centre (unit-ball coordinates) and hypoxia centre.
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        fn, eps = cfg.necrosis_radius_fraction, cfg.necrosis_irregularity
        offset = float(np.clip(cfg.necrosis_offset, 0.0, max(0.0, 0.95 - fn * (1 + 2 * eps))))
        self.necrosis_centre = offset * direction
        hyp_dir = rng.standard_normal(3)
        hyp_dir /= np.linalg.norm(hyp_dir)
        self.hypoxia_centre = self.necrosis_centre if fn > 0 else rng.uniform(0.2, 0.5) * hyp_dir
        # Random fields on a box around the lesion (generous: clipping may grow r0).
        self.seq = seq
        reach = 1.25 * shape.max_radius_mm() + 2.0 * max(cfg.correlation_length_mm, cfg.hypoxia_correlation_mm)
        self.field_box = _Box(self.axes, centre - reach, centre + reach)
        sp = self.field_box.spacing
        fb = self.field_box
        self.heterogeneity = _FieldBox(
            lognormal_field(fb.shape, sp, cfg.heterogeneity_sigma, cfg.correlation_length_mm,
                            stream(seq, name, "heterogeneity")), fb)
        self.necrosis_field = None if fn <= 0 else _FieldBox(
            gaussian_random_field(fb.shape, sp, cfg.necrosis_correlation_mm, stream(seq, name, "necrosis")), fb)
        self.hypoxia_field = _FieldBox(
            gaussian_random_field(fb.shape, sp, cfg.hypoxia_correlation_mm, stream(seq, name, "hypoxia")), fb)

    def renewal_field(self, fraction: int) -> _FieldBox:
        fb = self.field_box
        return _FieldBox(gaussian_random_field(fb.shape, fb.spacing, self.cfg.hypoxia_correlation_mm,
                                               stream(self.seq, self.name, "renewal", int(fraction))), fb)

    # ----------------------------------------------------------------------------------------------
    def render(self, volume_ml: float, clip: Callable[[_Box], np.ndarray], supersample: int,
               baseline_r0: float | None = None) -> _Render:
        """GTV and necrosis fractions on a box, clipped, with ``r0`` solved so the clipped volume is
        ``volume_ml`` (to 0.2 %). ``baseline_r0`` (later timepoints) sets the material coordinates of the
        random fields."""
        shape = replace(self.shape)
        shape.r0 = (volume_ml * 1000.0 / shape.volume_factor()) ** (1.0 / 3.0)
        vv = float(np.prod(self.field_box.spacing)) / 1000.0
        first = self._render_once(shape, clip, supersample, baseline_r0=baseline_r0, gtv_only=True)
        box, gtv = first.box, first.gtv
        for _ in range(6):
            got = float(gtv.sum()) * vv
            if got <= 0:
                raise InputError(f"{self.name} lesion of {volume_ml} mL at {tuple(np.round(shape.centre, 1))} mm "
                                 "has no voxel in tissue that can hold tumour; move it")
            if abs(got / volume_ml - 1.0) < 0.002:
                break
            shape = replace(shape, r0=shape.r0 * (volume_ml / got) ** (1.0 / 3.0))
            again = self._render_once(shape, clip, supersample, baseline_r0=baseline_r0, gtv_only=True)
            box, gtv = again.box, again.gtv
        return self._render_once(shape, clip, supersample, baseline_r0=baseline_r0, known=(box, gtv))

    def _render_once(self, shape: LesionShape, clip: Callable[[_Box], np.ndarray], supersample: int, *,
                     baseline_r0: float | None, gtv_only: bool = False,
                     known: tuple[_Box, np.ndarray] | None = None) -> _Render:
        """Render on the lesion's box; ``gtv_only`` skips necrosis and fields; ``known`` = (box, GTV
        fraction) already rendered for this ``shape``."""
        cfg = self.cfg
        if known is not None:
            box = known[0]
        else:
            reach = shape.max_radius_mm() + 2.0 * max(self.field_box.spacing)
            box = _Box(self.axes, shape.centre - reach, shape.centre + reach)
        if box.empty:
            raise InputError(f"{self.name} lesion at {tuple(np.round(shape.centre, 1))} mm lies outside the "
                             "field of view")
        s = 1.0 if baseline_r0 is None else shape.r0 / baseline_r0
        c = shape.centre

        def material(points: np.ndarray) -> np.ndarray:
            return c + (points - c) / s

        pts = box.points()
        u, qhat = shape.local(pts)
        allowed = clip(box).astype(np.float32)

        def gtv_fn(p: np.ndarray) -> np.ndarray:
            return shape.local(p)[0] <= 1.0

        if known is not None:
            gtv = known[1]
        else:
            gtv = _fraction(box, gtv_fn, (u <= 1.0).reshape(box.shape), supersample) * allowed
        if gtv_only:
            return _Render(box=box, shape=shape, gtv=gtv, necrosis=gtv, heterogeneity=gtv, score=gtv,
                           material_points=pts)
        fn = cfg.necrosis_radius_fraction
        nec = np.zeros_like(gtv)
        if fn > 0 and self.necrosis_field is not None:
            eps, nec_field = cfg.necrosis_irregularity, self.necrosis_field

            def nec_fn(p: np.ndarray) -> np.ndarray:
                uu, qq = shape.local(p)
                g = np.clip(nec_field.at(material(p)), -2.0, 2.0)
                return (uu <= 1.0) & (np.linalg.norm(qq - self.necrosis_centre, axis=1) <= fn * (1 + eps * g))

            nec_centre = nec_fn(pts).reshape(box.shape)
            band = ndimage.binary_dilation(nec_centre, np.ones((3, 3, 3), bool)) & ~nec_centre
            nec = np.minimum(_fraction(box, nec_fn, nec_centre, supersample, extra_band=band) * allowed, gtv)
        # Voxel-centre fields for uptake (material coordinates carry the texture along with the shrinkage).
        mpts = material(pts)
        het = self.heterogeneity.at(mpts).reshape(box.shape)
        score = (-np.linalg.norm(qhat - self.hypoxia_centre, axis=1)
                 + cfg.hypoxia_irregularity * self.hypoxia_field.at(mpts)).reshape(box.shape)
        return _Render(box=box, shape=shape, gtv=gtv, necrosis=nec, heterogeneity=het, score=score,
                       material_points=mpts)


@dataclass
class _Render:
    """One lesion rendered on a box of the fine grid."""

    box: _Box
    shape: LesionShape
    gtv: np.ndarray  #: tissue fraction, necrosis included, clipped
    necrosis: np.ndarray
    heterogeneity: np.ndarray  #: log-normal field at the voxel centres (not normalised)
    score: np.ndarray  #: hypoxia score at the voxel centres
    material_points: np.ndarray  #: (N, 3) material coordinates of the voxel centres


def _hypoxia(cfg: LesionConfig, score: np.ndarray, viable_fraction: np.ndarray, viable_binary: np.ndarray,
             hypoxic_fraction: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Hypoxic mask (binary viable voxels with the top scores), viable tumour-to-muscle ratio, threshold."""
    present = viable_fraction > 0
    tmr = np.zeros(score.shape, np.float32)
    if not present.any():
        return np.zeros(score.shape, bool), tmr, float("nan")
    values = score[viable_binary] if viable_binary.any() else score[present]
    threshold = float(np.quantile(values, 1.0 - hypoxic_fraction, method="higher")) if hypoxic_fraction > 0 \
        else float("inf")
    lo, hi = float(values.min()), float(values.max())
    n_lo, n_hi = cfg.normoxic_tmr
    h_lo, h_hi = cfg.hypoxic_tmr
    normoxic = n_lo + (n_hi - n_lo) * np.clip((score - lo) / max(min(threshold, hi) - lo, 1e-9), 0.0, 1.0)
    hypoxic = h_lo + (h_hi - h_lo) * np.clip((score - threshold) / max(hi - threshold, 1e-9), 0.0, 1.0) \
        if np.isfinite(threshold) else normoxic
    tmr = np.where(score >= threshold, hypoxic, normoxic).astype(np.float32)
    tmr[~present] = 0.0
    return viable_binary & (score >= threshold), tmr, threshold


@dataclass
class _Adjacent:
    box: _Box
    fraction: np.ndarray
    shape: LesionShape


class _TumourModel:
    """Random draws of all lesions of one patient; renders any timepoint."""

    def __init__(self, anatomy: Anatomy, config: TumourConfig, rng: RngLike):
        if config.background_suv <= 0 or config.supersample < 1:
            raise InputError("TumourConfig.background_suv must be positive and supersample >= 1")
        self.anatomy, self.config = anatomy, config
        self.seq = seed_sequence(rng)
        self.primary = _LesionModel(anatomy, config.primary, self.seq, "primary")
        self.node = None if config.node is None else _LesionModel(anatomy, config.node, self.seq, "node")
        self._adjacent: _Adjacent | None = None
        self._renewal: dict[tuple[str, int], _FieldBox] = {}
        self._baseline_r0: dict[str, float] = {}

    def render(self, timepoint: TimepointSpec | None = None) -> TumourTruth:
        an, cfg = self.anatomy, self.config
        if timepoint is not None and not self._baseline_r0:
            self.render(None)  # the baseline fixes r0 (material coordinates) and the adjacent structure
        allowed = _allowed(an)
        vv = an.voxel_volume_ml
        full = {k: np.zeros(an.labels.shape, np.float32)
                for k in ("gtv", "node", "necrosis", "avid", "tmr", "fdg", "hyp")}
        hypoxic_mask = np.zeros(an.labels.shape, bool)
        lesions: dict[str, LesionTruth] = {}
        vol_factor = 1.0 if timepoint is None else timepoint.volume_factor
        for key, model in (("primary", self.primary), ("node", self.node)):
            if model is None:
                continue
            lc = model.cfg
            taken = full["gtv"]

            def clip(box: _Box, taken: np.ndarray = taken) -> np.ndarray:
                return allowed[box.slices] * (1.0 - taken[box.slices])

            res = model.render(lc.volume_ml * vol_factor, clip, cfg.supersample, self._baseline_r0.get(key))
            if timepoint is None:
                self._baseline_r0[key] = res.shape.r0
            gtv, nec = res.gtv, res.necrosis
            viable = gtv - nec
            viable_binary = (gtv >= 0.5) & (nec < 0.5)
            # FDG: heterogeneity normalised to a viable-tumour mean of exactly 1.
            tbr = lc.tbr if timepoint is None else 1.0 + (lc.tbr - 1.0) * timepoint.fdg_excess_factor
            wsum = float(viable.sum())
            het = res.heterogeneity / (float((res.heterogeneity * viable).sum()) / wsum) if wsum > 0 \
                else res.heterogeneity
            fdg = cfg.background_suv * (viable * tbr * het + nec * lc.necrosis_ratio)
            # Hypoxia (a new random component at later timepoints).
            score, hf = res.score, lc.hypoxic_fraction
            if timepoint is not None:
                hf *= timepoint.hypoxic_fraction_factor
                if timepoint.hypoxia_renewal > 0:
                    rk = (key, timepoint.fraction)
                    if rk not in self._renewal:
                        self._renewal[rk] = model.renewal_field(timepoint.fraction)
                    extra = self._renewal[rk].at(res.material_points).reshape(res.box.shape)
                    score = score + timepoint.hypoxia_renewal * lc.hypoxia_irregularity * extra
            hmask, tmr_viable, thr = _hypoxia(lc, score, viable, viable_binary, hf)
            hyp = viable * tmr_viable + nec * lc.necrosis_tmr
            with np.errstate(divide="ignore", invalid="ignore"):
                tmr = np.where(gtv > 0, hyp / np.where(gtv > 0, gtv, 1.0), 0.0)
            sl = res.box.slices
            full["gtv" if key == "primary" else "node"][sl] += gtv
            full["necrosis"][sl] += nec
            full["fdg"][sl] += fdg
            full["hyp"][sl] += hyp
            full["tmr"][sl] = np.where(gtv > 0, tmr, full["tmr"][sl])
            hypoxic_mask[sl] |= hmask
            volume = float(gtv.sum()) * vv
            analytic = res.shape.volume_mm3() / 1000.0
            lesions[key] = LesionTruth(
                name=key, centre_lps=_tuple3(res.shape.centre), requested_volume_ml=lc.volume_ml * vol_factor,
                volume_ml=volume, analytic_volume_ml=analytic, clipped_volume_ml=max(0.0, analytic - volume),
                r0_mm=res.shape.r0, axis_ratios=_tuple3(res.shape.axis_ratios),
                rotation=res.shape.rotation.tolist(), sh_coefficients=res.shape.sh_dict(),
                necrosis_volume_ml=float(nec.sum()) * vv, viable_volume_ml=float(viable.sum()) * vv,
                hypoxic_volume_ml=float(hmask.sum()) * vv,
                hypoxic_fraction=float(hmask.sum()) / max(1, int(viable_binary.sum())),
                hypoxia_threshold_score=thr, tbr=float(tbr))
        self._add_adjacent(full, lesions, allowed)
        rim = cfg.inflammation
        if timepoint is not None and timepoint.inflammation is not None:
            rim = timepoint.inflammation
        factor = np.ones(an.labels.shape, np.float32)
        weight = np.zeros(an.labels.shape, np.float32)
        rim_mask = np.zeros(an.labels.shape, bool)
        if rim is not None:
            weight, rim_mask = self._rim(full["gtv"], full["node"] + full["avid"], rim)
            factor += np.float32(rim.peak_ratio - 1.0) * weight
        return TumourTruth(
            reference=an.label_image, gtv_fraction=full["gtv"], node_fraction=full["node"],
            necrosis_fraction=full["necrosis"], avid_fraction=full["avid"], inflammation=weight,
            inflammation_mask=rim_mask, hypoxic_mask=hypoxic_mask, tmr=full["tmr"], fdg_lesion=full["fdg"],
            hypoxia_lesion=full["hyp"], fdg_background_factor=factor, lesions=lesions, config=cfg,
            timepoint=timepoint)

    # ----------------------------------------------------------------------------------------------
    def _add_adjacent(self, full: dict[str, np.ndarray], lesions: dict[str, LesionTruth],
                      allowed: np.ndarray) -> None:
        adj = self.config.adjacent
        if adj is None:
            return
        if self._adjacent is None:
            self._adjacent = self._place_adjacent(adj, full["gtv"], allowed)
        a = self._adjacent
        sl = a.box.slices
        frac = np.clip(a.fraction * (1.0 - full["gtv"][sl] - full["node"][sl]), 0.0, None)
        full["avid"][sl] += frac
        full["fdg"][sl] += self.config.background_suv * adj.uptake_ratio * frac
        full["hyp"][sl] += adj.tmr * frac
        full["tmr"][sl] = np.where(frac > 0, adj.tmr, full["tmr"][sl])
        vv = self.anatomy.voxel_volume_ml
        analytic = a.shape.volume_mm3() / 1000.0
        lesions["adjacent"] = LesionTruth(
            name="adjacent", centre_lps=_tuple3(a.shape.centre), requested_volume_ml=adj.volume_ml,
            volume_ml=float(frac.sum()) * vv, analytic_volume_ml=analytic,
            clipped_volume_ml=max(0.0, analytic - float(frac.sum()) * vv), r0_mm=a.shape.r0,
            axis_ratios=(1.0, 1.0, 1.0), rotation=np.eye(3).tolist(), sh_coefficients=a.shape.sh_dict(),
            uptake_ratio=adj.uptake_ratio, gap_mm=self._measure_gap(full["gtv"], full["avid"]))

    def _measure_gap(self, gtv: np.ndarray, other: np.ndarray) -> float:
        """Smallest surface-to-surface distance (mm) between two binary (fraction >= 0.5) structures: the
        nearest voxel-centre pair distance minus one voxel (touching voxels: gap 0), so +-0.5 voxel."""
        a, b = gtv >= 0.5, other >= 0.5
        if not a.any() or not b.any():
            return float("nan")
        idx = np.argwhere(a | b)
        sl = tuple(slice(int(l0), int(h0)) for l0, h0 in zip(idx.min(axis=0), idx.max(axis=0) + 1, strict=True))
        dist = ndimage.distance_transform_edt(~a[sl], sampling=self.anatomy.spacing[::-1])
        return float(max(0.0, dist[b[sl]].min() - min(self.anatomy.spacing)))

    def _place_adjacent(self, adj: AdjacentConfig, gtv: np.ndarray, allowed: np.ndarray) -> _Adjacent:
        an = self.anatomy
        rng = stream(self.seq, "adjacent", "shape")
        prim = replace(self.primary.shape, r0=self._baseline_r0["primary"])
        r_adj = _equivalent_radius(adj.volume_ml)
        if adj.direction is not None:
            d = np.asarray(adj.direction, dtype=float)
            candidates = [d / np.linalg.norm(d)]
        else:
            grid = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                             if (i, j, k) != (0, 0, 0)], dtype=float)
            candidates = list(grid / np.linalg.norm(grid, axis=1)[:, None])
        clearance = _clearance(an)
        best, best_score = candidates[0], -np.inf
        for d in candidates:
            p = prim.centre + (prim.surface_distance(d) + adj.gap_mm + r_adj) * d
            try:
                i, j, k = point_to_index(an.label_image, p)
            except InputError:
                continue
            score = float(clearance[k, j, i]) - r_adj
            if score > best_score + 1e-6:
                best, best_score = d, score
        d = best
        terms = _sh_terms((2,))
        shape = LesionShape(prim.centre.copy(), np.eye(3), np.ones(3), terms, 0.05 * rng.standard_normal(len(terms)),
                            1.0)
        shape.r0 = (adj.volume_ml * 1000.0 / shape.volume_factor()) ** (1.0 / 3.0)
        t = prim.surface_distance(d) + adj.gap_mm + shape.surface_distance(-d)
        axes = an.axes()
        result: _Adjacent | None = None
        for _ in range(4):
            shape = replace(shape, centre=prim.centre + t * d)
            reach = shape.max_radius_mm() + 2 * max(an.spacing)
            box = _Box(axes, shape.centre - reach, shape.centre + reach)
            inside = (shape.local(box.points())[0] <= 1.0).reshape(box.shape)
            frac = _fraction(box, lambda p, s=shape: s.local(p)[0] <= 1.0, inside, self.config.supersample)
            frac *= allowed[box.slices]
            result = _Adjacent(box=box, fraction=frac, shape=shape)
            placed = np.zeros(gtv.shape, np.float32)
            placed[box.slices] = frac
            gap = self._measure_gap(gtv, placed)
            if not np.isfinite(gap) or abs(gap - adj.gap_mm) <= 0.5 * min(an.spacing):
                break
            t += adj.gap_mm - gap
        assert result is not None
        return result

    def _rim(self, gtv: np.ndarray, others: np.ndarray, rim: RimConfig) -> tuple[np.ndarray, np.ndarray]:
        an = self.anatomy
        g = gtv >= 0.5
        w = np.zeros(gtv.shape, np.float32)
        mask = np.zeros(gtv.shape, bool)
        if not g.any() or rim.thickness_mm <= 0:
            return w, mask
        idx = np.argwhere(g)
        margin = np.ceil((rim.thickness_mm + 2 * max(an.spacing)) / np.asarray(an.spacing[::-1])).astype(int)
        lo = np.maximum(idx.min(axis=0) - margin, 0)
        hi = np.minimum(idx.max(axis=0) + 1 + margin, gtv.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        dist = ndimage.distance_transform_edt(~g[sl], sampling=an.spacing[::-1])
        # Distance to the surface: half a voxel less than the distance between voxel centres.
        d = np.clip(dist - 0.5 * min(an.spacing), 0.0, None)
        tissue = np.isin(an.labels[sl], np.fromiter(RIM_TISSUES, dtype=np.uint8))
        lesion_free = (others[sl] < 0.5)
        ring = (dist > 0) & (d < rim.thickness_mm) & tissue & lesion_free
        weight = np.where(ring, 0.5 * (1.0 + np.cos(np.pi * d / rim.thickness_mm)), 0.0)
        # Voxels that are partly GTV (fraction < 0.5) sit at the surface: full weight for their tissue part.
        weight = np.where((gtv[sl] > 0) & ~g[sl] & tissue, 1.0, weight)
        w[sl] = weight.astype(np.float32)
        mask[sl] = ring
        return w, mask


# ==================================================================================================
# Public API
# ==================================================================================================


def build_tumour(anatomy: Anatomy, config: TumourConfig | None = None, rng: RngLike = 0) -> TumourTruth:
    """Render the lesions of ``config`` into ``anatomy`` (baseline); deterministic for a given seed.

    ``rng``: an int seed, a :class:`numpy.random.SeedSequence`, or a Generator (one integer is drawn from
    it). Returns the exact fine-grid :class:`TumourTruth`.
    """
    return _TumourModel(anatomy, config or TumourConfig(), rng).render(None)


def evolve_tumour(anatomy: Anatomy, config: TumourConfig | None = None, rng: RngLike = 0,
                  timepoints: Sequence[TimepointSpec] = DEFAULT_TIMEPOINTS) -> TumourSeries:
    """The baseline lesions and their state at later fractions, all in baseline coordinates.

    The baseline equals :func:`build_tumour` with the same arguments. Hypoxia changes follow
    ``dose_painting.md`` §5.3 against the union of all earlier timepoints (persistent = now and before,
    resolved = before but not now, newborn = now and never before).
    """
    model = _TumourModel(anatomy, config or TumourConfig(), rng)
    truths = [model.render(None)]
    for spec in timepoints:
        if not 0 < spec.volume_factor <= 1.5 or spec.fdg_excess_factor < 0 or spec.hypoxic_fraction_factor < 0:
            raise InputError(f"timepoint {spec.name}: volume_factor must be in (0, 1.5] and the other factors >= 0")
        truths.append(model.render(spec))
    changes = []
    earlier = truths[0].hypoxic_mask.copy()
    vv = anatomy.voxel_volume_ml
    for truth in truths[1:]:
        now = truth.hypoxic_mask
        persistent, resolved, newborn = now & earlier, earlier & ~now, now & ~earlier
        changes.append(HypoxiaChange(
            name=truth.timepoint.name if truth.timepoint else "", persistent=persistent, resolved=resolved,
            newborn=newborn, persistent_ml=float(persistent.sum()) * vv, resolved_ml=float(resolved.sum()) * vv,
            newborn_ml=float(newborn.sum()) * vv))
        earlier |= now
    return TumourSeries(timepoints=truths, hypoxia_changes=changes)


def paint_lesion_labels(labels: np.ndarray, truth: TumourTruth) -> np.ndarray:
    """A copy of ``labels`` with the lesions painted (fraction >= 0.5): inflammation rim, adjacent avid
    structure (lymphoid), node, tumour, necrosis (later wins)."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    if out.shape != truth.gtv_fraction.shape:
        raise InputError(f"label map of shape {out.shape} does not match the truth grid {truth.gtv_fraction.shape}")
    out[truth.inflammation_mask] = Tissue.INFLAMMATION
    out[truth.avid_fraction >= 0.5] = Tissue.LYMPHOID
    out[truth.node_fraction >= 0.5] = Tissue.NODE
    out[truth.gtv_fraction >= 0.5] = Tissue.TUMOUR
    out[(truth.necrosis_fraction >= 0.5) & ((truth.gtv_fraction + truth.node_fraction) >= 0.5)] = Tissue.NECROSIS
    return out


def apply_lesion_uptake(base: np.ndarray, truth: TumourTruth, tracer: str = "FDG",
                        muscle_uptake: float = 1.0) -> np.ndarray:
    """Compose a tracer map from the normal-tissue map ``base`` (fine grid) and the lesions.

    * ``"FDG"`` (``base`` in SUVbw): ``base (1 − lesion fraction) x rim factor + fdg_lesion``.
    * ``"FMISO"`` / ``"FAZA"``: ``base (1 − lesion fraction) + muscle_uptake x hypoxia_lesion``, where
      ``muscle_uptake`` is the value of muscle in ``base``'s units (1.0 when ``base`` is the table's
      tumour-to-muscle column). No rim for hypoxia tracers (design choice).
    """
    base = np.asarray(base, dtype=np.float32)
    if base.shape != truth.gtv_fraction.shape:
        raise InputError(f"base uptake map of shape {base.shape} does not match the truth grid "
                         f"{truth.gtv_fraction.shape}")
    rest = 1.0 - truth.lesion_fraction
    tracer_u = tracer.upper()
    if tracer_u == "FDG":
        return (base * rest * truth.fdg_background_factor + truth.fdg_lesion).astype(np.float32)
    if tracer_u in ("FMISO", "FAZA"):
        return (base * rest + muscle_uptake * truth.hypoxia_lesion).astype(np.float32)
    raise InputError(f"unknown tracer {tracer!r}; use FDG, FMISO or FAZA")


def place_lesion(anatomy: Anatomy, volume_ml: float, rng: RngLike = 0, *,
                 sites: Sequence[str] = ("oropharynx_l", "oropharynx_r", "base_of_tongue", "larynx_l",
                                         "hypopharynx_l", "level_II_l", "level_II_r", "level_III_l"),
                 max_distance_mm: float = 30.0) -> tuple[float, float, float]:
    """A random lesion centre for a benchmark cohort: a voxel within ``max_distance_mm`` of one of the
    ``sites`` (landmark names) where a sphere of the lesion's equivalent radius fits in tissue that can
    hold tumour (uniform among such voxels; if none fits, the voxel of largest clearance near the sites).
    Any volume works: larger lesions are clipped and rescaled by :func:`build_tumour`."""
    if not volume_ml > 0:
        raise InputError(f"volume_ml must be positive, got {volume_ml}")
    gen = np.random.default_rng(seed_sequence(rng))
    r_eq = _equivalent_radius(volume_ml)
    clear = _clearance(anatomy)
    x, y, z = anatomy.axes()
    near = np.zeros(clear.shape, bool)
    for site in sites:
        if site not in anatomy.landmarks:
            raise InputError(f"unknown site {site!r}; use one of {', '.join(sorted(anatomy.landmarks))}")
        c = anatomy.landmarks[site]
        box = _Box((x, y, z), np.asarray(c) - max_distance_mm, np.asarray(c) + max_distance_mm)
        zz, yy, xx = np.meshgrid(box.z - c[2], box.y - c[1], box.x - c[0], indexing="ij")
        near[box.slices] |= xx**2 + yy**2 + zz**2 <= max_distance_mm**2
    ok = near & (clear >= r_eq)
    if ok.any():
        flat = np.flatnonzero(ok)
        idx = np.unravel_index(flat[gen.integers(flat.size)], ok.shape)
    else:
        idx = np.unravel_index(np.argmax(np.where(near, clear, -np.inf)), ok.shape)
    return float(x[idx[2]]), float(y[idx[1]]), float(z[idx[0]])


def benchmark_cohort(anatomy: Anatomy, n_lesions: int = 30, seed: int = 0,
                     volume_range_ml: tuple[float, float] = (0.5, 60.0),
                     tbr_range: tuple[float, float] = (2.0, 10.0)) -> list[TumourConfig]:
    """Configurations of a segmentation benchmark cohort (one lesion per configuration).

    Volumes are stratified log-uniform over ``volume_range_ml`` and TBR stratified uniform over
    ``tbr_range`` (Latin-hypercube pairing); heterogeneity σ cycles over {0, 0.2, 0.35}; necrosis (radius
    fraction 0.3-0.6) in about a third of the lesions above 3 mL; an inflammation rim (2-6 mm, 1.3-2 x)
    in about a third; an adjacent avid structure at 2-10 mm in about a third (the factorial design of
    ``pet_segmentation.md`` §10.2 E, sampled rather than crossed). Centres from :func:`place_lesion`.
    """
    if n_lesions < 1:
        raise InputError(f"n_lesions must be at least 1, got {n_lesions}")
    seq = np.random.SeedSequence(seed)
    rng = stream(seq, "cohort")
    u_v = (rng.permutation(n_lesions) + rng.uniform(size=n_lesions)) / n_lesions
    u_t = (rng.permutation(n_lesions) + rng.uniform(size=n_lesions)) / n_lesions
    lo, hi = np.log(volume_range_ml[0]), np.log(volume_range_ml[1])
    volumes = np.exp(lo + (hi - lo) * u_v)
    tbrs = tbr_range[0] + (tbr_range[1] - tbr_range[0]) * u_t
    sigmas = (0.0, 0.2, 0.35)
    configs = []
    for n in range(n_lesions):
        v = float(volumes[n])
        centre = place_lesion(anatomy, v, stream(seq, "place", n))
        necrosis = float(rng.uniform(0.3, 0.6)) if (v > 3.0 and rng.uniform() < 0.35) else 0.0
        primary = LesionConfig(
            site=None, centre_lps=centre, fit=False, volume_ml=v, tbr=float(tbrs[n]),
            heterogeneity_sigma=sigmas[n % 3], correlation_length_mm=float(rng.uniform(2.0, 6.0)),
            irregularity=float(rng.uniform(0.05, 0.2)), necrosis_radius_fraction=necrosis,
            necrosis_ratio=float(rng.uniform(0.3, 1.0)), necrosis_irregularity=0.15,
            axis_ratios=_tuple3(rng.uniform(0.8, 1.3, size=3)))
        rim = RimConfig(float(rng.uniform(2.0, 6.0)), float(rng.uniform(1.3, 2.0))) if rng.uniform() < 0.33 else None
        adjacent = (AdjacentConfig(gap_mm=float(rng.uniform(2.0, 10.0)), volume_ml=float(rng.uniform(1.0, 4.0)),
                                   uptake_ratio=float(rng.uniform(2.0, 5.0)))
                    if rng.uniform() < 0.33 else None)
        configs.append(TumourConfig(primary=primary, inflammation=rim, adjacent=adjacent))
    return configs
