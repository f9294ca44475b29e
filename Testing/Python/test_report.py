"""petdp report: the self-contained HTML report, rendered by headless Chromium (Debian package ``chromium``).

The page must open without console errors, hold its figures as PNG data URIs that decode, and render to a
screenshot that is not blank. Chromium runs as root with ``--no-sandbox`` and a fresh profile per call. Without
Chromium these tests skip, unless ``PETDP_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``, which installs it).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_batch import _sphere_study

from PETDosePaintingLib.cli.main import main
from PETDosePaintingLib.pipeline.batch import run_batch
from PETDosePaintingLib.pipeline.report import render_slices, write_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        if os.environ.get("PETDP_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    return binary


class _Images(HTMLParser):
    """Every <img> of a DOM with its attributes, and every resource-loading attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.resources: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        if tag in ("script", "link", "iframe", "object", "embed", "video", "audio", "source") or (
                tag == "img" and not attributes.get("src", "").startswith("data:")):
            self.resources.append(f"<{tag} {attributes}>")


def render_in_chromium(page: Path, work: Path, *, height: int = 2600) -> dict[str, object]:
    """Screenshot, DOM and console log of ``page`` in headless Chromium."""
    binary = _chromium_binary()
    work.mkdir(parents=True, exist_ok=True)
    shot = work / "shot.png"
    common = [binary, *CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0"]
    run_shot = subprocess.run([*common, f"--user-data-dir={work / 'profile-shot'}", f"--screenshot={shot}",
                               f"--window-size=1300,{height}", "--hide-scrollbars", page.as_uri()],
                              capture_output=True, text=True, timeout=180, check=False)
    run_dom = subprocess.run([*common, f"--user-data-dir={work / 'profile-dom'}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=180, check=False)
    assert run_shot.returncode == 0, run_shot.stderr[-3000:]
    assert run_dom.returncode == 0, run_dom.stderr[-3000:]
    console = [line for line in (run_shot.stderr + run_dom.stderr).splitlines()
               if ":CONSOLE" in line or "Uncaught" in line]
    return {"shot": shot, "dom": run_dom.stdout, "console": console}


def check_page(page: Path, work: Path, expected_figures: list[str]) -> None:
    """No console message, every figure a decodable PNG data URI, no external resource, a non-blank render."""
    from matplotlib import image as mpimg

    out = render_in_chromium(page, work)
    assert out["console"] == [], out["console"]
    parser = _Images()
    parser.feed(out["dom"])
    assert parser.resources == []
    assert len(parser.images) >= len(expected_figures)
    for image in parser.images:
        src = image["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        pixels = mpimg.imread(io.BytesIO(data), format="png")
        assert pixels.shape[:2] == (int(image["height"]), int(image["width"]))
        assert float(np.std(pixels[..., :3])) > 0.01  # a figure, not an empty canvas
    dom = out["dom"]
    for key in expected_figures:
        assert f'id="fig-{key}"' in dom, key
    shot = mpimg.imread(str(out["shot"]))[..., :3]
    assert shot.shape[0] > 1000 and shot.shape[1] == 1300
    not_white = np.mean(np.any(shot < 0.9, axis=-1))
    colourful = np.mean((shot.max(axis=-1) - shot.min(axis=-1)) > 0.25)
    assert not_white > 0.01, not_white  # text, tables and figures drawn (a blank page has none)
    assert colourful > 0.001, colourful  # coloured figure pixels (contours, colour maps, bars)


# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory):
    """A one-row batch of the sphere study with every step that a file row can run (no simulation)."""
    base = tmp_path_factory.mktemp("report")
    study = _sphere_study(base / "study")
    x, y, z = study["centre"]
    (base / "m.csv").write_text(
        "id,pet,reference,seed_x,seed_y,seed_z,methods,fwhm_mm,steps,prescription,planned_dose,fmiso,muscle\n"
        f"S1,study/pet.nrrd,study/reference.nrrd,{x},{y},{z},gradient threshold fcm,7.5,"
        "segment quantify compare prescribe evaluate hypoxia report,levels,study/planned.nrrd,study/fmiso.nrrd,"
        "study/muscle.nrrd\n")
    result = run_batch(base / "m.csv", base / "out", workers=0, progress="off")
    assert result.ok, [r.error for r in result.rows]
    return base / "out"


@pytest.mark.slow
def test_batch_row_report_opens_in_headless_chromium(batch_folder, tmp_path):
    row = batch_folder / "rows" / "S1"
    result = write_report(row, out=tmp_path / "row.html", location="rows/S1", pdf=True)
    assert result.kind == "batch row" and result.problems == []
    expected = ["lesion_slices", "method_volumes", "dice_matrix", "prescription_dpbn",
                "prescription_levels", "prescription_dvh", "prescription_qvh", "plan_qvh", "plan_dvh", "hypoxia_map"]
    assert [f for f in expected if f not in result.figures] == []
    assert result.pdf.read_bytes().startswith(b"%PDF")
    assert any("timepoints" in m for m in result.missing)  # a file row has no timepoints: said, not hidden
    html = (tmp_path / "row.html").read_text()
    assert "Not in this folder" in html and "http://" not in html and "https://" not in html
    check_page(tmp_path / "row.html", tmp_path / "chromium", expected)


@pytest.mark.slow
def test_cohort_report_links_rows(batch_folder, tmp_path):
    result = write_report(batch_folder, out=tmp_path / "cohort.html")
    assert result.kind == "batch cohort" and "cohort_volumes" in result.figures and "cohort_dice" in result.figures
    assert 'href="rows/S1/report.html"' in (tmp_path / "cohort.html").read_text()
    check_page(tmp_path / "cohort.html", tmp_path / "chromium", ["cohort_volumes", "cohort_dice"])


def test_report_says_what_is_missing_and_survives_bad_files(tmp_path):
    folder = tmp_path / "partial"
    (folder / "gtv").mkdir(parents=True)
    (folder / "accuracy.csv").write_text("method,status,volume_ml\ngradient,ok,12.5\nthreshold,refused,\n")
    (folder / "pet_suv.nrrd").write_bytes(b"not an image")
    result = write_report(folder)
    assert result.kind == "result folder" and "method_volumes" in result.figures
    assert any("lesion" in p and "pet_suv.nrrd" in p for p in result.problems)
    assert any("summary" in m for m in result.missing) and any("prescription" in m for m in result.missing)
    html = (folder / "report.html").read_text()
    assert "could not be drawn" in html and "Not in this folder" in html


@pytest.mark.slow
def test_report_command_and_deterministic_figures(batch_folder, tmp_path, capsys):
    assert main(["report", str(batch_folder / "rows" / "S1"), "--out", str(tmp_path / "r.html"),
                 "--progress", "off"]) == 0
    assert "batch row" in capsys.readouterr().out and (tmp_path / "r.html").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    import SimpleITK as sitk

    pet = sitk.ReadImage(str(batch_folder / "rows" / "S1" / "pet_suv.nrrd"))
    mask = sitk.ReadImage(str(batch_folder / "rows" / "S1" / "reference.nrrd"))
    centre = tuple(s // 2 for s in pet.GetSize())
    first = render_slices(pet, centre, masks={"truth": mask}, truth="truth", title="t", value_label="SUV")
    assert first == render_slices(pet, centre, masks={"truth": mask}, truth="truth", title="t", value_label="SUV")


@pytest.mark.slow
def test_demo_writes_its_report(tmp_path):
    from PETDosePaintingLib.pipeline.demo import run_demo

    result = run_demo(tmp_path / "demo", quick=True, log=lambda _m: None)
    page = result.files["report"]
    assert page == tmp_path / "demo" / "report.html" and page.is_file()
    expected = ["lesion_slices", "method_volumes", "hypoxia_map", "volume_over_time"]
    html = page.read_text()
    assert 'id="fig-prescription_' in html  # the demo's RT Dose prescriptions
    check_page(page, tmp_path / "chromium", expected)
