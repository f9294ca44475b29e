"""Tissue labels of the digital head-and-neck patient and their physical properties per modality.

One row per :class:`Tissue` label (:class:`TissueProperties`): FDG uptake (SUVbw), hypoxia-tracer uptake
relative to muscle (FMISO, FAZA), CT number (HU, without and with iodinated contrast), linear attenuation
coefficient at 511 keV (1/cm), MR relaxation times at 1.5 T and 3 T (ms), relative proton density and
apparent diffusion coefficient (mm2/s). Images are made from a label map with :func:`property_lut`
(``lut[labels]``, vectorised).

Provenance of the values (column by column; the ``source`` of each row names exceptions):

* **FDG SUVbw**: ranges of ``pet_segmentation.md`` §10.2 A.2 ("muscle / soft tissue 0.7-1.2, salivary
  glands 1.5-3, palatine/lingual tonsils 2-5, brain 6-10 at skull-base slices, vocal cords / laryngeal
  muscles 1-4, blood pool 1.5-2"); the value in each range is a design choice. Fat, bone, marrow, spinal
  cord, CSF and thyroid are not in the reference: literature-typical **design defaults** (unverified).
  Lesion labels (tumour, necrosis, node, inflammation) carry nominal values only: the digital patient
  takes lesion uptake from :mod:`.tumour` (tumour-to-background ratio, heterogeneity, rim).
* **FMISO / FAZA tumour-to-muscle ratio**: the reference (``dose_painting.md`` §2.1) gives only the
  hypoxia thresholds (FMISO T/M > 1.2, T/B >= 1.4; FAZA T/M >= 1.2-1.5) and that blood and muscle are
  close at 2-4 h p.i. (blood 1.0). Normal-tissue ratios are **design defaults**: about 1 for
  water-rich tissues, lower for fat and bone (lower water content), FAZA lower in brain (more
  hydrophilic, less blood-brain-barrier passage) -- plausible, unverified.
* **CT HU**: textbook values (air -1000, fat about -100, water 0, soft tissue 20-60, cancellous /
  cortical bone 300-1500); post-contrast values (venous phase, about 150 HU in vessels) are **design
  defaults**.
* **mu at 511 keV**: ``pet_segmentation.md`` §10.2 A.1 (soft tissue 0.096, bone 0.13-0.17, air 0);
  fat (0.090) and muscle (0.099-0.100) scaled by mass density from water -- **design defaults**.
* **T1, T2**: muscle, white matter (spinal cord), grey matter (brain) and blood at 1.5 T and 3 T after
  Stanisz et al., MRM 2005;54:507; subcutaneous fat after de Bazelaire et al., Radiology 2004;230:652;
  CSF literature-typical (about 4 s / 2 s). All these are from memory of the papers [M], to verify.
  Glands, lymphoid tissue, tumour, necrosis, inflammation, bone and larynx are **design defaults**.
* **Proton density** (relative to water): **design defaults**.
* **ADC**: untreated HNSCC 0.8-1.3e-3 mm2/s (``dose_painting.md`` §4.1; here 1.0e-3); other tissues
  literature-typical **design defaults** (muscle about 1.4e-3, salivary glands 1.1-1.3e-3, lymphoid
  tissue about 0.8e-3, CSF 3.0e-3, necrosis and oedema high). Fat is near 0 and, in the fat-suppressed
  EPI of :mod:`.modalities`, barely visible anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

import numpy as np

from ..errors import InputError


class Tissue(IntEnum):
    """Labels of the fine-grid label map (uint8). Lesion labels (>= 20) are painted by :mod:`.tumour`."""

    OUTSIDE = 0  #: air outside the body
    FAT = 1  #: subcutaneous fat
    SOFT_TISSUE = 2  #: generic soft / connective tissue
    MUSCLE = 3  #: skeletal muscle (neck, tongue, prevertebral, oesophagus)
    AIRWAY = 4  #: air in the pharynx, larynx and trachea
    VERTEBRA = 5  #: cervical vertebrae (cancellous bone with marrow, cortical shell)
    SPINAL_CORD = 6
    CSF = 7  #: cerebrospinal fluid around the cord
    MANDIBLE = 8
    PAROTID_L = 9
    PAROTID_R = 10
    SUBMANDIBULAR_L = 11
    SUBMANDIBULAR_R = 12
    VESSEL = 13  #: carotid arteries and jugular veins (blood pool)
    LYMPHOID = 14  #: palatine and lingual tonsils, other avid lymphoid tissue
    LARYNX = 15  #: laryngeal muscles and cartilage around the laryngeal airway (vocal cords)
    THYROID = 16
    BRAIN = 17  #: posterior cranial fossa at the top slices
    SKULL = 18  #: occipital bone around the brain
    TUMOUR = 20  #: viable primary tumour (GTV minus necrosis)
    NECROSIS = 21  #: necrotic core (part of the GTV)
    NODE = 22  #: involved lymph node (GTVn)
    INFLAMMATION = 23  #: peritumoral inflammation rim (not tumour)


#: Labels of lesions painted on top of the anatomy.
LESION_LABELS = frozenset({Tissue.TUMOUR, Tissue.NECROSIS, Tissue.NODE, Tissue.INFLAMMATION})
#: Bone labels.
BONE_LABELS = frozenset({Tissue.VERTEBRA, Tissue.MANDIBLE, Tissue.SKULL})
#: Air labels (inside and outside the body).
AIR_LABELS = frozenset({Tissue.OUTSIDE, Tissue.AIRWAY})


@dataclass(frozen=True)
class TissueProperties:
    """One row of the property table. Units in the field names; see the module docstring for sources."""

    name: str
    fdg_suv: float  #: FDG uptake, SUVbw (g/mL)
    fmiso_tmr: float  #: FMISO uptake / muscle uptake at 2-4 h p.i.
    faza_tmr: float  #: FAZA uptake / muscle uptake at 2-3 h p.i.
    ct_hu: float  #: CT number without contrast (HU)
    ct_hu_contrast: float  #: CT number in a venous-phase contrast-enhanced CT (HU)
    mu_511_per_cm: float  #: linear attenuation coefficient at 511 keV (1/cm)
    t1_ms_1p5t: float  #: longitudinal relaxation time at 1.5 T (ms)
    t2_ms_1p5t: float  #: transverse relaxation time at 1.5 T (ms)
    t1_ms_3t: float  #: longitudinal relaxation time at 3 T (ms)
    t2_ms_3t: float  #: transverse relaxation time at 3 T (ms)
    proton_density: float  #: relative to water (0-1)
    adc_mm2_s: float  #: apparent diffusion coefficient (mm2/s)
    source: str = ""  #: notes on rows that deviate from the column provenance


_P = TissueProperties
#: The property table (see the module docstring for where each value comes from).
TISSUE_PROPERTIES: dict[Tissue, TissueProperties] = {
    Tissue.OUTSIDE: _P("outside air", 0.0, 0.0, 0.0, -1000, -1000, 0.0, 1, 1, 1, 1, 0.0, 0.0,
                       "air: no signal; T1/T2 placeholders (PD 0)"),
    Tissue.FAT: _P("fat", 0.4, 0.6, 0.6, -100, -95, 0.090, 343, 58, 382, 68, 0.9, 0.2e-3,
                   "SUV, tracer ratios and ADC design defaults; T1/T2 de Bazelaire 2004 [M]"),
    Tissue.SOFT_TISSUE: _P("soft tissue", 0.8, 1.0, 1.0, 30, 45, 0.096, 800, 60, 1000, 55, 0.8, 1.5e-3,
                           "mu: reference soft tissue; MR and ADC design defaults"),
    Tissue.MUSCLE: _P("muscle", 1.0, 1.0, 1.0, 45, 60, 0.099, 1008, 44, 1412, 50, 0.8, 1.4e-3,
                      "T1/T2 Stanisz 2005 [M]; the reference for tumour-to-background and T/M ratios"),
    Tissue.AIRWAY: _P("airway air", 0.0, 0.0, 0.0, -1000, -1000, 0.0, 1, 1, 1, 1, 0.0, 0.0, "air"),
    Tissue.VERTEBRA: _P("vertebra", 1.5, 0.7, 0.7, 400, 420, 0.145, 550, 50, 600, 45, 0.6, 0.4e-3,
                        "mu in the reference bone range; marrow SUV and MR (fatty marrow) design defaults"),
    Tissue.SPINAL_CORD: _P("spinal cord", 1.5, 1.0, 0.9, 35, 40, 0.097, 884, 72, 1084, 69, 0.7, 1.0e-3,
                           "T1/T2 white matter, Stanisz 2005 [M]; SUV design default"),
    Tissue.CSF: _P("cerebrospinal fluid", 0.3, 0.9, 0.9, 5, 5, 0.096, 4000, 2000, 4200, 2000, 1.0, 3.0e-3,
                   "free-water-like CSF; values literature-typical [M]"),
    Tissue.MANDIBLE: _P("mandible", 0.8, 0.4, 0.4, 1100, 1100, 0.160, 400, 40, 450, 35, 0.2, 0.3e-3,
                        "mostly cortical bone; mu in the reference bone range; other values design defaults"),
    Tissue.PAROTID_L: _P("parotid gland (left)", 2.0, 1.1, 1.0, 0, 35, 0.095, 700, 80, 900, 75, 0.8, 1.2e-3,
                         "SUV in the reference range 1.5-3; fatty gland (low HU); MR design defaults"),
    Tissue.PAROTID_R: _P("parotid gland (right)", 2.0, 1.1, 1.0, 0, 35, 0.095, 700, 80, 900, 75, 0.8, 1.2e-3,
                         "as the left parotid"),
    Tissue.SUBMANDIBULAR_L: _P("submandibular gland (left)", 2.2, 1.1, 1.0, 40, 80, 0.097, 900, 70, 1200, 65,
                               0.8, 1.3e-3, "SUV in the reference range 1.5-3; MR design defaults"),
    Tissue.SUBMANDIBULAR_R: _P("submandibular gland (right)", 2.2, 1.1, 1.0, 40, 80, 0.097, 900, 70, 1200, 65,
                               0.8, 1.3e-3, "as the left submandibular gland"),
    Tissue.VESSEL: _P("blood vessels", 1.8, 1.0, 1.0, 40, 160, 0.101, 1441, 290, 1932, 275, 0.9, 2.5e-3,
                      "SUV in the reference blood-pool range 1.5-2; T1/T2 blood, Stanisz 2005 [M]; "
                      "flowing-blood ADC design default"),
    Tissue.LYMPHOID: _P("lymphoid tissue (tonsils)", 3.0, 1.0, 1.0, 45, 70, 0.099, 1000, 80, 1300, 75, 0.85,
                        0.8e-3, "SUV in the reference tonsil range 2-5; MR and ADC design defaults"),
    Tissue.LARYNX: _P("larynx", 1.8, 1.0, 1.0, 90, 100, 0.102, 1000, 45, 1400, 48, 0.75, 1.3e-3,
                      "SUV in the reference vocal-cord range 1-4; muscle and cartilage mix, design defaults"),
    Tissue.THYROID: _P("thyroid", 1.5, 1.0, 1.0, 90, 150, 0.100, 900, 70, 1150, 65, 0.8, 1.5e-3,
                       "iodine-rich gland; all values design defaults"),
    Tissue.BRAIN: _P("brain (posterior fossa)", 8.0, 1.0, 0.6, 35, 40, 0.097, 1124, 95, 1820, 99, 0.8, 0.8e-3,
                     "SUV in the reference range 6-10; T1/T2 grey matter, Stanisz 2005 [M]"),
    Tissue.SKULL: _P("skull", 0.6, 0.4, 0.4, 1200, 1200, 0.165, 400, 30, 450, 25, 0.1, 0.3e-3,
                     "cortical bone; mu in the reference range 0.13-0.17; other values design defaults"),
    Tissue.TUMOUR: _P("viable tumour", 5.0, 1.1, 1.1, 50, 80, 0.097, 1100, 90, 1450, 85, 0.85, 1.0e-3,
                      "ADC in the reference HNSCC range 0.8-1.3e-3 (dose_painting.md 4.1); uptake nominal "
                      "(taken from the tumour model); CT/MR design defaults"),
    Tissue.NECROSIS: _P("necrosis", 0.6, 0.7, 0.7, 25, 30, 0.096, 2500, 250, 2800, 240, 0.95, 2.2e-3,
                        "FDG in the reference necrosis range 0.3-1.0 x background; fluid-like MR and ADC, "
                        "design defaults"),
    Tissue.NODE: _P("involved lymph node", 5.0, 1.1, 1.1, 45, 75, 0.097, 1100, 90, 1450, 85, 0.85, 1.0e-3,
                    "as viable tumour"),
    Tissue.INFLAMMATION: _P("peritumoral inflammation", 1.6, 1.0, 1.0, 35, 60, 0.096, 1300, 120, 1700, 110,
                            0.85, 1.8e-3, "FDG in the reference rim range 1.3-2 x background; oedema-like "
                            "MR and ADC, design defaults"),
}
del _P

#: Numeric columns of :class:`TissueProperties` that :func:`property_lut` accepts.
PROPERTY_COLUMNS = tuple(f.name for f in fields(TissueProperties) if f.name not in ("name", "source"))


def properties(tissue: Tissue | int) -> TissueProperties:
    """The table row of one label."""
    return TISSUE_PROPERTIES[Tissue(int(tissue))]


def property_lut(column: str, overrides: dict[Tissue, float] | None = None) -> np.ndarray:
    """A float64 look-up table of one column, indexed by label value (length 256; unknown labels get NaN).

    ``lut[labels]`` turns a uint8 label array into a property map. ``overrides`` replaces single entries
    (e.g. a different tumour ADC) without touching the table.
    """
    if column not in PROPERTY_COLUMNS:
        raise InputError(f"unknown tissue property {column!r}; use one of {', '.join(PROPERTY_COLUMNS)}")
    lut = np.full(256, np.nan)
    for tissue, row in TISSUE_PROPERTIES.items():
        lut[int(tissue)] = float(getattr(row, column))
    for tissue, value in (overrides or {}).items():
        lut[int(tissue)] = float(value)
    return lut


def relaxation_columns(field_strength_t: float) -> tuple[str, str]:
    """Names of the T1 and T2 columns for a field strength of 1.5 or 3 T."""
    if np.isclose(field_strength_t, 1.5):
        return "t1_ms_1p5t", "t2_ms_1p5t"
    if np.isclose(field_strength_t, 3.0):
        return "t1_ms_3t", "t2_ms_3t"
    raise InputError(f"field_strength_t must be 1.5 or 3 (tesla), got {field_strength_t!r}")


def tissue_table() -> list[dict[str, object]]:
    """The table as JSON-ready rows (label value, enum name and every column), for the truth file."""
    rows = []
    for tissue, row in TISSUE_PROPERTIES.items():
        entry: dict[str, object] = {"label": int(tissue), "tissue": tissue.name}
        entry.update({f.name: getattr(row, f.name) for f in fields(TissueProperties)})
        rows.append(entry)
    return rows
