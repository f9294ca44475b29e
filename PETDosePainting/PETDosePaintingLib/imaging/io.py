"""Reading and writing images and small result files, safely.

* Every write is atomic: the data goes to a temporary file in the destination folder, which is then
  renamed over the destination, so a crash never leaves a half-written file behind.
* Outputs that would overwrite an input are refused (:func:`ensure_not_input`).
* Read errors name the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OutputError

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def image_suffix(path: str | Path) -> str:
    """The image-format suffix of ``path`` (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def read_image(path: str | Path) -> sitk.Image:
    """Read an image file (NRRD, NIfTI, MHA/MHD), a DICOM series directory, or a DICOM RT Dose file.

    A DICOM directory is read with :func:`PETDosePaintingLib.imaging.dicom_series.read_dicom_image`
    (PET in Bq/mL, CT in HU, MR in arbitrary units). A single ``.dcm`` file is read as an RT Dose with
    :func:`PETDosePaintingLib.imaging.rtdose.read_rtdose` (Gy; other DICOM objects are refused). Units
    recorded in a file's header are kept.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or directory", path)
    if path.is_dir():
        from .dicom_series import read_dicom_image

        return read_dicom_image(path)
    if path.suffix.lower() == ".dcm":
        from .rtdose import read_rtdose

        return read_rtdose(path)
    if not image_suffix(path):
        raise InputError(f"unknown image format; expected one of {', '.join(IMAGE_SUFFIXES)}, a DICOM directory "
                         "or a DICOM RT Dose file (.dcm)", path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot be read as an image ({_first_line(exc)})", path) from exc


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages put the useful sentence last ("... Description: Could not create IO object ...").
    useful = [ln for ln in lines if "Description" in ln or "error" in ln.lower()]
    return (useful or lines or [type(exc).__name__])[-1][:300]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the suffix of ``path`` so format-sniffing writers (SimpleITK) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(path) or "".join(path.suffixes[-1:])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write ``image`` atomically to an NRRD, NIfTI or MHA file; metadata (units) is kept in NRRD/MHA."""
    path = Path(path)
    if not image_suffix(path):
        raise OutputError(f"unknown image format; use one of {', '.join(IMAGE_SUFFIXES)}", path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def to_json_text(obj: Any) -> str:
    """JSON text for results that may contain dataclasses, numpy values and paths."""
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n"


def write_text(text: str, path: str | Path) -> Path:
    """Write text atomically (UTF-8)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically. NaN is refused (write ``None`` instead)."""
    return write_text(to_json_text(obj), path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file with an error that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError("no such file", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path) from exc


def read_mask(path: str | Path, what: str = "mask", *, nonzero: bool = False, allow_empty: bool = True) -> sitk.Image:
    """Read a 3D binary mask file as uint8 0/1 (metadata kept); errors name the file and ``what`` it is.

    Values other than 0 and 1 are refused unless ``nonzero`` (then every non-zero, finite voxel is inside);
    an empty mask is refused unless ``allow_empty``.
    """
    from .image import require_finite

    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} is not a 3D scalar mask ({image.GetDimension()}D, "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel)", path)
    kept = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    if nonzero:
        require_finite(image, what=f"{what} {path}")
        image = sitk.Cast(image != 0, sitk.sitkUInt8)
    else:
        values = np.unique(sitk.GetArrayViewFromImage(image))
        if not np.all(np.isin(values, (0, 1))):
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise InputError(f"the {what} is not a binary 0/1 mask (values {shown}); take every non-zero voxel "
                             "as inside explicitly if that is meant (--nonzero)", path)
        if image.GetPixelID() != sitk.sitkUInt8:
            image = sitk.Cast(image, sitk.sitkUInt8)
    for key, value in kept.items():
        image.SetMetaData(key, value)
    if not allow_empty and not np.any(sitk.GetArrayViewFromImage(image)):
        raise InputError(f"the {what} is empty (no voxel set)", path)
    return image


def ensure_not_input(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output path that is (or lies inside) one of the inputs."""
    out = Path(output).resolve()
    for item in inputs:
        if item is None:
            continue
        inp = Path(item).resolve()
        if out == inp or (inp.is_dir() and inp in out.parents):
            raise OutputError(f"would overwrite the input {inp}; choose another output path", output)
