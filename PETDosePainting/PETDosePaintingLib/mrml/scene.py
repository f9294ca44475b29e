"""MRML scenes inside and outside Slicer, and saving/loading them as Slicer's ``.mrb`` bundles.

Outside the Slicer application the ``slicer-core`` wheel provides the real MRML classes; a scene then
needs the application, colour, segmentation and remote-I/O logics wired by hand (what the Slicer
application does at start-up), which :func:`create_core_scene` does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import slicer

from ..errors import InputError, ProcessingError


def create_core_scene() -> slicer.vtkMRMLScene:
    """A new MRML scene with the logics needed for colours, segmentations and ``.mrb`` reading.

    Works in plain Python with ``slicer-core`` and inside Slicer (where it gives a scene separate
    from ``slicer.mrmlScene``).
    """
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLScene(scene)
    seg_logic.SetMRMLApplicationLogic(app_logic)
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.SetMRMLApplicationLogic(app_logic)
    cache_dir = tempfile.mkdtemp(prefix="petdp-mrml-cache-")
    remote_io.GetCacheManager().SetRemoteCacheDirectory(cache_dir)
    io_manager = slicer.vtkDataIOManagerLogic()
    io_manager.SetMRMLScene(scene)
    io_manager.SetMRMLApplicationLogic(app_logic)
    io_manager.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    remote_io.AddDataIOToScene()
    # The logic objects must outlive the scene's use; keep references on the Python wrapper, and remove the
    # (normally empty) cache folder once the scene is gone.
    scene._petdp_logics = (app_logic, seg_logic, remote_io, io_manager)  # type: ignore[attr-defined]
    weakref.finalize(scene, shutil.rmtree, cache_dir, True)
    return scene


def get_scene(scene: slicer.vtkMRMLScene | None = None) -> slicer.vtkMRMLScene:
    """``scene`` if given, else Slicer's main scene inside the application, else a new core scene."""
    if scene is not None:
        return scene
    main = getattr(slicer, "mrmlScene", None)
    return main if main is not None else create_core_scene()


def save_scene_mrb(scene: slicer.vtkMRMLScene, path: str | Path) -> Path:
    """Save the scene and the data of every storable node into a ``.mrb`` bundle, atomically."""
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise InputError("a Slicer scene bundle must have the .mrb extension", path)
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and _has_data(node):
            node.AddDefaultStorageNode()
    # Slicer names the scene inside the bundle after the file, so write the final file name into a
    # private temporary folder next to the destination, then move it into place (atomic on one disk).
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".petdp-tmp-", dir=path.parent) as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        if not scene.WriteToMRB(str(tmp)) or not tmp.is_file():
            raise ProcessingError(f"{path}: Slicer could not write the scene bundle")
        os.replace(tmp, path)
    return path


def _has_data(node) -> bool:
    if node.IsA("vtkMRMLVolumeNode"):
        return node.GetImageData() is not None
    return any(node.IsA(cls) for cls in ("vtkMRMLTableNode", "vtkMRMLTransformNode", "vtkMRMLSegmentationNode",
                                         "vtkMRMLMarkupsNode", "vtkMRMLModelNode"))


def load_scene_mrb(path: str | Path, scene: slicer.vtkMRMLScene | None = None) -> slicer.vtkMRMLScene:
    """Load a ``.mrb`` bundle into ``scene`` (a new core scene if ``None``) and return the scene."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such scene bundle", path)
    scene = scene if scene is not None else create_core_scene()
    if not scene.ReadFromMRB(str(path)):
        raise InputError("Slicer could not read this scene bundle", path)
    return scene


def nodes_by_class(scene: slicer.vtkMRMLScene, class_name: str) -> list:
    """All nodes of ``class_name`` (or a subclass) in ``scene``, in scene order.

    (``slicer.util.getNodesByClass`` ignores its ``scene`` argument, hence this helper.)
    """
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).IsA(class_name)]


def node_by_name(scene: slicer.vtkMRMLScene, name: str, class_name: str = "vtkMRMLNode"):
    """The first node called ``name`` (of ``class_name``); :class:`InputError` listing the names if none."""
    matches = [n for n in nodes_by_class(scene, class_name) if n.GetName() == name]
    if not matches:
        names = sorted({n.GetName() for n in nodes_by_class(scene, class_name) if n.GetName()})
        raise InputError(f"no {class_name} node named {name!r} in the scene (found: {', '.join(names) or 'none'})")
    return matches[0]
