"""Report tables for GTV comparisons across modalities: pair rows, a Table-2-style volume table, an overlap matrix.

Everything is built from :mod:`PETDosePaintingLib.comparison.metrics` (:func:`~.metrics.compare_masks`,
:func:`~.metrics.pairwise_metrics`, :func:`~.metrics.combine_masks`, :func:`~.metrics.uncovered_reference`),
whose module docstring holds the definitions (Dice, Jaccard, sensitivity, PPV; surface distances in the
surface-element definition of DeepMind's ``surface-distance``; masks on different grids compared on a
common grid in physical space). This module only arranges the numbers.

* **Pair rows** (:func:`compare_pairs`, :func:`pair_rows`, columns :data:`PAIR_COLUMNS`): one row per pair
  of masks, or per mask against a reference. In every row ``b`` is the reference of the pair:
  sensitivity = |A∩B|/|B| (the fraction of b covered by a), PPV = |A∩B|/|A|, volume error relative to b.
  Without a reference every pair is compared once, ``a`` listed before ``b``.
* **Volume table** (:func:`volume_table`, columns :data:`TABLE2_COLUMNS`), in the style of Table 2 of
  Daisne et al., Radiology 2004;233:93 (GTVs delineated on CT, MRI and FDG-PET against the surgical
  specimen): one row per structure (e.g. GTV_CT, GTV_MRI, GTV_PET) with its volume (mL) and, against the
  reference (e.g. pathology), Dice, Jaccard, sensitivity, PPV, volume error and the part of the reference
  it does not cover (mL and fraction); then the reference itself; then the intersection and the union of
  the structures (:func:`~.metrics.combine_masks`). Every row states its volume definition: structures and
  the reference are measured on their own grids (voxel count x voxel volume, the project's definition);
  the intersection and union on the common grid they were formed on (nearest-neighbour resampling).
* **Overlap matrix** (:func:`overlap_matrix`): N x N matrices of the symmetric metrics
  (:data:`MATRIX_METRICS`: Dice, Jaccard, HD, HD95, MSD, centroid shift) for N masks; the diagonal is
  1 for the overlaps and 0 for the distances (undefined, blank, for an empty mask).

CSV: numbers to 6 significant digits, empty cells for undefined values, UTF-8, ``\\n`` line ends
(:func:`csv_text`). JSON: :meth:`to_dict` of each result (``None`` for undefined values).
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imaging.image import mask_volume_ml
from .metrics import (
    OverlapMetrics,
    combine_masks,
    compare_masks,
    pairwise_metrics,
    uncovered_reference,
)

#: Columns of the pair rows (``petdp compare --csv``), in order: a stable contract. Volumes in mL (each
#: mask on its own grid), distances in mm, volume error in %, ratios dimensionless.
PAIR_COLUMNS = (
    "a", "b", "volume_a_ml", "volume_b_ml", "dice", "jaccard", "sensitivity", "ppv", "hd_mm", "hd95_mm", "msd_mm",
    "volume_error_pct", "intersection_ml", "union_ml", "msd_a_to_b_mm", "msd_b_to_a_mm", "centroid_shift_mm",
    "reference_grid", "grid_spacing_mm", "volume_definition",
)

#: Columns of the Table-2-style volume table (``petdp compare --table2``), in order: a stable contract.
TABLE2_COLUMNS = (
    "structure", "kind", "volume_ml", "reference", "reference_volume_ml", "volume_error_pct", "dice", "jaccard",
    "sensitivity", "ppv", "uncovered_reference_ml", "uncovered_reference_fraction", "grid_spacing_mm",
    "volume_definition",
)

#: Symmetric metrics of the overlap matrix (fields of :class:`~.metrics.OverlapMetrics`).
MATRIX_METRICS = ("dice", "jaccard", "hd_mm", "hd95_mm", "msd_mm", "centroid_shift_mm")

#: Row kinds of the volume table.
ROW_KINDS = ("structure", "reference", "intersection", "union")

_DIAGONAL = {"dice": 1.0, "jaccard": 1.0, "hd_mm": 0.0, "hd95_mm": 0.0, "msd_mm": 0.0, "centroid_shift_mm": 0.0}


# --------------------------------------------------------------------------------------------------
# Pair rows
# --------------------------------------------------------------------------------------------------


def compare_pairs(
    masks: Mapping[str, sitk.Image],
    *,
    reference: str | None = None,
    grid: str | sitk.Image = "finest",
    allow_empty: bool = False,
) -> list[OverlapMetrics]:
    """Compare masks pairwise, or each against ``reference`` (the name of one of ``masks``).

    Each result's ``mask`` is ``a`` and its ``reference`` is ``b`` (see the module docstring). With a
    reference, the other masks are compared with it in the order given; without, every pair once with
    the earlier-listed mask as ``a``. ``grid`` and ``allow_empty`` as in :func:`~.metrics.compare_masks`.
    """
    names = list(masks)
    if len(names) < 2:
        raise InputError(f"need at least two masks to compare, got {len(names)}")
    if reference is not None:
        return pairwise_metrics(masks, reference=reference, grid=grid, allow_empty=allow_empty)
    return [compare_masks(masks[a], masks[b], mask_name=a, reference_name=b, grid=grid, allow_empty=allow_empty)
            for a, b in itertools.combinations(names, 2)]


def pair_rows(pairs: Sequence[OverlapMetrics], masks: Mapping[str, sitk.Image] | None = None) -> list[dict[str, Any]]:
    """Rows with the columns :data:`PAIR_COLUMNS` for :class:`~.metrics.OverlapMetrics` results.

    ``masks`` (by name), when given, lets the volume definition name each mask's own voxel size.
    """
    rows = []
    for p in pairs:
        if masks is not None and p.mask in masks and p.reference in masks:
            definition = (f"each mask on its own grid (a: {_spacing(masks[p.mask].GetSpacing())} mm, "
                          f"b: {_spacing(masks[p.reference].GetSpacing())} mm): voxel count x voxel volume")
        else:
            definition = "each mask on its own grid: voxel count x voxel volume"
        rows.append({
            "a": p.mask, "b": p.reference, "volume_a_ml": p.volume_ml, "volume_b_ml": p.reference_volume_ml,
            "dice": p.dice, "jaccard": p.jaccard, "sensitivity": p.sensitivity, "ppv": p.ppv, "hd_mm": p.hd_mm,
            "hd95_mm": p.hd95_mm, "msd_mm": p.msd_mm, "volume_error_pct": p.volume_error_pct,
            "intersection_ml": p.intersection_ml, "union_ml": p.union_ml,
            "msd_a_to_b_mm": p.msd_mask_to_reference_mm, "msd_b_to_a_mm": p.msd_reference_to_mask_mm,
            "centroid_shift_mm": p.centroid_shift_mm, "reference_grid": p.reference_grid,
            "grid_spacing_mm": _spacing(p.grid_spacing_mm), "volume_definition": definition,
        })
    return rows


# --------------------------------------------------------------------------------------------------
# Table-2-style volume table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRow:
    """One row of the volume table (columns :data:`TABLE2_COLUMNS`; ``None`` where undefined).

    ``kind`` is ``"structure"``, ``"reference"``, ``"intersection"`` or ``"union"``. Metrics are against
    ``reference`` (``None`` without a reference, and on the reference's own row).
    ``uncovered_reference_ml`` / ``_fraction``: the part of the reference outside this structure, on
    the common grid of the reference and all structures.
    """

    structure: str
    kind: str
    volume_ml: float
    reference: str | None
    reference_volume_ml: float | None
    volume_error_pct: float | None
    dice: float | None
    jaccard: float | None
    sensitivity: float | None
    ppv: float | None
    uncovered_reference_ml: float | None
    uncovered_reference_fraction: float | None
    grid_spacing_mm: str
    volume_definition: str


@dataclass(frozen=True, eq=False)
class VolumeTable:
    """The Table-2-style table: structures x (volume, agreement with the reference, uncovered reference)."""

    rows: tuple[VolumeRow, ...]
    reference: str | None  #: name of the reference (e.g. pathology), or ``None``
    combination_grid_spacing_mm: tuple[float, float, float] | None  #: grid of the intersection/union rows

    def columns(self) -> dict[str, list[Any]]:
        """``{column: values}`` in :data:`TABLE2_COLUMNS` order (for table nodes and data frames)."""
        return {name: [getattr(r, name) for r in self.rows] for name in TABLE2_COLUMNS}

    def row(self, structure: str) -> VolumeRow:
        """The row of one structure (by name)."""
        for r in self.rows:
            if r.structure == structure:
                return r
        raise KeyError(structure)

    def csv_text(self) -> str:
        """CSV with the header :data:`TABLE2_COLUMNS`."""
        return csv_text(TABLE2_COLUMNS, [asdict(r) for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly content."""
        return {"reference": self.reference, "columns": list(TABLE2_COLUMNS),
                "combination_grid_spacing_mm": (None if self.combination_grid_spacing_mm is None
                                                else list(self.combination_grid_spacing_mm)),
                "rows": [asdict(r) for r in self.rows]}


def volume_table(
    masks: Mapping[str, sitk.Image],
    *,
    reference: str | None = None,
    combinations: bool = True,
    grid: str | sitk.Image = "finest",
    pairs: Sequence[OverlapMetrics] = (),
) -> VolumeTable:
    """The Table-2-style volume table (module docstring) for named masks.

    Parameters
    ----------
    masks : binary masks by structure name (any grids, one frame of reference), e.g. GTV_CT, GTV_MRI,
        GTV_PET and the reference; the order of the rows follows it.
    reference : name of the reference mask among ``masks`` (e.g. ``"pathology"``), or ``None``.
    combinations : add the intersection and union of the structures (not the reference) when there are
        at least two (default True).
    grid : common-grid choice for voxel-wise numbers, as in :func:`~.metrics.compare_masks`.
    pairs : already computed :class:`~.metrics.OverlapMetrics` (structure as ``mask``, reference as
        ``reference``) to reuse instead of recomputing.

    Raises :class:`InputError` for an unknown or empty reference, or an empty structure when there is a
    reference (its agreement is then undefined; report it without the reference).
    """
    if not masks:
        raise InputError("no masks given")
    if reference is not None and reference not in masks:
        raise InputError(f"reference {reference!r} is not one of the masks ({', '.join(map(repr, masks))})")
    structures = {n: m for n, m in masks.items() if n != reference}
    if not structures:
        raise InputError("the volume table needs at least one structure besides the reference")
    known = {(p.mask, p.reference): p for p in pairs}
    ref_image = masks[reference] if reference is not None else None
    ref_volume = mask_volume_ml(ref_image) if ref_image is not None else None

    combo = None
    extra: dict[str, tuple[str, sitk.Image, float]] = {}
    if combinations and len(structures) >= 2:
        combo = combine_masks(structures, grid=grid)
        listed = ", ".join(structures)
        extra[f"intersection({listed})"] = ("intersection", combo.intersection, combo.intersection_ml)
        extra[f"union({listed})"] = ("union", combo.union, combo.union_ml)

    uncovered: dict[str, tuple[float, float]] = {}
    metrics: dict[str, OverlapMetrics] = {}
    if ref_image is not None:
        for name, image in structures.items():
            metrics[name] = known.get((name, reference)) or compare_masks(
                image, ref_image, mask_name=name, reference_name=reference, grid=grid)
        for name, (_, image, _) in extra.items():
            metrics[name] = compare_masks(image, ref_image, mask_name=name, reference_name=reference, grid=grid,
                                          allow_empty=True)
        coverage = uncovered_reference(ref_image, {**structures, **{n: e[1] for n, e in extra.items()}},
                                       reference_name=reference, grid=grid)
        uncovered = {c.mask: (c.uncovered_ml, c.uncovered_fraction) for c in coverage}

    rows = []
    for name, image in structures.items():
        rows.append(_row(name, "structure", mask_volume_ml(image), _own_definition(image), image.GetSpacing(),
                         reference=reference, ref_volume=ref_volume, m=metrics.get(name), unc=uncovered.get(name)))
    if ref_image is not None:
        rows.append(_row(reference, "reference", ref_volume, _own_definition(ref_image), ref_image.GetSpacing(),
                         reference=None, ref_volume=None, m=None, unc=None))
    for name, (kind, image, volume) in extra.items():
        definition = (f"{kind} on the common grid ({_spacing(image.GetSpacing())} mm; masks resampled by nearest "
                      "neighbour): voxel count x voxel volume")
        rows.append(_row(name, kind, volume, definition, image.GetSpacing(), reference=reference,
                         ref_volume=ref_volume, m=metrics.get(name), unc=uncovered.get(name)))
    return VolumeTable(rows=tuple(rows), reference=reference,
                       combination_grid_spacing_mm=None if combo is None else combo.grid_spacing_mm)


def _own_definition(image: sitk.Image) -> str:
    return f"binary mask on its own grid ({_spacing(image.GetSpacing())} mm): voxel count x voxel volume"


def _row(name: str, kind: str, volume: float, definition: str, spacing: Sequence[float], *, reference: str | None,
         ref_volume: float | None, m: OverlapMetrics | None, unc: tuple[float, float] | None) -> VolumeRow:
    return VolumeRow(
        structure=name, kind=kind, volume_ml=float(volume), reference=reference if m is not None else None,
        reference_volume_ml=ref_volume if m is not None else None,
        volume_error_pct=(100.0 * (volume - ref_volume) / ref_volume
                          if m is not None and ref_volume else None),
        dice=None if m is None else m.dice, jaccard=None if m is None else m.jaccard,
        sensitivity=None if m is None else m.sensitivity, ppv=None if m is None else m.ppv,
        uncovered_reference_ml=None if unc is None else unc[0],
        uncovered_reference_fraction=None if unc is None else unc[1],
        grid_spacing_mm=_spacing(spacing), volume_definition=definition,
    )


# --------------------------------------------------------------------------------------------------
# Overlap matrix
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OverlapMatrix:
    """N x N matrices of symmetric agreement metrics for N named masks.

    ``values[metric][i, j]`` compares ``names[i]`` and ``names[j]`` (NaN where undefined); ``pairs``
    holds the full :class:`~.metrics.OverlapMetrics` of each pair (computed once, earlier name as ``mask``).
    """

    names: tuple[str, ...]
    values: dict[str, np.ndarray]
    pairs: tuple[OverlapMetrics, ...]

    def matrix(self, metric: str = "dice") -> np.ndarray:
        """The N x N matrix of one metric (a copy; NaN where undefined)."""
        if metric not in self.values:
            raise InputError(f"unknown matrix metric {metric!r}; use one of {', '.join(self.values)}")
        return self.values[metric].copy()

    def csv_text(self, metrics: Sequence[str] = MATRIX_METRICS) -> str:
        """CSV: header ``metric, mask, <name 1>, ..., <name N>``, then N rows per metric."""
        header = ("metric", "mask", *self.names)
        rows = []
        for metric in metrics:
            m = self.matrix(metric)
            for i, name in enumerate(self.names):
                rows.append({"metric": metric, "mask": name,
                             **{other: _none_if_nan(m[i, j]) for j, other in enumerate(self.names)}})
        return csv_text(header, rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly content: names, matrices (``None`` where undefined) and the pairs."""
        return {"names": list(self.names),
                "matrices": {k: [[_none_if_nan(v) for v in row] for row in m] for k, m in self.values.items()},
                "pairs": [asdict(p) for p in self.pairs]}


def overlap_matrix(
    masks: Mapping[str, sitk.Image],
    *,
    grid: str | sitk.Image = "finest",
    allow_empty: bool = False,
    pairs: Sequence[OverlapMetrics] = (),
) -> OverlapMatrix:
    """The overlap matrix of N >= 2 named masks (module docstring).

    ``pairs``: already computed results to reuse (matched by name in either order; the metrics in the
    matrix are symmetric). Other pairs are computed with :func:`~.metrics.compare_masks`.
    """
    names = list(masks)
    if len(names) < 2:
        raise InputError(f"need at least two masks for an overlap matrix, got {len(names)}")
    known: dict[frozenset[str], OverlapMetrics] = {}
    for p in pairs:
        known.setdefault(frozenset((p.mask, p.reference)), p)
    n = len(names)
    values = {m: np.full((n, n), np.nan) for m in MATRIX_METRICS}
    computed = []
    for i, j in itertools.combinations(range(n), 2):
        a, b = names[i], names[j]
        result = known.get(frozenset((a, b))) or compare_masks(masks[a], masks[b], mask_name=a, reference_name=b,
                                                               grid=grid, allow_empty=allow_empty)
        computed.append(result)
        for metric in MATRIX_METRICS:
            value = getattr(result, metric)
            values[metric][i, j] = values[metric][j, i] = np.nan if value is None else float(value)
    for i, name in enumerate(names):
        if sitk.GetArrayViewFromImage(masks[name]).any():
            for metric in MATRIX_METRICS:
                values[metric][i, i] = _DIAGONAL[metric]
    for m in values.values():
        m.setflags(write=False)
    return OverlapMatrix(names=tuple(names), values=values, pairs=tuple(computed))


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with the header ``columns``; floats to 6 significant digits, ``None``/NaN as empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, tuple | list):
        return "x".join(_cell(v) for v in value)
    return str(value)


def _none_if_nan(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _spacing(spacing: Sequence[float]) -> str:
    return "x".join(f"{float(s):g}" for s in spacing)


__all__ = [
    "MATRIX_METRICS", "PAIR_COLUMNS", "ROW_KINDS", "TABLE2_COLUMNS", "OverlapMatrix", "VolumeRow", "VolumeTable",
    "compare_pairs", "csv_text", "overlap_matrix", "pair_rows", "volume_table",
]
