"""Static checks of the Slicer extension: layout, module files, .ui widget names, CMake lists."""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO_ROOT

MODULES = ("PETDosePainting", "GradientSegment", "HypoxiaMapping")


def test_no_python_file_at_the_repository_root():
    assert not list(REPO_ROOT.glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_folder_has_the_slicer_layout(module):
    folder = REPO_ROOT / module
    for item in ("CMakeLists.txt", f"{module}.py", f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"):
        assert (folder / item).is_file(), f"{module}/{item} is missing"
    top = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert f"add_subdirectory({module})" in top


@pytest.mark.parametrize("module", MODULES)
def test_module_file_compiles_and_follows_the_template(module, tmp_path):
    path = REPO_ROOT / module / f"{module}.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    classes = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
    for suffix in ("", "Widget", "Logic", "Test", "ParameterNode"):
        assert f"{module}{suffix}" in classes, f"{module}.py lacks class {module}{suffix}"
    text = path.read_text()
    if module != "PETDosePainting":
        assert 'self.parent.dependencies = ["PETDosePainting"]' in text


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_used_by_the_widget_exists_in_the_ui_file(module):
    ui = ET.parse(REPO_ROOT / module / "Resources" / "UI" / f"{module}.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    params = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    text = (REPO_ROOT / module / f"{module}.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", text))
    assert used <= names, f"{module}.py uses self.ui.{sorted(used - names)} missing from the .ui"
    # Every widget bound to the parameter node refers to a declared parameter.
    declared = set(re.findall(r"^\s{4}(\w+):", text.split("ParameterNode:")[1].split("\nclass ")[0], re.M))
    assert params <= declared, f"{module}.ui binds undeclared parameters {sorted(params - declared)}"


def _in_effect_package(relative_path) -> bool:
    """A file of a Segment Editor effect package (``SegmentEditor<Name>Lib/``): its icon must be listed too."""
    top = relative_path.parts[0]
    return len(relative_path.parts) > 1 and top.startswith("SegmentEditor") and top.endswith("Lib")


def _cmake_listed(cmake_text: str) -> set[str]:
    listed = set()
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)(.*?)\)", cmake_text, re.S):
        listed.update(tok.replace("${MODULE_NAME}", "{m}") for tok in block.split())
    return listed


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_script_and_resource_on_disk(module):
    folder = REPO_ROOT / module
    listed = {p.format(m=module) for p in _cmake_listed((folder / "CMakeLists.txt").read_text())}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts
               and (p.suffix == ".py" or "Resources" in p.parts or _in_effect_package(p.relative_to(folder)))}
    missing = sorted(on_disk - listed)
    assert not missing, f"{module}/CMakeLists.txt does not list: " + " ".join(missing)
    stale = sorted(p for p in listed - on_disk)
    assert not stale, f"{module}/CMakeLists.txt lists files that do not exist: " + " ".join(stale)


# ------------------------------------------------------------------ the "PET Gradient" Segment Editor effect

EFFECT_PACKAGE = REPO_ROOT / "GradientSegment" / "SegmentEditorPETGradientLib"
EFFECT_METHODS = ("clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults", "updateGUIFromMRML",
                  "updateMRMLFromGUI", "processInteractionEvents", "deactivate", "cleanup", "onApply", "onCancel")


def test_effect_package_has_the_template_layout(tmp_path):
    for name in ("__init__.py", "SegmentEditorEffect.py", "SegmentEditorEffect.png"):
        assert (EFFECT_PACKAGE / name).is_file(), f"SegmentEditorPETGradientLib/{name} is missing"
    assert (EFFECT_PACKAGE / "SegmentEditorEffect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("__init__.py", "SegmentEditorEffect.py"):
        py_compile.compile(str(EFFECT_PACKAGE / name), cfile=str(tmp_path / f"{name}.pyc"), doraise=True)


def test_effect_class_implements_the_scripted_effect_api():
    tree = ast.parse((EFFECT_PACKAGE / "SegmentEditorEffect.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    # setPythonSource instantiates the class named after the file.
    assert "SegmentEditorEffect" in classes
    effect = classes["SegmentEditorEffect"]
    assert [ast.unparse(b) for b in effect.bases] == ["AbstractScriptedSegmentEditorEffect"]
    methods = {n.name for n in effect.body if isinstance(n, ast.FunctionDef)}
    assert set(EFFECT_METHODS) <= methods, f"missing {sorted(set(EFFECT_METHODS) - methods)}"
    # setPythonSource loads the file as a stand-alone module: relative imports would fail there.
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative


def test_effect_follows_the_editor_conventions():
    text = (EFFECT_PACKAGE / "SegmentEditorEffect.py").read_text()
    assert "Master" not in text and "master" not in text, "use the 'source' API names (Slicer >= 5.1)"
    assert "sourceVolumeImageData()" in text
    apply = text.split("def onApply")[1].split("\n    def ")[0]
    assert apply.index("saveStateForUndo()") < apply.index("modifySelectedSegmentByLabelmap(")
    assert "restoreOverrideCursor()" in apply.split("finally:")[1]
    for handler in ("processInteractionEvents", "onFwhmChanged", "onLevelChanged"):
        body = text.split(f"def {handler}")[1].split("\n    def ")[0]
        assert "setOverrideCursor" not in body or "restoreOverrideCursor()" in body.split("finally:")[1], handler


def test_gradientsegment_registers_the_effect_by_its_name():
    from PETDosePaintingLib.mrml.segment_editor_logic import EFFECT_NAME

    module = (REPO_ROOT / "GradientSegment" / "GradientSegment.py").read_text()
    effect = (EFFECT_PACKAGE / "SegmentEditorEffect.py").read_text()
    assert f'EFFECT_NAME = "{EFFECT_NAME}"' in module
    assert f'scriptedEffect.name = "{EFFECT_NAME}"' in effect
    assert 'slicer.app.connect("startupCompleted()", registerPETGradientEffect)' in module
    assert '"SegmentEditorPETGradientLib", "SegmentEditorEffect.py"' in module
    assert "setPythonSource(" in module and ".register()" in module
