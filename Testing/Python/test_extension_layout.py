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
               and (p.suffix == ".py" or "Resources" in p.parts)}
    missing = sorted(on_disk - listed)
    assert not missing, f"{module}/CMakeLists.txt does not list: " + " ".join(missing)
    stale = sorted(p for p in listed - on_disk)
    assert not stale, f"{module}/CMakeLists.txt lists files that do not exist: " + " ".join(stale)
