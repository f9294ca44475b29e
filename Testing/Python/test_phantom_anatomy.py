"""The analytic head-and-neck anatomy: labels, proportions, OARs, symmetry, spinal canal, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from PETDosePaintingLib.errors import InputError
from PETDosePaintingLib.imaging.image import get_units, mask_volume_ml
from PETDosePaintingLib.phantom.anatomy import STRUCTURE_LABELS, AnatomyConfig, build_anatomy
from PETDosePaintingLib.phantom.tissues import (
    PROPERTY_COLUMNS,
    TISSUE_PROPERTIES,
    Tissue,
    property_lut,
    relaxation_columns,
    tissue_table,
)


@pytest.fixture(scope="module")
def quick():
    return build_anatomy(AnatomyConfig.quick())


@pytest.fixture(scope="module")
def fine():
    """1 mm grid, no patient variability (template proportions), full axial extent."""
    return build_anatomy(AnatomyConfig(variability=0.0))


def test_property_table_covers_every_label_with_reference_values():
    assert set(TISSUE_PROPERTIES) == set(Tissue)
    # pet_segmentation.md 10.2 A.1: 511 keV mu of soft tissue 0.096/cm, bone 0.13-0.17, air 0.
    mu = property_lut("mu_511_per_cm")
    assert mu[Tissue.SOFT_TISSUE] == pytest.approx(0.096)
    assert mu[Tissue.OUTSIDE] == 0 and mu[Tissue.AIRWAY] == 0
    for bone in (Tissue.VERTEBRA, Tissue.MANDIBLE, Tissue.SKULL):
        assert 0.13 <= mu[bone] <= 0.17
    # 10.2 A.2 SUV ranges: salivary glands 1.5-3, tonsils 2-5, brain 6-10, blood 1.5-2, larynx 1-4.
    suv = property_lut("fdg_suv")
    assert 1.5 <= suv[Tissue.PAROTID_L] <= 3 and 2 <= suv[Tissue.LYMPHOID] <= 5
    assert 6 <= suv[Tissue.BRAIN] <= 10 and 1.5 <= suv[Tissue.VESSEL] <= 2 and 1 <= suv[Tissue.LARYNX] <= 4
    # dose_painting.md 4.1: untreated HNSCC ADC 0.8-1.3e-3 mm2/s.
    assert 0.8e-3 <= property_lut("adc_mm2_s")[Tissue.TUMOUR] <= 1.3e-3
    assert np.isnan(property_lut("ct_hu")[250])
    assert relaxation_columns(3.0) == ("t1_ms_3t", "t2_ms_3t")
    with pytest.raises(InputError, match="unknown tissue property"):
        property_lut("colour")
    rows = tissue_table()
    assert len(rows) == len(Tissue) and all(c in rows[0] for c in PROPERTY_COLUMNS)


def test_quick_anatomy_has_the_head_and_neck_structures(quick):
    present = set(np.unique(quick.labels).tolist())
    expected = {Tissue.OUTSIDE, Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.MUSCLE, Tissue.AIRWAY, Tissue.VERTEBRA,
                Tissue.SPINAL_CORD, Tissue.CSF, Tissue.MANDIBLE, Tissue.PAROTID_L, Tissue.PAROTID_R,
                Tissue.SUBMANDIBULAR_L, Tissue.SUBMANDIBULAR_R, Tissue.VESSEL, Tissue.LYMPHOID, Tissue.LARYNX}
    assert expected <= present
    assert quick.labels.dtype == np.uint8
    assert get_units(quick.label_image) == "label"
    assert quick.label_image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    for name, labels in STRUCTURE_LABELS.items():
        assert np.array_equal(quick.structures[name], np.isin(quick.labels, labels)), name
    assert mask_volume_ml(quick.structure_image("parotid_l")) == pytest.approx(
        quick.structures["parotid_l"].sum() * 0.008)


def test_full_anatomy_has_brain_at_the_top_and_larynx_below(fine):
    z = fine.axes()[2]
    brain_z = z[np.any(fine.structures["brain"], axis=(1, 2))]
    larynx_z = z[np.any(fine.structures["larynx"], axis=(1, 2))]
    mandible_z = z[np.any(fine.structures["mandible"], axis=(1, 2))]
    parotid_z = z[np.any(fine.structures["parotid_l"], axis=(1, 2))]
    assert brain_z.min() > 50  # skull-base slices only
    assert larynx_z.max() < mandible_z.min()  # larynx below the mandible
    assert parotid_z.mean() > larynx_z.mean() + 40


def test_body_volume_equals_the_analytic_ellipses(fine):
    # Each slice of the body is an ellipse of semi-axes (a, b): area pi a b; volume = sum over slices x dz.
    z = fine.axes()[2]
    _, a, b = fine.body_ellipse(z)
    analytic_ml = float(np.sum(np.pi * a * b)) * fine.spacing[2] / 1000.0
    measured_ml = float(fine.structures["body"].sum()) * fine.voxel_volume_ml
    assert measured_ml == pytest.approx(analytic_ml, rel=0.005)
    # Neck about 12 x 14 cm (pet_segmentation.md 10.2 A.1) at mid-neck height.
    _, a_mid, b_mid = fine.body_ellipse(-15.0)
    assert 120 <= 2 * a_mid <= 150 and 110 <= 2 * b_mid <= 130


def test_organs_at_risk_lie_inside_the_body(quick):
    body = quick.structures["body"]
    for name in ("parotid_l", "parotid_r", "submandibular_l", "submandibular_r", "spinal_cord", "mandible",
                 "larynx", "airway", "vertebrae"):
        mask = quick.structures[name]
        assert mask.any(), name
        assert not np.any(mask & ~body), name


def test_parotids_and_submandibulars_are_mirror_images(quick):
    x = quick.axes()[0]
    assert np.allclose(x, -x[::-1])  # the grid is symmetric about x = 0
    for left, right in (("parotid_l", "parotid_r"), ("submandibular_l", "submandibular_r")):
        assert np.array_equal(quick.structures[left][:, :, ::-1], quick.structures[right])
        # Left = patient left = +x in LPS.
        assert x[np.nonzero(quick.structures[left])[2]].min() > 0


def test_cord_lies_inside_the_vertebral_canal(fine):
    cord, canal = fine.structures["spinal_cord"], fine.structures["spinal_canal"]
    bone = np.isin(fine.labels, (Tissue.VERTEBRA, Tissue.SKULL))  # the occipital bone joins at C1
    z = fine.axes()[2]
    below_c1 = z < 55.0
    assert cord[below_c1].any()
    # Cord surrounded by CSF in-plane, and the canal (cord + CSF) surrounded by vertebral bone.
    ring = np.zeros((1, 3, 3), bool)
    ring[0] = True
    assert not np.any(ndimage.binary_dilation(cord, ring)[below_c1] & ~canal[below_c1])
    grown = ndimage.binary_dilation(canal, ring, iterations=2)[below_c1]
    assert not np.any(grown & ~(canal[below_c1] | bone[below_c1]))


def test_landmarks_are_inside_the_body_and_mirrored(quick):
    from PETDosePaintingLib.imaging.image import point_to_index

    z = quick.axes()[2]
    for name, point in quick.landmarks.items():
        if z[0] <= point[2] <= z[-1]:  # the quick field of view does not reach the nasopharynx
            i, j, k = point_to_index(quick.label_image, point, name)
            assert quick.structures["body"][k, j, i], name
        if name.endswith("_l"):
            mirror = quick.landmarks[name[:-2] + "_r"]
            assert mirror == pytest.approx((-point[0], point[1], point[2]))
    i, j, k = point_to_index(quick.label_image, quick.landmarks["tonsil_l"])
    assert quick.labels[k, j, i] == Tissue.LYMPHOID


def test_anatomy_is_deterministic_and_the_seed_changes_the_patient():
    a = build_anatomy(AnatomyConfig.quick(seed=3))
    b = build_anatomy(AnatomyConfig.quick(seed=3))
    c = build_anatomy(AnatomyConfig.quick(seed=4))
    assert np.array_equal(a.labels, b.labels) and a.scale == b.scale
    assert a.scale != c.scale and not np.array_equal(a.labels, c.labels)
    assert all(0.85 <= s <= 1.15 for s in c.scale)
    flat = build_anatomy(AnatomyConfig.quick(seed=3, variability=0.0))
    assert flat.scale == (1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="variability"):
        build_anatomy(AnatomyConfig(variability=0.5))
