"""The shared library imports in plain Python and never touches the Slicer GUI layer."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import LIB_ROOT

FORBIDDEN_MODULES = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "sitkUtils",
                     "SegmentEditorEffects", "vtkSegmentationCorePython")
FORBIDDEN_ATTRIBUTES = ("slicer.app", "slicer.modules")
TIER1_ALLOWED = {"numpy", "scipy", "SimpleITK", "skimage", "pydicom"}
TIER2_PACKAGES = ("mrml",)
TOP_LAYER_PACKAGES = ("pipeline", "cli")  # may use both tiers
#: Optional engines, each loaded in one file only, on first use, behind an extra (the rest works without them):
#: pyRadPlan and its own dependencies for the [planning] extra (issue 9, Docs/Planning.md).
OPTIONAL_ENGINE_IMPORTS = {"dosepainting/planning_objectives.py": {"pyRadPlan", "pydantic", "array_api_compat"}}


def _library_modules() -> list[str]:
    return sorted(
        "PETDosePaintingLib." + ".".join(p.relative_to(LIB_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in LIB_ROOT.rglob("*.py")
    )


def test_every_library_module_imports_without_gui():
    code = (
        "import importlib, sys\n"
        f"mods = {_library_modules()!r}\n"
        "for m in mods: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"bad = [m for m in {FORBIDDEN_MODULES!r} if m in sys.modules]\n"
        "import slicer\n"
        "bad += [a for a in ('app', 'modules') if getattr(slicer, a, None) is not None]\n"
        "print('BAD', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=LIB_ROOT.parent, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _imports_and_attributes(path):
    """Absolute names of everything a file imports (relative imports resolved) and ``name.attr`` uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ["PETDosePaintingLib", *path.relative_to(LIB_ROOT).parent.parts]
    imported, attributes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            imported.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            attributes.add(f"{node.value.id}.{node.attr}")
        if _is_dynamic_import(node):  # importlib.import_module("name") counts as an import of name
            imported.add(node.args[0].value)
    return imported, attributes


def _is_dynamic_import(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def test_no_gui_imports_or_slicer_app_anywhere_in_the_library():
    problems = []
    for path in LIB_ROOT.rglob("*.py"):
        imported, attributes = _imports_and_attributes(path)
        for name in imported:
            if name in FORBIDDEN_MODULES or name.split(".")[0] in ("qt", "ctk"):
                problems.append(f"{path}: imports {name}")
        problems += [f"{path}: uses {a}" for a in attributes if a in FORBIDDEN_ATTRIBUTES]
    assert not problems, "\n".join(problems)


def test_tiers_keep_their_imports():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for path in LIB_ROOT.rglob("*.py"):
        package = path.relative_to(LIB_ROOT).parts[0]
        if package in TOP_LAYER_PACKAGES:
            continue
        imported, _ = _imports_and_attributes(path)
        roots = {name.split(".")[0] for name in imported} - stdlib - {"PETDosePaintingLib"}
        allowed = {"slicer", "vtk", "numpy", "SimpleITK"} if package in TIER2_PACKAGES else TIER1_ALLOWED
        allowed = allowed | OPTIONAL_ENGINE_IMPORTS.get(path.relative_to(LIB_ROOT).as_posix(), set())
        problems += [f"{path}: tier {'2' if package in TIER2_PACKAGES else '1'} imports {r}" for r in roots - allowed]
        if package not in TIER2_PACKAGES and any(n.startswith("PETDosePaintingLib.mrml") for n in imported):
            problems.append(f"{path}: tier 1 imports the MRML bridge")
    assert not problems, "\n".join(problems)


def test_layers_point_downwards():
    """cli uses pipeline and the tiers; pipeline never uses cli (a batch run or the demo must not need argparse
    front-ends); nothing below the top layer uses either."""
    problems = []
    for path in LIB_ROOT.rglob("*.py"):
        package = path.relative_to(LIB_ROOT).parts[0]
        imported, _ = _imports_and_attributes(path)
        above = {"cli"} if package == "pipeline" else set() if package == "cli" else {"cli", "pipeline"}
        problems += [f"{path}: imports {n}" for n in imported
                     if any(n.startswith(f"PETDosePaintingLib.{layer}") for layer in above)]
    assert not problems, "\n".join(problems)
