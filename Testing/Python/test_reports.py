"""Comparison reports on constructed boxes: Table-2-style rows, pair rows, overlap matrix, table nodes, PNG plots.

Boxes make every overlap number a count of voxels: a 10 x 10 x 10 box of 1 mm voxels is 1 mL.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import pytest
import SimpleITK as sitk

from PETDosePaintingLib.comparison.metrics import compare_masks
from PETDosePaintingLib.comparison.reports import (
    MATRIX_METRICS,
    PAIR_COLUMNS,
    TABLE2_COLUMNS,
    VolumeRow,
    compare_pairs,
    csv_text,
    overlap_matrix,
    pair_rows,
    volume_table,
)
from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import image_from_array, make_grid

GRID_1MM = make_grid((20, 20, 20), (1.0, 1.0, 1.0), origin=(-5.0, -5.0, -5.0))  # voxel centres -5..14 mm
GRID_2MM = make_grid((10, 10, 10), (2.0, 2.0, 2.0), origin=(-5.5, -5.5, -5.5))  # voxels [-6.5, -4.5], ...


def _box(grid, lo, hi):
    """Mask of the voxels whose centres lie in [lo, hi] (mm, per axis x, y, z)."""
    shape = sitk.GetArrayViewFromImage(grid).shape
    k, j, i = np.indices(shape)
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    centres = [origin[a] + spacing[a] * idx for a, idx in enumerate((i, j, k))]
    inside = np.ones(shape, dtype=bool)
    for c, a, b in zip(centres, lo, hi, strict=True):
        inside &= (c >= a) & (c <= b)
    return image_from_array(inside, reference=grid)


@pytest.fixture(scope="module")
def gtvs():
    """pathology: 10^3 box (1 mL) at centres 0..9 mm. GTV_CT: 12^3 box around it (1.728 mL). GTV_MRI: the same
    region as the pathology on a 2 mm grid (5^3 voxels of 8 mm3 covering [-0.5, 9.5] mm). GTV_PET: the lower half
    of the pathology in z (10 x 10 x 5, 0.5 mL)."""
    return {
        "GTV_CT": _box(GRID_1MM, (-1, -1, -1), (10, 10, 10)),
        "GTV_MRI": _box(GRID_2MM, (0, 0, 0), (9, 9, 9)),
        "GTV_PET": _box(GRID_1MM, (0, 0, 0), (9, 9, 4)),
        "pathology": _box(GRID_1MM, (0, 0, 0), (9, 9, 9)),
    }


def test_constructed_masks_have_the_intended_volumes(gtvs):
    counts = {n: int(sitk.GetArrayViewFromImage(m).sum()) for n, m in gtvs.items()}
    assert counts == {"GTV_CT": 1728, "GTV_MRI": 125, "GTV_PET": 500, "pathology": 1000}


def test_table2_rows_against_the_pathology(gtvs):
    table = volume_table(gtvs, reference="pathology")
    assert [f.name for f in dataclasses.fields(VolumeRow)] == list(TABLE2_COLUMNS)
    assert [(r.structure, r.kind) for r in table.rows] == [
        ("GTV_CT", "structure"), ("GTV_MRI", "structure"), ("GTV_PET", "structure"), ("pathology", "reference"),
        ("intersection(GTV_CT, GTV_MRI, GTV_PET)", "intersection"), ("union(GTV_CT, GTV_MRI, GTV_PET)", "union")]
    ct, mri, pet, ref = (table.row(n) for n in ("GTV_CT", "GTV_MRI", "GTV_PET", "pathology"))
    # CT contains the pathology: Se 1, PPV 1000/1728, Dice 2000/2728, nothing uncovered.
    assert ct.volume_ml == pytest.approx(1.728)
    assert (ct.sensitivity, ct.ppv, ct.dice, ct.jaccard) == pytest.approx((1.0, 1000 / 1728, 2000 / 2728, 1000 / 1728))
    assert ct.volume_error_pct == pytest.approx(72.8)
    assert (ct.uncovered_reference_ml, ct.uncovered_reference_fraction) == pytest.approx((0.0, 0.0))
    # MRI covers exactly the pathology's region on its 2 mm grid: everything 1, same volume.
    assert mri.volume_ml == pytest.approx(1.0) and mri.grid_spacing_mm == "2x2x2"
    assert (mri.dice, mri.sensitivity, mri.ppv) == pytest.approx((1.0, 1.0, 1.0))
    assert "own grid (2x2x2 mm)" in mri.volume_definition
    # PET is half the pathology: Se 0.5, PPV 1, Dice 2*500/1500, half the specimen uncovered.
    assert (pet.volume_ml, pet.sensitivity, pet.ppv, pet.dice) == pytest.approx((0.5, 0.5, 1.0, 2 / 3))
    assert (pet.uncovered_reference_ml, pet.uncovered_reference_fraction) == pytest.approx((0.5, 0.5))
    assert ref.volume_ml == pytest.approx(1.0) and ref.dice is None and ref.reference is None
    inter = table.row("intersection(GTV_CT, GTV_MRI, GTV_PET)")
    union = table.row("union(GTV_CT, GTV_MRI, GTV_PET)")
    assert inter.volume_ml == pytest.approx(0.5) and union.volume_ml == pytest.approx(1.728)
    assert (inter.sensitivity, inter.uncovered_reference_fraction) == pytest.approx((0.5, 0.5))
    assert (union.sensitivity, union.uncovered_reference_ml) == pytest.approx((1.0, 0.0))
    assert "common grid (1x1x1 mm" in inter.volume_definition
    # CSV: the header and one line per row, undefined values empty.
    rows = list(csv.DictReader(io.StringIO(table.csv_text())))
    assert list(rows[0]) == list(TABLE2_COLUMNS) and len(rows) == 6
    assert rows[3]["structure"] == "pathology" and rows[3]["dice"] == "" and rows[0]["volume_ml"] == "1.728"
    assert table.to_dict()["rows"][2]["sensitivity"] == pytest.approx(0.5)


def test_table2_without_reference_lists_volumes_only(gtvs):
    table = volume_table({"GTV_CT": gtvs["GTV_CT"], "GTV_PET": gtvs["GTV_PET"]}, combinations=False)
    assert [r.structure for r in table.rows] == ["GTV_CT", "GTV_PET"]
    assert all(r.dice is None and r.uncovered_reference_ml is None for r in table.rows)
    with pytest.raises(InputError, match="not one of the masks"):
        volume_table(gtvs, reference="specimen")


def test_pair_rows_follow_a_against_b(gtvs):
    pairs = compare_pairs(gtvs, reference="pathology")
    rows = pair_rows(pairs, gtvs)
    assert [(r["a"], r["b"]) for r in rows] == [("GTV_CT", "pathology"), ("GTV_MRI", "pathology"),
                                                ("GTV_PET", "pathology")]
    pet = rows[2]
    assert (pet["volume_a_ml"], pet["volume_b_ml"], pet["sensitivity"], pet["ppv"]) == pytest.approx((0.5, 1, 0.5, 1))
    assert "a: 1x1x1 mm, b: 1x1x1 mm" in pet["volume_definition"]
    all_pairs = compare_pairs({n: gtvs[n] for n in ("GTV_PET", "GTV_CT", "pathology")})
    assert [(p.mask, p.reference) for p in all_pairs] == [("GTV_PET", "GTV_CT"), ("GTV_PET", "pathology"),
                                                          ("GTV_CT", "pathology")]
    # b is the reference: PET against CT has Se = 500/1728 and PPV = 1.
    assert (all_pairs[0].sensitivity, all_pairs[0].ppv) == pytest.approx((500 / 1728, 1.0))
    text = csv_text(PAIR_COLUMNS, rows)
    assert text.splitlines()[0] == ",".join(PAIR_COLUMNS)


def test_overlap_matrix_is_symmetric_and_built_from_compare_masks(gtvs):
    matrix = overlap_matrix(gtvs)
    names = list(gtvs)
    dice = matrix.matrix("dice")
    assert dice.shape == (4, 4) and np.allclose(dice, dice.T) and np.allclose(np.diag(dice), 1.0)
    i = {n: k for k, n in enumerate(names)}
    assert dice[i["GTV_MRI"], i["pathology"]] == pytest.approx(1.0)
    assert dice[i["GTV_PET"], i["pathology"]] == pytest.approx(2 / 3)
    assert dice[i["GTV_CT"], i["GTV_PET"]] == pytest.approx(1000 / 2228)
    assert matrix.matrix("jaccard")[i["GTV_CT"], i["pathology"]] == pytest.approx(1000 / 1728)
    assert np.allclose(np.diag(matrix.matrix("hd95_mm")), 0.0)
    reference = compare_masks(gtvs["GTV_PET"], gtvs["pathology"])
    assert matrix.matrix("hd_mm")[i["pathology"], i["GTV_PET"]] == pytest.approx(reference.hd_mm)
    assert matrix.matrix("msd_mm")[i["GTV_PET"], i["pathology"]] == pytest.approx(reference.msd_mm)
    assert len(matrix.pairs) == 6
    # Reusing already computed pairs gives the same matrix without recomputing them.
    reused = overlap_matrix(gtvs, pairs=matrix.pairs)
    assert all(reused.pairs[n] is matrix.pairs[n] for n in range(6))
    rows = list(csv.reader(io.StringIO(matrix.csv_text())))
    assert rows[0] == ["metric", "mask", *names]
    assert len(rows) == 1 + 4 * len(MATRIX_METRICS)
    assert rows[1][:2] == ["dice", "GTV_CT"] and float(rows[1][2]) == 1.0
    with pytest.raises(InputError, match="at least two"):
        overlap_matrix({"a": gtvs["GTV_CT"]})


def test_table_nodes_have_the_expected_columns_and_values(gtvs, core_scene):
    from PETDosePaintingLib.mrml.comparison_logic import overlap_matrix_node, pair_table_node, volume_table_node
    from PETDosePaintingLib.mrml.tables import table_to_columns

    table = volume_table(gtvs, reference="pathology")
    node = volume_table_node(table, scene=core_scene)
    columns = table_to_columns(node)
    assert list(columns) == list(TABLE2_COLUMNS)
    assert columns["structure"][:4] == ["GTV_CT", "GTV_MRI", "GTV_PET", "pathology"]
    assert columns["volume_ml"][:4] == pytest.approx([1.728, 1.0, 0.5, 1.0])
    assert columns["sensitivity"][:3] == pytest.approx([1.0, 1.0, 0.5])
    assert np.isnan(columns["dice"][3])  # the reference's own row: undefined -> NaN
    assert columns["reference"][3] == "" and columns["reference"][0] == "pathology"
    assert node.GetColumnUnitLabel("volume_ml") == "mL" and node.GetColumnUnitLabel("volume_error_pct") == "%"
    matrix = overlap_matrix(gtvs)
    m_node = overlap_matrix_node(matrix, "dice", scene=core_scene)
    m_columns = table_to_columns(m_node)
    assert list(m_columns) == ["mask", *gtvs]
    assert m_columns["pathology"] == pytest.approx(list(matrix.matrix("dice")[:, 3]))
    hd_node = overlap_matrix_node(matrix, "hd95_mm", scene=core_scene)
    assert hd_node.GetColumnUnitLabel("GTV_CT") == "mm"
    p_node = pair_table_node(compare_pairs(gtvs, reference="pathology"), gtvs, scene=core_scene)
    p_columns = table_to_columns(p_node)
    assert list(p_columns) == list(PAIR_COLUMNS) and p_columns["a"] == ["GTV_CT", "GTV_MRI", "GTV_PET"]
    assert p_columns["dice"] == pytest.approx([2000 / 2728, 1.0, 2 / 3])


def test_plots_write_deterministic_non_empty_png_files(gtvs, tmp_path):
    from PETDosePaintingLib.pipeline.plots import (
        plot_matrix_heatmap,
        plot_volume_over_time,
        render_matrix_heatmap,
        render_volume_over_time,
    )

    matrix = overlap_matrix({n: gtvs[n] for n in ("GTV_CT", "GTV_PET", "pathology")})
    heat = plot_matrix_heatmap(matrix.names, matrix.matrix("dice"), tmp_path / "dice.png")
    curves = {"GTV_PET": [(17, 9.0), (0, 20.0), (7, 15.0)], "GTV_CT": [(0, 25.0), (17, 14.0)]}
    volume = plot_volume_over_time(curves, tmp_path / "volume.png", time_label="fraction")
    for path in (heat, volume):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dice.png", "volume.png"]  # no temporary files left
    assert render_volume_over_time(curves) == volume.read_bytes()  # deterministic
    assert render_matrix_heatmap(matrix.names, matrix.matrix("dice")) == heat.read_bytes()
    with pytest.raises(InputError):
        render_volume_over_time({"GTV": [(0, -1.0)]})
    with pytest.raises(InputError):
        render_matrix_heatmap(["a", "b"], np.eye(3))
