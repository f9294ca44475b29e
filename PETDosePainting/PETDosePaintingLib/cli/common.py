"""Helpers shared by the ``petdp`` sub-commands (inputs, outputs, all-or-nothing writes)."""

from __future__ import annotations

from pathlib import Path


def read_image_with_frame(path: str | Path, what: str, modality: str | None = None):
    """An image file, or the image series (of ``modality``, if given) of a DICOM folder with its Frame of
    Reference UID recorded.

    Returns ``(image, series)``; ``series`` is the :class:`~PETDosePaintingLib.imaging.dicom_series.DicomSeries`
    for a DICOM folder, else ``None``.
    """
    from ..errors import InputError
    from ..imaging.image import set_frame_of_reference
    from ..imaging.io import read_image

    path = Path(path)
    if path.is_dir():
        from ..imaging.dicom_series import read_dicom_series

        series = read_dicom_series(path, modality=modality)
        image = series.image
        set_frame_of_reference(image, series.identity.frame_of_reference_uid)
        return image, series
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"the {what} is not a 3D scalar image", path)
    return image, None


def check_outputs(outputs: list[str | Path | None], inputs: list[str | Path | None]) -> None:
    """Outputs must not overwrite inputs nor each other."""
    from ..errors import OutputError
    from ..imaging.io import ensure_not_input

    seen: dict[Path, str] = {}
    for out in outputs:
        if not out:
            continue
        ensure_not_input(out, inputs)
        resolved = Path(out).resolve()
        if resolved in seen:
            raise OutputError("is named by two outputs; choose distinct paths", out)
        seen[resolved] = str(out)


def require_image_suffix(path: str | None, option: str) -> None:
    from ..errors import OutputError
    from ..imaging.io import image_suffix

    if path and not image_suffix(path):
        raise OutputError(f"{option} needs an image file name (.nrrd, .nii.gz, .mha)", path)


class Transaction:
    """Collects writes and runs them in order; if one fails, the files this run created are removed.

    ``also`` names further files an action creates (e.g. the RT Plan written next to an RT Dose). Files that
    existed before are not removed (they were replaced atomically, or not at all).
    """

    def __init__(self) -> None:
        self.actions: list[tuple[tuple[Path, ...], object]] = []

    def add(self, path: str | Path, action, also: tuple[str | Path, ...] = ()) -> None:
        self.actions.append(((Path(path), *(Path(p) for p in also)), action))

    def commit(self) -> None:
        created: list[Path] = []
        try:
            for paths, action in self.actions:
                new = [p for p in paths if not p.exists()]
                action()
                created.extend(p for p in new if p.exists())
        except BaseException:
            for path in reversed(created):
                if path.is_file():
                    path.unlink()
            raise
